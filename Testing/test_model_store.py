"""Model folders: round trip, and every broken folder refused with one clear line."""

import json

import pytest
import torch
from LymphNodeMTLLib.core.errors import ModelError
from LymphNodeMTLLib.network.model_store import (
    CONFIG_FILE,
    HASH_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    load_model,
    save_model,
    sha256_of,
)


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig("test-model", network={"channels": [4, 8]}, temperature=1.7)
    net = config.build_network()
    folder = tmp_path / "model"
    save_model(folder, config, net, "# card\n")
    return folder, net


def test_round_trip(model_dir):
    folder, net = model_dir
    loaded = load_model(folder)
    assert loaded.config.model_id == "test-model"
    assert loaded.config.temperature == pytest.approx(1.7)
    assert loaded.weights_sha256 == sha256_of(folder / WEIGHTS_FILE)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[k], v)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, HASH_FILE, "model-card.md"])


def _expect_one_line(folder, fragment):
    with pytest.raises(ModelError) as err:
        load_model(folder)
    message = str(err.value)
    assert "\n" not in message and fragment in message
    return message


def test_missing_folder(tmp_path):
    _expect_one_line(tmp_path / "nope", "does not exist")


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE, HASH_FILE])
def test_missing_file(model_dir, name):
    folder, _ = model_dir
    (folder / name).unlink()
    _expect_one_line(folder, name)


def test_hash_mismatch(model_dir):
    folder, _ = model_dir
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    _expect_one_line(folder, "SHA-256")


def test_corrupt_weights_with_matching_hash(model_dir):
    folder, _ = model_dir
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file at all")
    (folder / HASH_FILE).write_text(f"{sha256_of(folder / WEIGHTS_FILE)}  {WEIGHTS_FILE}\n")
    _expect_one_line(folder, "cannot load weights")


def test_corrupt_config(model_dir):
    folder, _ = model_dir
    (folder / CONFIG_FILE).write_text("{ not json")
    _expect_one_line(folder, "not a valid model config")


def test_weights_of_another_architecture(model_dir):
    folder, _ = model_dir
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["network"]["channels"] = [4, 8, 16]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    # the checksum file covers the config too: record the edited one, so the weights are what fails
    from LymphNodeMTLLib.network.model_store import record_checksums

    record_checksums(folder)
    _expect_one_line(folder, "cannot load weights")


def test_no_pickle_in_weights(model_dir):
    """The weights file is safetensors: a JSON header then raw tensors, no pickle opcodes."""
    folder, _ = model_dir
    raw = (folder / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["model_id"] == "test-model"


def test_saving_leaves_other_files_and_no_temporaries(model_dir):
    folder, net = model_dir
    (folder / "checkpoint.pt").write_bytes(b"training state")
    save_model(folder, ModelConfig("test-model-2", network={"channels": [4, 8]}), net, "# card 2\n")
    assert (folder / "checkpoint.pt").read_bytes() == b"training state"
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]
    assert load_model(folder).config.model_id == "test-model-2"


@pytest.mark.parametrize("refine_hidden", [0, 6])
@pytest.mark.parametrize("earlier", [24, 25, 28])
def test_a_model_saved_with_fewer_descriptors_loads_and_predicts_as_before(tmp_path, earlier, refine_hidden):
    """Weights from before descriptors were appended (24 before noise_anisotropy, 25 before the
    hilum sectors, 28 before the slice thickness), with or without a soft-label refine MLP: the new columns get zero weights, in
    the refine MLP just before the deep logit it reads last, so the old model's logits are exactly
    what they were."""
    from LymphNodeMTLLib.network.node_descriptors import EARLIER_NUM_DESCRIPTORS, NUM_DESCRIPTORS
    from safetensors.torch import load_file, save_file

    assert earlier in EARLIER_NUM_DESCRIPTORS
    torch.manual_seed(0)
    network = {"channels": [4, 8]} | ({"head_refine_hidden": refine_hidden} if refine_hidden else {})
    config = ModelConfig("test-model", network=network)
    net = config.build_network().eval()
    folder = tmp_path / "model"
    save_model(folder, config, net, "# card\n")
    added = NUM_DESCRIPTORS - earlier
    new_columns = {"head.mlp.0.weight": slice(-added, None), "head.wide.weight": slice(-added, None)}
    if refine_hidden:
        new_columns["head.refine.0.weight"] = slice(-added - 1, -1)
    state = load_file(str(folder / WEIGHTS_FILE))
    old = dict(state)
    for key, columns in new_columns.items():
        keep = torch.ones(state[key].shape[1], dtype=torch.bool)
        keep[columns] = False
        old[key] = state[key][:, keep].contiguous()
    save_file(old, str(folder / WEIGHTS_FILE))
    (folder / HASH_FILE).write_text(f"{sha256_of(folder / WEIGHTS_FILE)}  {WEIGHTS_FILE}\n")
    loaded = load_model(folder)
    with torch.no_grad():
        for key, columns in new_columns.items():
            assert torch.equal(loaded.network.state_dict()[key][:, columns], torch.zeros(state[key].shape[0], added))
            net.state_dict()[key][:, columns] = 0.0  # what the old model was: blind to the new columns
        patch = torch.randn(2, 2, 16, 16, 16)
        torch.testing.assert_close(loaded.network(patch).metastasis_logit, net(patch).metastasis_logit)
