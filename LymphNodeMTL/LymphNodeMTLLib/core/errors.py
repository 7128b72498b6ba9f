"""User-facing errors: one line that says what is wrong and what to do."""


class InputError(Exception):
    """Bad input from the user (file, seeds, model folder). The CLI prints it as one line, exit 2."""


class ModelError(InputError):
    """The model folder is missing, corrupt or does not match its recorded hash."""
