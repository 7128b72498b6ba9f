"""The five papers' components (docs/methods.md): each one's math on tiny tensors, the
default config still building the base network exactly, and every ablation variant training one
step through the Trainer and round-tripping through its model folder."""

import math

import pytest
import torch
import torch.nn.functional as F
from LymphNodeMTLLib.evaluation.ablation.ablation import (
    COMPONENT_VARIANTS,
    VARIANTS,
    combine_variants,
    variant_config,
)
from LymphNodeMTLLib.network.components.auxiliary_heads import (
    ShortAxisHead,
    StationHead,
    short_axis_from_mask,
    station_loss,
)
from LymphNodeMTLLib.network.components.deep_supervision import (
    DEEP_SUPERVISION_WEIGHTS,
    DeepSupervisionHeads,
    deep_supervision_loss,
    supervision_weights,
)
from LymphNodeMTLLib.network.components.dense_attention import DenseAttentionBlock, DenseAttentionEncoder
from LymphNodeMTLLib.network.components.lesion_attention_head import CBAM, LesionAttentionHead
from LymphNodeMTLLib.network.components.mixed_head import MixedHead, MixedLoss
from LymphNodeMTLLib.network.components.multiscale_fusion import MultiScaleFusion, normalised_fusion_weights
from LymphNodeMTLLib.network.components.routing_gate import RoutingGate
from LymphNodeMTLLib.network.components.task_aware_attention import (
    ClassificationAwarePath,
    FeatureGate,
    SegmentationAwareDecoder,
)
from LymphNodeMTLLib.network.components.task_specific_attention import TaskSpecificAttention
from LymphNodeMTLLib.network.components.visual_attention import AdaptiveSpatialAttention, VisualAttentionBlock
from LymphNodeMTLLib.network.model_store import ModelConfig, load_model, save_model
from LymphNodeMTLLib.network.network_config import NetworkConfig
from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig
from LymphNodeMTLLib.training.gradient_balancer import GradientBalancer, project_conflicts
from LymphNodeMTLLib.training.losses.multitask_loss import MultiTaskLoss, build_loss
from LymphNodeMTLLib.training.losses.segmentation_losses import JaccardFocalLoss, build_segmentation_loss
from LymphNodeMTLLib.training.losses.self_distillation import MultiTeacherDistillation, binary_kl
from LymphNodeMTLLib.training.node_patch_dataset import PatchCache
from LymphNodeMTLLib.training.pseudo_masks import pseudo_mask_targets
from LymphNodeMTLLib.training.trainer import TrainConfig, Trainer

CH = (4, 8, 16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight a training run for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_network(network: dict) -> MultiTaskNodeNet:
    return MultiTaskNodeNet(NetworkConfig.from_dict(network))


def names_components(network: dict) -> bool:
    return bool(NetworkConfig.from_dict(network).named_components())


def _feats(b=2, size=16, channels=CH):
    torch.manual_seed(0)
    return [torch.randn(b, c, size // 2**i, size // 2**i, size // 2**i) for i, c in enumerate(channels)]


# --- the default stays the base network ------------------------------------------------------------
def test_no_component_builds_the_base_network_exactly():
    defaults = {"channels": [4, 8], "tasks": ["classification", "segmentation"], "fusion": None,
                "deep_supervision": False, "head": "soft_mask_pooling", "routing_gate": None, "stations": 0}
    assert not names_components(defaults)
    for network in ({"channels": [4, 8]}, defaults):
        torch.manual_seed(0)
        built = ModelConfig("m", network=network).build_network()
        torch.manual_seed(0)
        base = MultiTaskNodeNet(NetworkConfig(channels=(4, 8)))
        assert type(built) is MultiTaskNodeNet
        assert list(built.state_dict()) == list(base.state_dict())
        x = torch.randn(2, 2, 16, 16, 16)
        with torch.no_grad():
            a, b = built.eval()(x), base.eval()(x)
        assert torch.equal(a.mask_logits, b.mask_logits)
        assert torch.equal(a.metastasis_logit, b.metastasis_logit)
    assert build_loss(MultiTaskNodeNet(NetworkConfig(channels=(4, 8)))) is None  # the trainer keeps MultiTaskLoss()
    assert names_components({"channels": [4, 8], "fusion": "ma_mtln"})


# --- MA-MTLN ---------------------------------------------------------------------------------------
def test_fusion_weights_are_normalised_and_shapes_kept():
    fusion = MultiScaleFusion(CH)
    with torch.no_grad():
        fusion.fusion_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    w = fusion.fusion_weights().detach()
    assert torch.all(w >= 0) and float(w[1]) == 0.0  # relu: a negative logit switches a scale off
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0, 0.5]) / (2.5 + 1e-4))
    assert float(normalised_fusion_weights(torch.ones(4)).sum()) == pytest.approx(1.0, abs=1e-4)
    feats = _feats()
    out = fusion(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]


def test_visual_and_adaptive_spatial_attention():
    x = torch.randn(2, 4, 8, 8, 8)
    va = VisualAttentionBlock(4, dilations=(1, 2))
    assert va(x).shape == x.shape
    asa = AdaptiveSpatialAttention(4)
    g = torch.randn(2, 4, 8, 8, 8)
    out = asa(x, g)
    assert out.shape == x.shape
    torch.testing.assert_close(asa.last_alpha.sum(1), torch.ones(2))
    # with the mixing forced to [1, 0], the output is A(x) * x
    with torch.no_grad():
        asa.mixing.weight.zero_()
        asa.mixing.bias.copy_(torch.tensor([50.0, -50.0]))
    torch.testing.assert_close(asa(x, g), asa.attention(x) * x)


def test_deep_supervision_weights_08_09_10():
    assert DEEP_SUPERVISION_WEIGHTS == (0.8, 0.9, 1.0)
    assert supervision_weights(2) == (0.8, 0.9, 1.0)
    assert supervision_weights(1) == (0.9, 1.0)
    heads = DeepSupervisionHeads([16, 8])
    aux = heads([torch.randn(2, 16, 4, 4, 4), torch.randn(2, 8, 8, 8, 8)], (16, 16, 16))
    assert [a.shape for a in aux] == [(2, 1, 16, 16, 16)] * 2
    final = torch.randn(2, 1, 16, 16, 16)
    target = (torch.rand(2, 1, 16, 16, 16) > 0.5).float()
    loss = deep_supervision_loss(F.binary_cross_entropy_with_logits, aux, final, target)
    expected = (0.8 * F.binary_cross_entropy_with_logits(aux[0], target)
                + 0.9 * F.binary_cross_entropy_with_logits(aux[1], target)
                + 1.0 * F.binary_cross_entropy_with_logits(final, target))
    torch.testing.assert_close(loss, expected)


def test_task_aware_attention():
    gate = FeatureGate(4, 6)
    g, x = torch.randn(2, 4, 8, 8, 8), torch.randn(2, 6, 8, 8, 8)
    weights = gate.gate(g, x)
    assert weights.shape == (2, 1, 8, 8, 8) and torch.all((weights > 0) & (weights < 1))
    torch.testing.assert_close(gate(g, x), x * weights)
    feats = _feats()
    net = MultiTaskNodeNet(NetworkConfig(channels=CH, task_aware_attention=True))
    stages = net.skip_gates(net.decoder, feats)
    assert [s.shape[1] for s in stages] == [8, 4] and stages[-1].shape[2:] == (16, 16, 16)
    path = ClassificationAwarePath(CH)
    assert [p.shape for p in path(feats)] == [f.shape for f in feats]
    assert isinstance(net.skip_gates, SegmentationAwareDecoder)


def test_jaccard_focal_loss_matches_its_definition():
    logits = torch.randn(2, 1, 6, 6, 6)
    target = (torch.rand(2, 1, 6, 6, 6) > 0.6).float()
    p = torch.sigmoid(logits)
    inter = (p * target).flatten(1).sum(1)
    union = p.flatten(1).sum(1) + target.flatten(1).sum(1) - inter
    jaccard = 1 - (inter + 1e-5) / (union + 1e-5)
    pt = torch.where(target > 0, p, 1 - p)
    focal = -((1 - pt) * torch.log(pt)).flatten(1).mean(1)
    expected = (jaccard + 0.1 * focal).mean()
    torch.testing.assert_close(JaccardFocalLoss()(logits, target), expected, rtol=1e-4, atol=1e-5)
    # the per-node dice+CE form averages to MONAI's DiceCELoss
    dice_ce = build_segmentation_loss("dice_ce")
    torch.testing.assert_close(dice_ce.per_sample(logits, target).mean(), dice_ce(logits, target), rtol=1e-5, atol=1e-6)


# --- MT-IDS ----------------------------------------------------------------------------------------
def test_routing_gate_weights_sum_to_one():
    gate = RoutingGate(8, ["segmentation", "classification", "short_axis"], shared_experts=3, task_experts=2)
    x = torch.randn(4, 8, 2, 2, 2)
    z, weights = gate(x)
    for t in ("segmentation", "classification", "short_axis"):
        assert z[t].shape == x.shape
        torch.testing.assert_close(weights[t]["shared"].sum(1), torch.ones(4))
        torch.testing.assert_close(weights[t]["task"].sum(1), torch.ones(4))
        beta = weights[t]["beta"]
        assert beta.shape == (4,) and torch.all((beta > 0) & (beta < 1))
    # z_k is the beta-mix of the gated shared and task experts
    t = "classification"
    shared = torch.stack([e(x) for e in gate.shared_experts], 1)
    own = torch.stack([e(x) for e in gate.task_experts[t]], 1)
    w = weights[t]
    expected = (w["beta"].view(-1, 1, 1, 1, 1) * (w["shared"].view(4, 3, 1, 1, 1, 1) * shared).sum(1)
                + (1 - w["beta"]).view(-1, 1, 1, 1, 1) * (w["task"].view(4, 2, 1, 1, 1, 1) * own).sum(1))
    torch.testing.assert_close(z[t], expected)


def test_gradient_balancer_projects_conflicts_and_equalises_norms():
    g1 = torch.tensor([1.0, 0.0, 0.0])
    g2 = torch.tensor([-3.0, 4.0, 0.0])  # conflicts with g1 (dot -3)
    p1, p2 = project_conflicts([g1, g2])
    assert float(p1 @ g2) >= -1e-6 and float(p2 @ g1) >= -1e-6
    torch.testing.assert_close(p1, g1 - (-3.0 / 25.0) * g2)
    torch.testing.assert_close(p2, g2 - (-3.0) * g1)
    g3 = torch.tensor([0.0, 0.0, 2.0])  # orthogonal: untouched
    assert torch.equal(project_conflicts([g1, g3])[0], g1)

    balancer = GradientBalancer(momentum=0.0)
    b1, b2 = balancer.balance([g1, g2])
    assert float(b1.norm()) == pytest.approx(float(b2.norm()), rel=1e-6)
    assert float(b1 @ b2) >= -1e-6
    mean_norm = (float(p1.norm()) + float(p2.norm())) / 2
    assert float(b1.norm()) == pytest.approx(mean_norm, rel=1e-6)
    # the EMA carries the common norm across steps
    balancer = GradientBalancer(momentum=0.5)
    balancer.balance([g1, g1])
    balancer.balance([3 * g1, 3 * g1])
    assert balancer.norm_ema == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)


def test_gradient_balancer_backward_on_shared_parameters_only():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3)
    head_a, head_b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    x = torch.randn(5, 3)
    h = shared(x)
    la, lb = head_a(h).pow(2).mean(), (head_b(h) - 3).pow(2).mean()
    ga = torch.autograd.grad(la, list(shared.parameters()), retain_graph=True)
    gb = torch.autograd.grad(lb, list(shared.parameters()), retain_graph=True)
    flat_a = torch.cat([g.flatten() for g in ga])
    flat_b = torch.cat([g.flatten() for g in gb])
    GradientBalancer(momentum=0.0).backward([la, lb], shared.parameters())
    expected = GradientBalancer(momentum=0.0).combine([flat_a, flat_b])
    got = torch.cat([p.grad.flatten() for p in shared.parameters()])
    torch.testing.assert_close(got, expected)
    # task-specific parameters keep the plain gradient of their loss
    torch.testing.assert_close(head_a.weight.grad, torch.autograd.grad(head_a(shared(x)).pow(2).mean(), head_a.weight)[0])


def test_short_axis_target_and_auxiliary_heads():
    mask = torch.zeros(2, 1, 24, 24, 24)
    zz, yy, xx = torch.meshgrid(*[torch.arange(24.0) - 11.5] * 3, indexing="ij")
    mask[0, 0] = ((zz / 4) ** 2 + (yy / 8) ** 2 + (xx / 10) ** 2 <= 1).float()  # semi-axes 4, 8, 10 voxels
    d = short_axis_from_mask(mask, spacing_mm=0.5)
    assert float(d[0]) == pytest.approx(2 * 4 * 0.5, rel=0.08)  # 4 mm short axis
    assert float(d[1]) == 0.0  # empty mask
    assert ShortAxisHead(10)(torch.randn(3, 10)).shape == (3,)
    logits = StationHead(10, 5)(torch.randn(3, 10))
    assert logits.shape == (3, 5)
    loss = station_loss(logits, torch.tensor([2, -1, 4]))
    torch.testing.assert_close(loss, F.cross_entropy(logits[[0, 2]], torch.tensor([2, 4])))
    assert float(station_loss(logits, torch.tensor([-1, -1, -1]))) == 0.0


# --- SD-MdaNet -------------------------------------------------------------------------------------
def test_dense_attention_encoder_shapes():
    block = DenseAttentionBlock(2, 8, stride=2, layers=2)
    assert block(torch.randn(2, 2, 16, 16, 16)).shape == (2, 8, 8, 8, 8)
    enc = DenseAttentionEncoder(2, CH)
    x = torch.randn(2, 2, 16, 16, 16)
    shapes = []
    for b in enc:
        x = b(x)
        shapes.append(tuple(x.shape))
    assert shapes == [(2, 4, 16, 16, 16), (2, 8, 8, 8, 8), (2, 16, 4, 4, 4)]


def test_task_specific_attention_is_per_task():
    att = TaskSpecificAttention(CH, ["segmentation", "classification"])
    feats = _feats()
    seg, cls = att(feats, "segmentation"), att(feats, "classification")
    assert [s.shape for s in seg] == [f.shape for f in feats]
    assert not torch.allclose(seg[0], cls[0])  # separate parameters per task


def test_mixed_head_loss_is_ce_plus_lambda_mse():
    head = MixedHead(6, 8)
    logit, value = head(torch.randn(3, 6))
    assert logit.shape == value.shape == (3,)
    mask = torch.zeros(3, 1, 12, 12, 12)
    mask[:, :, 4:8, 4:8, 4:8] = 1
    label = torch.tensor([1.0, 0.0, 0.0])
    has_label = torch.tensor([True, True, False])
    has_mask = torch.tensor([True, False, True])
    spacing = torch.tensor([1.0, 2.0, 0.5])  # each row's target is measured at its own spacing
    loss = MixedLoss(lam=0.3)(logit, value, label, has_label, mask, has_mask, spacing)
    target = torch.stack([short_axis_from_mask(mask[:1], 1.0)[0], short_axis_from_mask(mask[2:], 0.5)[0]]) / 10.0
    expected = (F.binary_cross_entropy_with_logits(logit[:2], label[:2])
                + 0.3 * F.mse_loss(value[[0, 2]], target))
    torch.testing.assert_close(loss, expected)


def test_distillation_is_zero_when_student_equals_teacher():
    student = torch.tensor([0.3, -1.2, 2.0])
    teachers = torch.stack([student, student])
    distil = MultiTeacherDistillation([1.0, 3.0], beta=0.5, temperature=2.0)
    assert float(distil(student, teachers)) == pytest.approx(0.0, abs=1e-7)
    other = torch.stack([student + 1.0, student - 0.5])
    s = student.clone().requires_grad_(True)
    value = distil(s, other)
    assert float(value) > 0
    value.backward()
    assert torch.all(s.grad != 0)
    # beta * sum_t w_t T^2 mean KL, weights normalised (0.25, 0.75)
    kl = binary_kl(other, student.expand_as(other), 2.0).mean(1)
    assert float(value) == pytest.approx(float(0.5 * 4 * (0.25 * kl[0] + 0.75 * kl[1])), rel=1e-5)
    # the KL of Bernoulli distributions by its definition
    p, q = torch.sigmoid(torch.tensor(0.8)), torch.sigmoid(torch.tensor(-0.4))
    expected = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    torch.testing.assert_close(binary_kl(torch.tensor(0.8), torch.tensor(-0.4)), expected)


# --- LA-Net ----------------------------------------------------------------------------------------
def test_lesion_attention_head_and_given_mask():
    feats = _feats()
    assert CBAM(8)(feats[1]).shape == feats[1].shape
    head = LesionAttentionHead(CH, hidden=8, map_scale=1).eval()
    out = head(feats)
    assert out["logit"].shape == (2,) and out["value"] is None
    assert out["map_logits"].shape == (2, 1, 8, 8, 8)
    mask = torch.zeros(2, 1, 16, 16, 16)
    mask[:, :, 4:12, 4:12, 4:12] = 1
    given = head(feats, mask)
    assert not torch.allclose(given["logit"], out["logit"])
    # per-node choice: node 0 uses the given mask, node 1 its own map
    mixed = head(feats, mask, torch.tensor([True, False]))
    torch.testing.assert_close(mixed["logit"], torch.stack([given["logit"][0], out["logit"][1]]))


def test_pseudo_masks_weight_only_nodes_without_a_true_mask():
    logits = torch.full((3, 1, 4, 4, 4), -5.0)
    logits[:, :, 1:3, 1:3, 1:3] = 5.0  # confident prediction inside
    logits[2] = -5.0  # node 2 predicts nothing
    true = torch.zeros(3, 1, 4, 4, 4)
    true[0, :, 0:2, 0:2, 0:2] = 1
    has_mask = torch.tensor([True, False, False])
    targets, weights = pseudo_mask_targets(logits, true, has_mask, threshold=0.8, weight=0.1)
    assert weights.tolist() == pytest.approx([1.0, 0.1, 0.0])  # true mask 1; pseudo 0.1; empty pseudo 0
    assert torch.equal(targets[0], true[0])  # the true mask is kept, not replaced
    assert torch.equal(targets[1], (torch.sigmoid(logits[1]) >= 0.8).float())


def test_pseudo_masks_in_the_loss_follow_the_two_stages():
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8), head="lesion_attention"))
    loss = build_loss(net, {}, {"threshold": 0.5, "weight": 0.1, "stage1_epochs": 1})
    x = torch.randn(2, 2, 16, 16, 16)
    mask = torch.zeros(2, 1, 16, 16, 16)
    mask[0, :, 4:10, 4:10, 4:10] = 1
    out = net(x)
    args = (out, mask, torch.tensor([True, False]), torch.tensor([1.0, 0.0]), torch.tensor([True, True]),
            torch.ones(2))
    loss.train()
    loss.epoch = 0  # stage 1: masks only, no classification
    stage1 = loss(*args)
    assert float(stage1["cls"]) == 0.0 and float(stage1["seg"]) > 0
    loss.eval()  # validation losses cover every task whatever the stage
    assert float(loss(*args)["cls"]) > 0
    loss.train()
    loss.epoch = 1
    stage2 = loss(*args)
    assert float(stage2["cls"]) > 0


# --- whole networks and training -------------------------------------------------------------------
def _every_component():
    return {"fusion": "ma_mtln", "deep_supervision": True, "task_aware_attention": True,
            "routing_gate": {"shared_experts": 2, "task_experts": 2}, "aux_short_axis": True, "stations": 3,
            "encoder": "dense_attention", "task_specific_attention": True, "mixed_head": True,
            "head": "lesion_attention"}


@pytest.mark.parametrize("network", [
    {"tasks": ["classification"]}, {"tasks": ["classification"], "pool_region": "patch"},
    {"tasks": ["segmentation"]}, {"fusion": "ma_mtln", "deep_supervision": True},
    {"routing_gate": True, "aux_short_axis": True}, {"encoder": "dense_attention", "mixed_head": True},
    {"head": "lesion_attention"}, _every_component(),
])
def test_component_network_output_shapes(network):
    net = build_network({"channels": [4, 8, 16], **network})
    assert isinstance(net, MultiTaskNodeNet) and net.config.named_components()
    x = torch.randn(2, 2, 16, 16, 16)
    net.train()
    out = net(x, torch.ones(2, 1, 16, 16, 16), use_mask=torch.tensor([True, False]))
    assert out.mask_logits.shape == (2, 1, 16, 16, 16)
    assert out.metastasis_logit.shape == (2,)
    assert out.pool_mask.shape == (2, 1, 16, 16, 16)
    if network.get("deep_supervision"):
        assert [a.shape for a in out.deep_supervision] == [(2, 1, 16, 16, 16)] * 2
    if network.get("aux_short_axis"):
        assert out.short_axis.shape == (2,)
    if network.get("head") == "lesion_attention":
        assert out.lesion_map.shape == (2, 1, 8, 8, 8)
    if network.get("stations"):
        assert out.station_logits.shape == (2, 3)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out.deep_supervision is None  # inference costs nothing extra
    if network.get("tasks") == ["classification"]:
        assert torch.equal(out.pool_mask, (out.mask_logits > 0).float())
    if network.get("tasks") == ["segmentation"]:
        assert torch.equal(out.metastasis_logit, torch.zeros(2))


def test_component_network_batched_equals_one_by_one():
    torch.manual_seed(1)
    net = build_network({"channels": [4, 8, 16], **_every_component()}).eval()
    x = torch.randn(3, 2, 16, 16, 16)
    with torch.no_grad():
        batched = net(x)
        single = [net(x[i:i + 1]) for i in range(3)]
    torch.testing.assert_close(batched.metastasis_logit, torch.cat([s.metastasis_logit for s in single]),
                               rtol=1e-4, atol=1e-5)


PRE = {"patch_size": 16, "patch_spacing_mm": 2.0}


def _cache(n=8, margin=1):
    torch.manual_seed(0)
    size = PRE["patch_size"] + 2 * margin
    images = (torch.randn(n, 1, size, size, size) * 40 + 20).half()
    masks = torch.zeros(n, 1, size, size, size, dtype=torch.uint8)
    c = size // 2
    for i in range(n):
        r = 2 + i % 3
        masks[i, :, c - r:c + r, c - r:c + r, c - r:c + r] = 1
        images[i, :, c - r:c + r, c - r:c + r, c - r:c + r] += 60
    labels = torch.tensor([float(i % 2) for i in range(n)])
    labels[3] = float("nan")  # one node without a label
    has_mask = torch.ones(n, dtype=torch.bool)
    has_mask[[1, 6]] = False  # two nodes without a mask (pseudo-masks)
    return PatchCache(images, masks, labels, has_mask, [f"n{i}" for i in range(n)],
                      [f"case{i // 2}" for i in range(n)], margin)


TINY = {"epochs": 1, "batch_size": 4, "lr": 3e-3, "val_fraction": 0.25, "seed": 3, "device": "cpu",
        "network": {"channels": [4, 8]}, "preprocessing": PRE, "mixed_precision": False, "jitter_mm": 2.0}


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    dirs = []
    for name in ("base", "single_task_classifier"):
        config = ModelConfig(name, network={"channels": [4, 8], **VARIANTS[name].network},
                             preprocessing=PreprocessingConfig.from_dict(PRE))
        torch.manual_seed(len(dirs))
        save_model(root / name, config, config.build_network(), "# teacher\n")
        dirs.append(root / name)
    return dirs


@pytest.mark.parametrize("name", [*VARIANTS, "all"])
def test_every_variant_trains_one_step_and_round_trips(name, teacher_dirs, tmp_path):
    variant = combine_variants(COMPONENT_VARIANTS) if name == "all" else VARIANTS[name]
    teachers = teacher_dirs if variant.teachers else []
    config = variant_config(TrainConfig(**TINY), variant, teachers)
    trainer = Trainer(config, tmp_path / "model", log=lambda *_: None)
    trainer.set_cache(_cache())
    if variant.teachers:
        assert trainer.teacher_logits.shape == (2, len(trainer.train_idx))
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    batch = next(iter(trainer._loader(trainer.train_set, shuffle=False)))
    losses = trainer.train_step(batch)
    assert all(math.isfinite(v) for v in losses.values())
    changed = [k for k, v in trainer.network.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one step must move the weights"
    if config.gradient_balancer:
        assert trainer.balancer.norm_ema is not None
    trainer.finish()
    loaded = load_model(tmp_path / "model")
    assert type(loaded.network) is type(trainer.network)
    x = torch.randn(2, 2, 16, 16, 16)
    trainer.network.eval()
    with torch.no_grad():
        a, b = trainer.network(x), loaded.network(x)
    torch.testing.assert_close(a.metastasis_logit, b.metastasis_logit)
    torch.testing.assert_close(a.mask_logits, b.mask_logits)


def test_multitask_loss_options_are_checked():
    with pytest.raises(ValueError, match="unknown loss options"):
        build_loss(MultiTaskNodeNet(NetworkConfig(channels=(4, 8))), {"segmentaton": "dice_ce"})
    with pytest.raises(ValueError):
        build_segmentation_loss("dice")
    assert MultiTaskLoss().balance.sigma.shape == (2,)
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8), aux_short_axis=True, stations=4))
    assert build_loss(net).balance.sigma.shape == (4,)
    single = MultiTaskNodeNet(NetworkConfig(channels=(4, 8), tasks=("segmentation",)))
    assert build_loss(single).balance.sigma.shape == (1,)
