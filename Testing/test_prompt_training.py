"""What a network that follows prompts is trained on: the prompt channels, the simulated clicks,
lines and boxes drawn from the true mask, and a model widened from one that reads seeds alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from LymphNodeMTLLib.core.simulated_click import error_region_click
from LymphNodeMTLLib.network.input_widening import widen_input_channels
from LymphNodeMTLLib.network.network_config import NetworkConfig
from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig, network_input
from LymphNodeMTLLib.preprocessing.prompt_channels import (
    PatchPrompts,
    patch_index_to_ras,
    prompt_channels,
    ras_to_patch_index,
)
from LymphNodeMTLLib.training.interaction_simulation import (
    InteractionConfig,
    bounding_box,
    jittered_line,
    long_axis_line,
    loosened_box,
    simulate_clicks,
)


def _ellipsoid(shape=(24, 24, 24), centre=(12, 12, 12), radii=(4, 5, 9)):
    z, y, x = np.indices(shape)
    return (((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            + ((x - centre[2]) / radii[2]) ** 2) <= 1.0


def test_each_prompt_has_its_own_channel_at_its_place():
    p = PatchPrompts(positive=np.array([[4.0, 5.0, 6.0]]), negative=np.array([[10.0, 10.0, 10.0]]),
                     line=np.array([[8.0, 2.0, 2.0], [8.0, 2.0, 12.0]]), box=np.array([[1.0, 1.0, 1.0], [3.0, 4.0, 5.0]]),
                     mask_so_far=np.zeros((16, 16, 16), bool))
    p.mask_so_far[7, 7, 7] = True
    ch = prompt_channels([p, None], 16, 2.5)
    assert ch.shape == (2, 5, 16, 16, 16)
    assert float(ch[0, 0, 4, 5, 6]) == pytest.approx(1.0) and float(ch[0, 0, 4, 5, 9]) < 0.5
    assert float(ch[0, 1, 10, 10, 10]) == pytest.approx(1.0) and float(ch[0, 1, 4, 5, 6]) < 0.01
    assert float(ch[0, 2].sum()) == 1.0 and bool(ch[0, 2, 7, 7, 7])
    assert float(ch[0, 3, 8, 2, 7]) == pytest.approx(1.0) and float(ch[0, 3, 8, 6, 7]) < 1e-3  # a thin tube
    assert float(ch[0, 4].sum()) == 3 * 4 * 5 and float(ch[0, 4, 2, 3, 4]) == 1.0
    assert float(ch[1].abs().sum()) == 0.0  # no prompts: zeros, the seed alone


def test_patch_coordinates_round_trip_and_put_the_centre_in_the_middle():
    centre = np.array([10.0, -20.0, 30.0])
    idx = ras_to_patch_index([centre, centre + [3.0, 0.0, 0.0], centre + [0.0, 0.0, -2.0]], centre, 1.5, 16)
    assert idx[0].tolist() == [7.5, 7.5, 7.5]
    assert idx[1].tolist() == [7.5, 7.5, 9.5]  # R is x, the last array axis
    assert idx[2].tolist() == [7.5 - 2 / 1.5, 7.5, 7.5]  # S is z, the first
    np.testing.assert_allclose(patch_index_to_ras(idx, centre, 1.5, 16)[2], centre + [0.0, 0.0, -2.0])


def test_network_input_reads_prompts_only_where_the_model_has_the_channels():
    hu = torch.zeros(1, 1, 16, 16, 16)
    plain, prompted = PreprocessingConfig(patch_size=16), PreprocessingConfig(patch_size=16, prompt_channels=True)
    assert network_input(hu, plain).shape[1] == 2 and prompted.input_channels == 7
    x = network_input(hu, prompted, [PatchPrompts(positive=np.array([[8.0, 8.0, 8.0]]))])
    assert x.shape[1] == 7 and float(x[0, 2].max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no prompt channels"):
        network_input(hu, plain, [PatchPrompts(positive=np.array([[8.0, 8.0, 8.0]]))])


def test_a_widened_network_computes_what_its_source_did_without_prompts():
    torch.manual_seed(0)
    source = MultiTaskNodeNet(NetworkConfig(channels=(4, 8))).eval()
    wider = MultiTaskNodeNet(NetworkConfig(channels=(4, 8), in_channels=7)).eval()
    wider.load_state_dict(widen_input_channels(source.state_dict(), wider.state_dict()))
    x = torch.randn(2, 2, 16, 16, 16)
    padded = torch.cat([x, torch.zeros(2, 5, 16, 16, 16)], dim=1)
    with torch.no_grad():
        a, b = source(x), wider(padded)
        torch.testing.assert_close(a.mask_logits, b.mask_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.metastasis_logit, b.metastasis_logit, atol=1e-5, rtol=1e-5)
        padded[:, 2, 8, 8, 8] = 1.0  # a prompt: the new weights are zero, so still the same
        torch.testing.assert_close(a.mask_logits, wider(padded).mask_logits, atol=1e-5, rtol=1e-5)


def test_segment_is_forwards_mask_branch():
    torch.manual_seed(1)
    for config in (NetworkConfig(channels=(4, 8)), NetworkConfig(channels=(4, 8), routing_gate={}),
                   NetworkConfig(channels=(4, 8), task_specific_attention=True, task_aware_attention=True)):
        net = MultiTaskNodeNet(config).eval()
        x = torch.randn(2, 2, 16, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(net.segment(x), net(x).mask_logits)


def test_the_click_goes_to_the_centre_of_the_largest_error():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:12, 2:12, 2:12] = True
    predicted = truth.copy()
    predicted[2:12, 2:12, 7:12] = False  # a missed half: 500 voxels
    predicted[15:18, 15:18, 15:18] = True  # a leak of 27
    click = error_region_click(predicted, truth)
    assert click.positive and click.region_voxels == 500
    assert 6 <= click.index[0] <= 7 and 6 <= click.index[1] <= 7 and click.index[2] == 9
    leak = truth.copy()
    leak[12:19, 2:12, 2:12] = True  # a leak larger than any miss
    click = error_region_click(leak, truth)
    assert not click.positive and 14 <= click.index[0] <= 16
    assert error_region_click(truth, truth) is None
    # the centre is measured in mm: on 4 mm slices a 20 x 20 x 6 region's depth peaks in-plane
    slab = np.zeros((8, 24, 24), bool)
    slab[1:7, 2:22, 2:22] = True
    click = error_region_click(np.zeros_like(slab), slab, spacing=(4.0, 1.0, 1.0))
    assert click.positive and click.index[0] in (3, 4) and 11 <= click.index[1] <= 12


def test_the_long_axis_line_is_the_longest_axial_chord():
    mask = _ellipsoid()
    line = long_axis_line(mask)
    assert line[0, 0] == line[1, 0]  # on one axial plane
    assert np.linalg.norm(line[1] - line[0]) == pytest.approx(18.0, abs=1.5)  # the 9-voxel semi-axis
    assert abs(line[1, 2] - line[0, 2]) > 15  # along x
    jittered = jittered_line(line, np.random.default_rng(0), 3.0)
    assert np.all(np.linalg.norm(jittered - line, axis=1) <= 3.0 + 1e-9) and np.all(jittered[:, 0] == line[:, 0])


def test_a_loosened_box_holds_the_mask_and_stays_within_a_fifth_more():
    mask = _ellipsoid()
    box = bounding_box(mask)
    assert box.tolist() == [[8, 7, 3], [16, 17, 21]]
    for seed in range(5):
        loose = loosened_box(box, np.random.default_rng(seed), 0.2)
        extent = box[1] - box[0] + 1
        assert np.all(loose[0] <= box[0] - 0.5) and np.all(loose[1] >= box[1] + 0.5)
        assert np.all(box[0] - loose[0] <= 0.5 + 0.2 * extent) and np.all(loose[1] - box[1] <= 0.5 + 0.2 * extent)


def test_interaction_shares_follow_the_config():
    config = InteractionConfig()
    rng = np.random.default_rng(0)
    draws = [config.draw(rng) for _ in range(4000)]
    share = lambda pred: sum(pred(m, c) for m, c in draws) / len(draws)  # noqa: E731
    assert share(lambda m, c: m == "seed" and c == 0) == pytest.approx(config.seed_only, abs=0.03)
    assert share(lambda m, c: m == "line") == pytest.approx(config.line, abs=0.03)
    assert share(lambda m, c: m == "box") == pytest.approx(config.box, abs=0.03)
    assert max(c for _, c in draws) == config.max_clicks
    with pytest.raises(ValueError):
        InteractionConfig(seed_only=0.9)


def test_simulated_clicks_correct_each_round_of_the_networks_own_predictions():
    truth = np.zeros((2, 20, 20, 20), bool)
    truth[:, 5:15, 5:15, 5:15] = True
    seen = []

    def predict(rows, prompts):  # a network that finds half the node, then all of it after a click
        seen.append((rows, [len(p.positive) + len(p.negative) for p in prompts],
                     [p.mask_so_far is not None for p in prompts]))
        out = []
        for p in prompts:
            m = np.zeros((20, 20, 20), bool)
            m[5:15, 5:15, 5:10 if not len(p.positive) else 15] = True
            out.append(m)
        return out

    prompts = simulate_clicks(predict, [None, None], truth, [2, 0])
    assert prompts[1] is None  # no clicks drawn: left alone
    assert seen == [([0], [0], [False]), ([0], [1], [True])]
    p = prompts[0]
    assert len(p.positive) == 1 and len(p.negative) == 0  # the second round found nothing to correct
    assert 10 <= p.positive[0][2] <= 14 and p.mask_so_far.sum() == truth[0].sum()


def _tiny_trainer(tmp_path, name, spec_nodes, **options):
    from LymphNodeMTLLib.training.node_patch_dataset import build_patch_cache
    from LymphNodeMTLLib.training.trainer import TrainConfig, Trainer

    config = TrainConfig(epochs=1, batch_size=4, device="cpu", network={"channels": [4, 8]}, seed=2,
                         preprocessing={"patch_size": 24, "patch_spacing_mm": 1.0, **options.pop("pre", {})},
                         mixed_precision=False, val_fraction=0.0, descriptor_refit=False, **options)
    trainer = Trainer(config, tmp_path / name, log=lambda *_: None)
    trainer.set_cache(build_patch_cache([spec_nodes], trainer.pre, config.jitter_mm))
    return trainer


@pytest.fixture(scope="module")
def spec_nodes():
    from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
    from LymphNodeMTLLib.training.node_patch_dataset import CaseNodes

    case = generate_phantom_case(np.random.default_rng(21), 6, spacing=(0.9, 0.9, 1.2), direction=np.eye(3),
                                 field_of_view_mm=(90.0, 90.0, 70.0))
    return CaseNodes("c", case.image, case.geometry, np.array([n.seed_ras for n in case.nodes]),
                     [n.node_id for n in case.nodes], [n.label for n in case.nodes],
                     [n.mask_value for n in case.nodes], case.label_map)


def test_a_prompt_model_fine_tunes_from_a_seed_model_and_trains_on_simulated_interactions(tmp_path, spec_nodes):
    from LymphNodeMTLLib.network.model_store import load_model

    seeds_only = _tiny_trainer(tmp_path, "seeds", spec_nodes)
    seeds_only.finish()
    interactions = {"seed_only": 0.0, "seed_clicks": 0.5, "line": 0.25, "box": 0.25, "max_clicks": 2}
    trainer = _tiny_trainer(tmp_path, "prompts", spec_nodes, pre={"prompt_channels": True},
                            interactions=interactions, init_from=str(tmp_path / "seeds"), keep_best=False)
    assert trainer.network.config.in_channels == 7
    first = trainer.network.encoder[0].conv1.conv.weight.detach()
    torch.testing.assert_close(first[:, :2], load_model(tmp_path / "seeds").network.encoder[0].conv1.conv.weight)
    assert float(first[:, 2:].abs().sum()) == 0.0  # the prompt channels start at zero weight
    seen = []
    trainer.network.register_forward_pre_hook(lambda _m, args: seen.append(args[0][:, 2:].abs().flatten(1).sum(1)))
    simulated = []
    trainer.network.segment = _counting(trainer.network.segment, simulated)
    batch = next(iter(trainer._loader(trainer.train_set, shuffle=True)))
    trainer.train_step(batch)
    assert simulated, "clicks were drawn, so the network's own predictions were asked for"
    assert bool((seen[-1] > 0).all())  # every sample of this recipe reads a prompt
    trainer.fit()
    assert float(trainer.network.encoder[0].conv1.conv.weight[:, 2:].detach().abs().sum()) > 0  # they learnt
    trainer.finish()
    saved = load_model(tmp_path / "prompts")
    assert saved.config.preprocessing.prompt_channels and saved.network.config.in_channels == 7


def _counting(fn, calls):
    def wrapped(x):
        calls.append(x.shape[0])
        return fn(x)
    return wrapped


def test_interactions_need_prompt_channels(tmp_path, spec_nodes):
    from LymphNodeMTLLib.training.trainer import TrainConfig, Trainer

    with pytest.raises(ValueError, match="prompt_channels"):
        Trainer(TrainConfig(device="cpu", interactions={}), tmp_path / "x", log=lambda *_: None)


def test_line_and_box_samples_carry_their_prompt_and_seed_samples_none(spec_nodes):
    from LymphNodeMTLLib.training.node_patch_dataset import NodePatchDataset, build_patch_cache

    pre = PreprocessingConfig(patch_size=24, prompt_channels=True)
    cache = build_patch_cache([spec_nodes], pre, 2.0)
    config = InteractionConfig(seed_only=0.2, seed_clicks=0.2, line=0.3, box=0.3)
    data = NodePatchDataset(cache, pre, True, 2.0, 0, config)
    kinds = set()
    for i in range(len(data)):
        s = data[i]
        has_line, has_box = not torch.isnan(s["line"]).any(), not torch.isnan(s["box"]).any()
        assert not (has_line and has_box)
        mask = s["mask"][0].numpy() > 0.5
        if has_line:
            middle = np.round(s["line"].numpy().mean(axis=0)).astype(int)
            assert mask[tuple(np.clip(middle, 0, 23))] or mask.sum() < 30  # the line crosses the node
        if has_box:
            lo, hi = s["box"].numpy()
            idx = np.argwhere(mask)
            assert np.all(idx >= np.floor(lo)) and np.all(idx <= np.ceil(hi))  # the box holds the node
        kinds.add("line" if has_line else "box" if has_box else "seed")
    assert kinds == {"line", "box", "seed"}
    plain = NodePatchDataset(cache, pre, False, 2.0, 0, config)  # validation: seeds alone
    assert all(torch.isnan(plain[i]["line"]).all() and plain[i]["clicks"] == 0 for i in range(len(plain)))
