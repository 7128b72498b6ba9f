"""Each patch's spacing travels with the batch into the network, the losses, the head refit and the
distillation teachers, as the engine passes one per zoom level (network/batch_spacing.py)."""

from __future__ import annotations

import torch
from LymphNodeMTLLib.network.batch_spacing import by_spacing, spacing_groups, spacing_of_batch
from LymphNodeMTLLib.network.network_config import NetworkConfig
from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig, network_input
from LymphNodeMTLLib.training.descriptor_refit import collect_head_inputs
from LymphNodeMTLLib.training.losses.multitask_loss import MultiTaskLoss
from LymphNodeMTLLib.training.training_module import MultiTaskTrainingModule

PRE = PreprocessingConfig(patch_size=16, patch_spacing_mm=1.0)


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 1, 16, 16, 16, generator=g) * 80.0
    r = torch.arange(16).float() - 7.5
    ball = ((r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= 20.0).float()
    image = image + 40.0 * ball  # a node-like blob, so the predicted masks are not all empty
    mask = ball.expand(n, 1, 16, 16, 16).clone()
    label = torch.tensor([0.0, 1.0] * (n // 2) + [0.0] * (n % 2))
    return network_input(image, PRE), mask, torch.ones(n, dtype=torch.bool), label, torch.ones(n, dtype=torch.bool)


def _module(seed: int = 0, **network) -> MultiTaskTrainingModule:
    torch.manual_seed(seed)
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8), patch_spacing_mm=1.0, **network))
    return MultiTaskTrainingModule(net, teacher_forcing=0.0, loss=MultiTaskLoss(mixed_lambda=0.1)).eval()


def test_spacing_groups_cover_the_batch_once():
    groups = spacing_groups(torch.tensor([2.0, 1.0, 2.0, 1.5, 1.0]))
    assert [s for s, _ in groups] == [1.0, 1.5, 2.0]
    assert sorted(torch.cat([i for _, i in groups]).tolist()) == [0, 1, 2, 3, 4]
    assert groups[2][1].tolist() == [0, 2]


def test_by_spacing_puts_each_groups_rows_back_in_batch_order():
    values = torch.arange(5.0).view(5, 1)
    spacing = torch.tensor([2.0, 1.0, 2.0, 3.0, 1.0])
    out = by_spacing(lambda s, v: v * 10 + s, spacing, values)
    assert out.flatten().tolist() == [2.0, 11.0, 22.0, 33.0, 41.0]
    assert by_spacing(lambda s, v: v + s, 0.5, values).flatten().tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_spacing_of_batch_takes_a_number_a_tensor_or_the_default():
    assert spacing_of_batch(None, 3, 1.5).tolist() == [1.5, 1.5, 1.5]
    assert spacing_of_batch(2.0, 2, 1.0).tolist() == [2.0, 2.0]
    assert spacing_of_batch(torch.tensor([1.0, 3.0], dtype=torch.float64), 2, 1.0).dtype == torch.float32
    try:
        spacing_of_batch(torch.ones(3), 2, 1.0)
    except ValueError as e:
        assert "one value per patch" in str(e)
    else:
        raise AssertionError("a spacing tensor of the wrong length must be refused")


def test_the_spacing_changes_what_the_head_reads():
    module = _module()
    x, mask, has_mask, label, has_label = _batch(2)
    with torch.no_grad():
        at_1 = module(x, mask, has_mask, label, has_label, spacing_mm=torch.tensor([1.0, 1.0]))
        at_2 = module(x, mask, has_mask, label, has_label, spacing_mm=torch.tensor([2.0, 2.0]))
    # the same voxels read as 2 mm voxels are a node eight times the volume
    assert not torch.allclose(at_1["outputs"].metastasis_logit, at_2["outputs"].metastasis_logit)
    torch.testing.assert_close(at_1["outputs"].mask_logits, at_2["outputs"].mask_logits)  # the mask is in voxels


def test_no_spacing_is_the_networks_own():
    net = _module().network
    x, *_ = _batch(2)
    with torch.no_grad():
        torch.testing.assert_close(net(x).metastasis_logit, net(x, spacing_mm=1.0).metastasis_logit)
        torch.testing.assert_close(net(x).metastasis_logit, net(x, spacing_mm=torch.ones(2)).metastasis_logit)


def test_a_mixed_batch_equals_each_spacing_run_on_its_own():
    module = _module()
    x, mask, has_mask, label, has_label = _batch(4)
    spacing = torch.tensor([2.0, 1.0, 2.0, 1.0])
    with torch.no_grad():
        mixed = module(x, mask, has_mask, label, has_label, spacing_mm=spacing)["outputs"]
        for s, idx in ((1.0, [1, 3]), (2.0, [0, 2])):
            alone = module(x[idx], mask[idx], has_mask[idx], label[idx], has_label[idx], spacing_mm=s)["outputs"]
            torch.testing.assert_close(mixed.metastasis_logit[idx], alone.metastasis_logit)
            torch.testing.assert_close(mixed.mask_logits[idx], alone.mask_logits)


def test_a_network_without_a_mask_branch_pools_a_ball_of_millimetres():
    net = _module(tasks=["classification"], pool_region="seed_ball", seed_ball_radius_mm=4.0).network
    x, *_ = _batch(2)
    with torch.no_grad():
        region = net(x, spacing_mm=torch.tensor([1.0, 2.0])).pool_mask
    voxels = region.flatten(1).sum(1)
    assert float(voxels[0]) > 6 * float(voxels[1])  # the same 4 mm ball holds 8x fewer 2 mm voxels


def test_a_mixed_batch_trains_through_every_patch():
    module = _module().train()
    x, mask, has_mask, label, has_label = _batch(4)
    losses = module(x, mask, has_mask, label, has_label, spacing_mm=torch.tensor([1.0, 2.0, 1.0, 2.0]))
    losses["total"].backward()
    grads = [p.grad for p in module.network.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_head_inputs_are_collected_at_each_patchs_spacing():
    network = _module().network
    x, *_ = _batch(4)
    slice_mm = torch.ones(4)
    spacing = torch.tensor([1.0, 2.0, 2.0, 1.0])
    mixed = collect_head_inputs(network, [(x, slice_mm, spacing)])
    for s in (1.0, 2.0):
        idx = (spacing == s).nonzero().flatten()
        alone = collect_head_inputs(network, [(x[idx], slice_mm[idx], torch.full((len(idx),), s))])
        torch.testing.assert_close(mixed[idx], alone)
    plain = collect_head_inputs(network, [(x, slice_mm)])
    torch.testing.assert_close(plain[[0, 3]], mixed[[0, 3]])  # no spacing given: the network's own
    assert not torch.allclose(plain[1], mixed[1])


def test_teacher_logits_read_each_cached_row_at_its_spacing(tmp_path):
    from LymphNodeMTLLib.network.model_store import ModelConfig, save_model
    from LymphNodeMTLLib.training.losses.self_distillation import teacher_logits
    from LymphNodeMTLLib.training.node_patch_dataset import PatchCache

    network = _module().network
    config = ModelConfig("teacher", network={"channels": [4, 8]}, preprocessing=PRE, temperature=1.5)
    save_model(tmp_path / "teacher", config, network, "a test teacher")
    g = torch.Generator().manual_seed(3)
    n = 5
    images = (torch.randn(n, 1, 18, 18, 18, generator=g) * 80.0).half()
    spacing = torch.tensor([1.0, 2.0, 1.0, 2.0, 2.0])
    cache = PatchCache(images, torch.zeros(n, 1, 18, 18, 18, dtype=torch.uint8), torch.zeros(n),
                       torch.zeros(n, dtype=torch.bool), [f"n{i}" for i in range(n)], ["c"] * n, 1,
                       slice_mm=torch.ones(n), spacing_mm=spacing)
    got = teacher_logits([tmp_path / "teacher"], cache, PRE, "cpu", batch_size=2)
    assert got.shape == (1, n)
    network.eval()
    x = network_input(images[:, :, 1:17, 1:17, 1:17].float(), PRE)
    with torch.no_grad():
        for s in (1.0, 2.0):
            expected = network(x, slice_mm=torch.ones(n), spacing_mm=s).metastasis_logit / 1.5
            rows = spacing == s
            torch.testing.assert_close(got[0, rows], expected[rows], rtol=1e-4, atol=1e-5)
