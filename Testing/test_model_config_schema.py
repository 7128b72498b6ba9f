"""Model folders: config.json checked against a schema with ranges, and one checksum file covering
config and weights together; a value that would silently corrupt results is refused (one line)."""

import json
import math
import shutil
import subprocess

import pytest
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.errors import ModelError
from LymphNodeMTLLib.network.model_checksums import read_checksums, sha256_of
from LymphNodeMTLLib.network.model_config_schema import validate_model_config
from LymphNodeMTLLib.network.model_store import (
    CONFIG_FILE,
    HASH_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    default_model_dir,
    load_model,
    record_checksums,
    save_model,
)


@pytest.fixture(scope="module")
def bundled_config():
    return json.loads((default_model_dir() / CONFIG_FILE).read_text())


@pytest.fixture
def model_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    return folder


def edited(folder, change, record=True):
    """Apply `change` to the folder's config; record=True re-records the checksums as a tool that
    edits a config and its hash together would (so the schema is what must refuse it)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    change(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if record:
        record_checksums(folder)
    return folder


def refused(folder, fragment):
    with pytest.raises(ModelError) as error:
        load_model(folder)
    message = str(error.value)
    assert "\n" not in message and fragment in message, message
    return message


def setter(path, value):
    def change(config):
        node = config
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return change


BAD_VALUES = [
    ("calibration.temperature", 0.0, "logit temperature"),
    ("calibration.temperature", -1.2, "logit temperature"),
    ("calibration.temperature", math.inf, "logit temperature"),
    ("calibration.temperature", "1.2", "logit temperature"),
    ("preprocessing.hu_window", [350.0, -250.0], "low < high"),
    ("preprocessing.hu_window", [-250.0], "[low, high]"),
    ("preprocessing.hu_window", [-250.0, 99999.0], "<= 4000"),
    ("postprocessing.mask_threshold", 1.0, "strictly between 0 and 1"),
    ("postprocessing.mask_threshold", 1.5, "strictly between 0 and 1"),
    ("postprocessing.mask_threshold", 0.0, "strictly between 0 and 1"),
    ("postprocessing.metastasis_threshold", -0.1, "strictly between 0 and 1"),
    ("preprocessing.patch_size", 0, "from 8 to 512"),
    ("preprocessing.patch_size", 47.5, "whole number"),
    ("preprocessing.patch_spacing_mm", 0.0, "0.05 to 20 mm"),
    ("preprocessing.guidance_sigma_vox", -2.5, "above 0"),
    ("network.channels", [12, 0, 48, 96], "channel counts"),
    ("labels", ["benign"], "two class names"),
    ("clinical_use", "yes", "true or false"),
    ("format", "LymphNodeMTL-model/0", "must be 'LymphNodeMTL-model/1'"),
    ("model_id", "", "non-empty name"),
]


@pytest.mark.parametrize("path, value, fragment", BAD_VALUES, ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES])
def test_schema_refuses_out_of_range_values(bundled_config, path, value, fragment):
    config = json.loads(json.dumps(bundled_config))
    setter(path, value)(config)
    with pytest.raises(ModelError) as error:
        validate_model_config(config, "model/config.json")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"model/config.json: {path} is ") and fragment in message


def test_schema_accepts_the_bundled_config_and_every_saved_one(bundled_config, tmp_path):
    validate_model_config(bundled_config)
    validate_model_config(ModelConfig("plain").to_dict())
    validate_model_config({"format": "LymphNodeMTL-model/1", "model_id": "minimal"})


@pytest.mark.parametrize("missing", ["format", "model_id"])
def test_schema_refuses_a_config_without_required_fields(bundled_config, missing):
    config = {k: v for k, v in bundled_config.items() if k != missing}
    with pytest.raises(ModelError, match=f"has no '{missing}'"):
        validate_model_config(config)


def test_schema_refuses_a_non_object(tmp_path):
    with pytest.raises(ModelError, match="JSON object"):
        validate_model_config([1, 2, 3])


@pytest.mark.parametrize("path, value, fragment", [
    ("calibration.temperature", -0.9, "logit temperature"),
    ("postprocessing.mask_threshold", 1.2, "strictly between 0 and 1"),
    ("preprocessing.hu_window", [400.0, -200.0], "low < high"),
    ("preprocessing.patch_size", 0, "from 8 to 512"),
])
def test_loading_a_folder_with_a_bad_recorded_config_is_refused(model_copy, path, value, fragment):
    refused(edited(model_copy, setter(path, value)), f"{path} is")


def test_a_config_edited_after_saving_is_a_hash_mismatch(model_copy):
    edited(model_copy, setter("calibration.temperature", 0.5), record=False)  # in range, not recorded
    refused(model_copy, "config.json in")
    assert "does not match its recorded SHA-256" in refused(model_copy, "config.json")


def test_the_bundled_checksum_file_covers_config_and_weights():
    folder = default_model_dir()
    recorded = read_checksums(folder / HASH_FILE)
    assert sorted(recorded) == [CONFIG_FILE, WEIGHTS_FILE]
    assert recorded[CONFIG_FILE] == sha256_of(folder / CONFIG_FILE)
    assert recorded[WEIGHTS_FILE] == sha256_of(folder / WEIGHTS_FILE)
    if shutil.which("sha256sum"):  # the format sha256sum -c reads
        run = subprocess.run(["sha256sum", "-c", HASH_FILE], cwd=folder, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_save_model_records_both_and_a_weights_only_file_still_loads(tmp_path):
    """Folders written before the config was covered list only the weights: they keep loading
    (weights checked, config checked by the schema)."""
    config = ModelConfig("schema-test", network={"channels": [4, 8]})
    folder = tmp_path / "m"
    save_model(folder, config, config.build_network(), "# card\n")
    assert sorted(read_checksums(folder / HASH_FILE)) == [CONFIG_FILE, WEIGHTS_FILE]
    load_model(folder)
    (folder / HASH_FILE).write_text(f"{sha256_of(folder / WEIGHTS_FILE)}  {WEIGHTS_FILE}\n")
    assert load_model(folder).config.model_id == "schema-test"
    edited(folder, setter("calibration.temperature", 0.0), record=False)
    refused(folder, "calibration.temperature is 0.0")


def test_predict_with_a_zero_temperature_model_is_one_line(model_copy, tmp_path, capsys):
    import numpy as np
    from ct_samples import body_ct, body_geometry, write_case

    edited(model_copy, setter("calibration.temperature", 0))
    ct, seeds = write_case(tmp_path / "in", body_ct(np.random.default_rng(1)), body_geometry())
    out = tmp_path / "out"
    code = main(["predict", "--volume", str(ct), "--seeds", str(seeds), "--out", str(out), "--model",
                 str(model_copy), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "calibration.temperature is 0" in lines[0], err
    assert not out.exists()
