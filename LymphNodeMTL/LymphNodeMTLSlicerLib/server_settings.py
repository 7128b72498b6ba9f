"""Where the module's server is, as this computer's settings (QSettings), not the scene's.

The address, device and model folder are saved; the token is kept in memory while Slicer runs and
written to the settings file, which is plain text, only when the user ticked "remember".
"""

SETTINGS_SERVER_URL = "LymphNodeMTL/serverUrl"
SETTINGS_SERVER_TOKEN = "LymphNodeMTL/serverToken"  # only when "remember" is ticked
SETTINGS_REMEMBER_TOKEN = "LymphNodeMTL/rememberServerToken"
SETTINGS_DEVICE = "LymphNodeMTL/device"
SETTINGS_MODEL_FOLDER = "LymphNodeMTL/modelFolder"


def _flag(value) -> bool:
    return str(value).lower() == "true"  # QSettings gives back "true"/"false" for a saved bool


def loadServer(settings, defaultUrl: str):
    """(url, token, remember); a token an earlier version stored without "remember" is used while
    Slicer runs and taken out of the file."""
    remember = _flag(settings.value(SETTINGS_REMEMBER_TOKEN, "false"))
    token = str(settings.value(SETTINGS_SERVER_TOKEN, "") or "")
    if not remember:
        settings.remove(SETTINGS_SERVER_TOKEN)
    return str(settings.value(SETTINGS_SERVER_URL, defaultUrl)), token, remember


def saveServer(settings, url: str, token: str, remember: bool, device: str, modelFolder: str) -> None:
    for key, value in ((SETTINGS_DEVICE, device), (SETTINGS_MODEL_FOLDER, modelFolder), (SETTINGS_SERVER_URL, url),
                       (SETTINGS_REMEMBER_TOKEN, "true" if remember else "false")):
        settings.setValue(key, value)
    if remember and token:
        settings.setValue(SETTINGS_SERVER_TOKEN, token)
    else:
        settings.remove(SETTINGS_SERVER_TOKEN)
