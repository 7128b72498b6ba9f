"""The network's components: soft mask expansion and pooling, uncertainty weighting, the loss; the
typed network config (checks, round trip, the base network's weights)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from LymphNodeMTLLib.core.errors import ModelError
from LymphNodeMTLLib.network.components.soft_mask_pooling import SoftMaskPooling, soft_expand_mask
from LymphNodeMTLLib.network.model_store import ModelConfig, load_model, save_model
from LymphNodeMTLLib.network.network_config import NetworkConfig, NetworkConfigError
from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet
from LymphNodeMTLLib.training.losses.multitask_loss import MultiTaskLoss
from LymphNodeMTLLib.training.losses.uncertainty_weighting import UncertaintyWeighting
from safetensors import safe_open
from scipy import ndimage


def _blob(shape=(20, 20, 20)):
    mask = np.zeros(shape, bool)
    mask[6:11, 8:14, 7:10] = True
    mask[12, 12, 12] = True
    return mask


@pytest.mark.parametrize("spacing", [1.0, 0.5])
def test_soft_expansion_equals_gaussian_of_distance(spacing):
    """w = 1 inside, exp(-d^2 / 2 sigma^2) outside, d the exact Euclidean distance in mm."""
    mask = _blob()
    sigma = 2.0
    d = ndimage.distance_transform_edt(~mask) * spacing
    expected = np.exp(-(d**2) / (2 * sigma**2))
    radius = math.ceil(3 * sigma / spacing) * spacing
    w = soft_expand_mask(torch.from_numpy(mask)[None, None], sigma, spacing)[0, 0].numpy()
    near = d <= radius  # each 1-D pass is truncated at 3 sigma; exact within that distance
    np.testing.assert_allclose(w[near], expected[near], atol=1e-6)
    assert np.all(w[~near] <= math.exp(-(radius**2) / (2 * sigma**2)) + 1e-6)
    assert np.all(w[mask] == 1.0)


def test_soft_pooling_is_a_weighted_mean_per_scale():
    pool = SoftMaskPooling(sigma_mm=1.0)
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[0, 0, 2:6, 2:6, 2:6] = 1
    fine = torch.randn(1, 3, 8, 8, 8)
    coarse = torch.randn(1, 2, 4, 4, 4)
    out = pool([fine, coarse], mask, 1.0)
    assert out.shape == (1, 5)
    w = soft_expand_mask(mask, 1.0, 1.0)
    expected = (fine * w).sum(dim=(2, 3, 4)) / w.sum()
    torch.testing.assert_close(out[:, :3], expected, rtol=1e-5, atol=1e-5)
    # a constant feature pools to that constant, whatever the mask
    const = torch.full((1, 1, 8, 8, 8), 3.5)
    assert float(pool([const], mask, 1.0)) == pytest.approx(3.5, rel=1e-5)


def test_uncertainty_weighting_formula_and_gradient():
    uw = UncertaintyWeighting(2)
    with torch.no_grad():
        uw.sigma.copy_(torch.tensor([1.0, 2.0]))
    losses = [torch.tensor(0.8), torch.tensor(0.3)]
    expected = 0.5 * 0.8 + math.log(2) + 0.5 / 4 * 0.3 + math.log(5)
    total = uw(losses)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert uw.sigma.grad is not None and torch.all(uw.sigma.grad != 0)


def test_network_shapes_and_given_mask_changes_only_the_head():
    torch.manual_seed(0)
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8, 16))).eval()
    x = torch.randn(3, 2, 24, 24, 24)
    with torch.no_grad():
        out = net(x)
        assert out.mask_logits.shape == (3, 1, 24, 24, 24)
        assert out.metastasis_logit.shape == (3,)
        mask = torch.zeros(3, 1, 24, 24, 24)
        mask[:, :, 8:16, 8:16, 8:16] = 1
        given = net(x, mask)
    torch.testing.assert_close(given.mask_logits, out.mask_logits)
    assert not torch.allclose(given.metastasis_logit, out.metastasis_logit)


def test_loss_trains_only_the_heads_it_has_labels_for():
    torch.manual_seed(0)
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8))).train()
    loss_fn = MultiTaskLoss()
    x = torch.randn(2, 2, 16, 16, 16)
    mask = (torch.rand(2, 1, 16, 16, 16) > 0.7).float()
    out = net(x, mask)
    # no masks: the decoder's output layer gets no gradient from the segmentation loss
    losses = loss_fn(out, mask, torch.tensor([False, False]), torch.tensor([1.0, 0.0]), torch.tensor([True, True]),
                     torch.ones(2))
    assert float(losses["seg"]) == 0.0 and float(losses["cls"]) > 0
    losses["total"].backward()
    assert net.mask_out.conv.conv.weight.grad is None or float(net.mask_out.conv.conv.weight.grad.abs().sum()) == 0
    assert float(net.head.mlp[-1].weight.grad.abs().sum()) > 0
    # no labels: classification loss is zero, segmentation loss is not
    net.zero_grad()
    out = net(x, mask)
    losses = loss_fn(out, mask, torch.tensor([True, True]), torch.zeros(2), torch.tensor([False, False]), torch.ones(2))
    assert float(losses["cls"]) == 0.0 and float(losses["seg"]) > 0


def test_batched_equals_one_by_one():
    """Instance norm keeps every sample independent of its batch mates."""
    torch.manual_seed(1)
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8, 16))).eval()
    x = torch.randn(4, 2, 16, 16, 16)
    with torch.no_grad():
        batched = net(x)
        single = [net(x[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(batched.mask_logits, torch.cat([s.mask_logits for s in single]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.metastasis_logit,
                               torch.cat([s.metastasis_logit for s in single]), rtol=1e-4, atol=1e-5)


def test_node_descriptors_measure_an_ellipsoid():
    from LymphNodeMTLLib.network.node_descriptors import node_descriptors, principal_diameters_mm

    c = torch.arange(40).float() - 19.5
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    ellipsoid = ((x / 9) ** 2 + (y / 6) ** 2 + (z / 3) ** 2 <= 1).float()[None, None]
    torch.testing.assert_close(principal_diameters_mm(ellipsoid, 1.0), torch.tensor([[6.0, 12.0, 18.0]]),
                               atol=0.5, rtol=0)
    image = torch.where(ellipsoid > 0, 0.3, -1.0)
    desc = node_descriptors(ellipsoid, image, 1.0)[0]
    assert float(desc[5]) == pytest.approx(0.3) and float(desc[6]) == pytest.approx(0.0, abs=1e-4)
    assert torch.all(node_descriptors(torch.zeros_like(ellipsoid), image, 1.0) == 0)


def _phantom_node(core: bool, hilum: bool):
    """A 14 x 10 x 8 mm ellipsoid node of 45 HU in fat, optionally with a 15 HU necrotic core and
    a fat wedge reaching a quarter of the radius in; returns (drawn mask, windowed image)."""
    from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig, window_hu

    c = torch.arange(40).float() - 19.5
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    rho = ((x / 7) ** 2 + (y / 5) ** 2 + (z / 4) ** 2).sqrt()
    node = rho <= 1
    hu = torch.full(node.shape, -100.0)
    hu[node] = 45.0
    if core:
        hu[rho < 0.45] = 15.0
    if hilum:
        wedge = node & (rho >= 0.75) & (y > 0) & (y.abs() > 1.7 * x.abs())
        hu[wedge] = -60.0
    return node.float()[None, None], window_hu(hu[None, None], PreprocessingConfig())


def test_node_descriptors_see_necrosis_and_a_fatty_hilum():
    from LymphNodeMTLLib.network.node_descriptors import DESCRIPTOR_NAMES, NUM_DESCRIPTORS, node_descriptors

    assert len(DESCRIPTOR_NAMES) == NUM_DESCRIPTORS
    col = {name: i for i, name in enumerate(DESCRIPTOR_NAMES)}
    plain = node_descriptors(*_phantom_node(False, False), 1.0)[0]
    necrotic = node_descriptors(*_phantom_node(True, False), 1.0)[0]
    mask, hilum_image = _phantom_node(False, True)
    hilum = node_descriptors(mask, hilum_image, 1.0)[0]
    # a 30 HU drop in the core reads as about 1 (in units of 30 HU); none without a core
    assert float(plain[col["core_drop"]]) == pytest.approx(0.0, abs=0.05)
    assert float(necrotic[col["core_drop"]]) == pytest.approx(1.0, abs=0.25)
    # the wedge's fat shows inside the ellipsoid; a solid node has none
    assert float(plain[col["fat_inside"]]) == pytest.approx(0.0, abs=1e-6)
    assert float(hilum[col["fat_inside"]]) > 0.05
    assert float(hilum[col["lowest_smoothed"]]) > float(plain[col["lowest_smoothed"]]) + 0.2
    # a mask that leaves the hilum's fat out shows it as a notch instead: it departs further
    # from its moment ellipsoid than the solid node's mask does
    without_wedge = mask * (hilum_image > -0.25).float()  # above -25 HU
    assert float(without_wedge.sum()) < float(mask.sum())
    hilum_excluded = node_descriptors(without_wedge, hilum_image, 1.0)[0]
    assert float(hilum_excluded[col["ellipsoid_mismatch"]]) > float(plain[col["ellipsoid_mismatch"]]) + 0.02


# --- the typed network config -----------------------------------------------------------------------
BUNDLED = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "phantom-demo"


def _one_line_error(network: dict) -> str:
    with pytest.raises(NetworkConfigError) as err:
        NetworkConfig.from_dict(network)
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ModelError)
    return message


@pytest.mark.parametrize("network, key, allowed", [
    ({"encoder": "unet"}, "network.encoder", "'resunet', 'dense_attention'"),
    ({"head": "global_pool"}, "network.head", "'soft_mask_pooling', 'lesion_attention'"),
    ({"pool_region": "box"}, "network.pool_region", "'seed_ball', 'patch'"),
    ({"fusion": "bifpn"}, "network.fusion.type", "'ma_mtln'"),
    ({"tasks": ["segmentation", "detection"]}, "network.tasks", "'segmentation', 'classification'"),
    ({"norm": "group"}, "network.norm", "'instance', 'batch'"),
])
def test_an_unknown_component_name_is_one_line_naming_the_key_and_the_choices(network, key, allowed):
    message = _one_line_error(network)
    assert message.startswith(key + ":") and allowed in message


@pytest.mark.parametrize("network, key", [
    ({"dropout": 1.5}, "network.dropout"),
    ({"channels": [8, 0]}, "network.channels"),
    ({"channels": []}, "network.channels"),
    ({"stations": -1}, "network.stations"),
    ({"pool_sigma_mm": 0}, "network.pool_sigma_mm"),
    ({"hu_window": [350, -250]}, "network.hu_window"),
    ({"routing_gate": {"shared_experts": 0}}, "network.routing_gate.shared_experts"),
    ({"routing_gate": {"experts": 2}}, "network.routing_gate.experts"),
    ({"deep_supervision": "yes"}, "network.deep_supervision"),
    ({"head_hidden": 64.5}, "network.head_hidden"),
    ({"stations": True}, "network.stations"),
    ({"chanels": [4, 8]}, "network.chanels"),
])
def test_a_bad_value_is_one_line_naming_the_key(network, key):
    assert _one_line_error(network).startswith(key + ":")


def test_an_unknown_key_lists_the_known_ones():
    message = _one_line_error({"chanels": [4, 8]})
    assert "'channels'" in message and "'routing_gate'" in message


def test_a_model_folder_with_a_bad_network_config_fails_to_load_with_that_line(tmp_path):
    config = ModelConfig("m", network={"channels": [4, 8]})
    save_model(tmp_path, config, config.build_network(), "# m\n")
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["network"]["encoder"] = "unet"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    # the checksum file covers the config too: record the edited one, so the network config is what fails
    from LymphNodeMTLLib.network.model_store import record_checksums
    record_checksums(tmp_path)
    with pytest.raises(ModelError, match=r"^network\.encoder: 'unet' is not one of 'resunet', 'dense_attention'$"):
        load_model(tmp_path)


def test_the_bundled_network_dict_round_trips_unchanged():
    network = json.loads((BUNDLED / "config.json").read_text())["network"]
    config = NetworkConfig.from_dict(network)
    assert config.channels == tuple(network["channels"]) and config.head_refine_hidden == network["head_refine_hidden"]
    assert config.to_dict() == network
    assert NetworkConfig().to_dict() == {} and not NetworkConfig().named_components()


@pytest.mark.parametrize("network", [
    {"tasks": ["classification"], "pool_region": "patch", "seed_ball_radius_mm": 4},
    {"fusion": {"type": "ma_mtln", "fusion_scale": 0, "dilations": [1, 2]}, "deep_supervision": True},
    {"routing_gate": {"shared_experts": 3, "task_experts": 2}, "aux_short_axis": True, "stations": 4},
    {"encoder": "dense_attention", "dense_layers": 3, "mixed_head": True, "norm": "batch"},
    {"head": "lesion_attention", "lesion_map_scale": 2, "hu_window": [-200, 300], "patch_spacing_mm": 1.5},
])
def test_network_config_round_trips_through_its_dict(network):
    config = NetworkConfig.from_dict({"channels": [4, 8, 16], **network})
    written = config.to_dict()
    assert json.loads(json.dumps(written)) == written  # plain JSON
    assert NetworkConfig.from_dict(written) == config
    assert written["channels"] == [4, 8, 16]


def test_flags_and_names_read_as_the_dicts_they_stand_for():
    assert NetworkConfig.from_dict({"routing_gate": True}) == NetworkConfig.from_dict(
        {"routing_gate": {"shared_experts": 2, "task_experts": 1}})
    assert NetworkConfig.from_dict({"fusion": "ma_mtln"}) == NetworkConfig.from_dict({"fusion": {"type": "ma_mtln"}})
    for off in (None, False, {}):
        assert NetworkConfig.from_dict({"fusion": off, "routing_gate": off}) == NetworkConfig()
    # task order does not matter: one canonical order, so the loss's task weights line up
    assert NetworkConfig.from_dict({"tasks": ["classification", "segmentation"]}) == NetworkConfig()


def test_default_and_bundled_configs_build_the_base_networks_weights():
    """The weights the bundled model was saved with are those of the base network: the bundled
    config builds exactly their keys and shapes, the default config the same keys (no refine MLP)."""
    with safe_open(str(BUNDLED / "model.safetensors"), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    bundled = ModelConfig.from_dict(json.loads((BUNDLED / "config.json").read_text())).build_network()
    assert {k: tuple(v.shape) for k, v in bundled.state_dict().items()} == saved
    default = MultiTaskNodeNet(NetworkConfig())
    assert sorted(default.state_dict()) == sorted(k for k in saved if not k.startswith("head.refine."))


@pytest.mark.parametrize("config", [
    NetworkConfig(channels=(4, 8)),
    NetworkConfig(channels=(4, 8), routing_gate={}, task_specific_attention=True, task_aware_attention=True),
    NetworkConfig(channels=(4, 8), mixed_head=True),
    NetworkConfig(channels=(4, 8), head="lesion_attention"),
], ids=["base", "routed-attended", "mixed-head", "lesion-attention"])
def test_classifying_under_a_mask_from_kept_features_is_forward_under_that_mask(config):
    """A node re-classified under its next mask reuses its view's head features: the logits are
    exactly forward's with that mask given, at each row's own spacing."""
    torch.manual_seed(3)
    net = MultiTaskNodeNet(config).eval()
    x = torch.randn(3, 2, 16, 16, 16)
    mask = torch.zeros(3, 1, 16, 16, 16)
    mask[0, 0, 5:11, 5:11, 5:11] = 1
    mask[1, 0, 7:9, 6:12, 8:10] = 1  # row 2: an empty mask
    spacing, slice_mm = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 5.0, 2.5])
    with torch.no_grad():
        feats = net.classification_features(x)
        expected = net(x, mask, slice_mm=slice_mm, spacing_mm=spacing).metastasis_logit
        torch.testing.assert_close(net.classify_under(feats, mask, x, slice_mm=slice_mm, spacing_mm=spacing), expected)
        other = net(x, 1 - mask, slice_mm=slice_mm, spacing_mm=spacing).metastasis_logit
        assert not torch.allclose(other, expected)  # the mask does move the logit
        torch.testing.assert_close(net.classify_under(feats, 1 - mask, x, slice_mm=slice_mm, spacing_mm=spacing), other)
