"""Soft labels (a probability per node): read from the nodes CSV, written by the phantom writer,
carried by the patch cache, and fitted by the head's refine MLP (descriptor_refit.py)."""

import pytest
import torch
from LymphNodeMTLLib.core.classification_metrics import roc_auc
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.io.training_manifest import read_nodes_csv
from LymphNodeMTLLib.network.model_store import ModelConfig, load_model, save_model
from LymphNodeMTLLib.network.node_descriptors import NUM_DESCRIPTORS
from LymphNodeMTLLib.network.node_head import NodeHead
from LymphNodeMTLLib.training.descriptor_refit import (
    REFINE_HIDDEN,
    REFINE_SEEDS,
    cross_fitted_logits,
    refit_descriptor_path,
)
from LymphNodeMTLLib.training.node_patch_dataset import PatchCache


def _nodes_csv(tmp_path, soft_values):
    path = tmp_path / "nodes.csv"
    rows = ["id,r,a,s,label,soft_label"] + [f"n{i},1,2,3,0,{v}" for i, v in enumerate(soft_values)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_soft_labels_are_read_and_may_be_empty(tmp_path):
    nodes = read_nodes_csv(_nodes_csv(tmp_path, ["0.25", "", "1", "0"]))
    assert [n.soft_label for n in nodes] == [0.25, None, 1.0, 0.0]
    plain = tmp_path / "plain.csv"
    plain.write_text("id,r,a,s\nn0,1,2,3\n")
    assert read_nodes_csv(plain)[0].soft_label is None


@pytest.mark.parametrize("bad", ["1.5", "-0.01", "high", "nan"])
def test_a_soft_label_that_is_not_a_probability_is_one_clear_line(tmp_path, bad):
    with pytest.raises(InputError) as err:
        read_nodes_csv(_nodes_csv(tmp_path, ["0.5", bad]))
    message = str(err.value)
    assert "\n" not in message and "line 3" in message and "soft_label" in message and "0 to 1" in message


def test_the_patch_cache_keeps_soft_labels_through_subset_and_concatenate():
    def cache(n, soft):
        return PatchCache(torch.zeros(n, 1, 2, 2, 2), torch.zeros(n, 1, 2, 2, 2, dtype=torch.uint8),
                          torch.zeros(n), torch.zeros(n, dtype=torch.bool), [f"n{i}" for i in range(n)],
                          ["c"] * n, 0, soft)

    with_soft = cache(3, torch.tensor([0.1, 0.2, 0.3]))
    without = cache(2, None)
    torch.testing.assert_close(with_soft.subset([2, 0]).soft_labels, torch.tensor([0.3, 0.1]))
    joined = PatchCache.concatenate([with_soft, without])
    torch.testing.assert_close(joined.soft_labels, torch.tensor([0.1, 0.2, 0.3, float("nan"), float("nan")]),
                               equal_nan=True)
    assert PatchCache.concatenate([without, without]).soft_labels is None
    assert torch.isnan(without.soft_or_nan()).all() and len(without.soft_or_nan()) == 2


def _soft_nodes(n=1500, width=40, seed=0):
    """Head inputs whose true logit is not linear in the descriptors (an interaction and a bump),
    with P = sigmoid(true logit) as the soft label and a Bernoulli draw of it as the label."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    d = x[:, -NUM_DESCRIPTORS:]
    true_logit = 1.2 * d[:, 0] + 1.5 * d[:, 1] * d[:, 2] - 1.5 * (d[:, 3] ** 2 - 1.0)
    x[:, -NUM_DESCRIPTORS:] = d * 2.0 + 3.0  # off unit scale: the refit standardises
    soft = torch.sigmoid(true_logit)
    labels = (torch.rand(n, generator=g) < soft).float()
    return x, labels, soft, true_logit


def test_the_refine_mlp_learns_the_soft_labels_beyond_what_a_logistic_refit_can():
    x, labels, soft, true_logit = _soft_nodes()
    test_x, test_labels, _, test_logit = _soft_nodes(seed=1)
    torch.manual_seed(0)
    head = NodeHead(x.shape[1], hidden=8)
    logistic = NodeHead(x.shape[1], hidden=8)
    logistic.load_state_dict(head.state_dict())
    result = refit_descriptor_path(head, x, labels, soft_labels=soft)
    assert result["refit"] and result["kind"] == "soft-label MLP" and result["nodes"] == len(soft)
    assert head.refine is not None and result["refine_hidden"] == REFINE_HIDDEN * REFINE_SEEDS
    refit_descriptor_path(logistic, x, labels)
    assert logistic.refine is None
    head.eval()
    logistic.eval()
    with torch.no_grad():
        refined, linear = head(test_x).squeeze(1), logistic(test_x).squeeze(1)
    # the refined head's logit is the true logit (the standardisation is folded into its weights)
    assert torch.corrcoef(torch.stack([refined, test_logit]))[0, 1] > 0.9
    assert (refined - test_logit).abs().median() < 0.5
    y = test_labels.numpy()
    assert roc_auc(y, refined.numpy()) > roc_auc(y, linear.numpy()) + 0.03


def test_too_few_soft_labels_fall_back_to_the_logistic_refit_and_drop_a_refine_mlp():
    x, labels, soft, _ = _soft_nodes(n=400)
    head = NodeHead(x.shape[1], hidden=8)
    refit_descriptor_path(head, x, labels, soft_labels=soft)
    assert head.refine is not None
    few = torch.full_like(soft, float("nan"))
    few[:50] = soft[:50]
    result = refit_descriptor_path(head, x, labels, soft_labels=few)
    assert result["kind"] == "logistic" and head.refine is None


def test_cross_fitted_logits_use_the_soft_labels_and_leave_the_head_alone():
    x, labels, soft, true_logit = _soft_nodes(n=800)
    head = NodeHead(x.shape[1], hidden=8)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    groups = [f"case{i // 8}" for i in range(len(labels))]
    held_out = cross_fitted_logits(head, x, labels, groups, soft_labels=soft)
    assert torch.isfinite(held_out).all()
    assert torch.corrcoef(torch.stack([held_out.float(), true_logit]))[0, 1] > 0.85
    assert head.refine is None and all(torch.equal(v, state[k]) for k, v in head.state_dict().items())


def test_a_refined_model_saves_and_loads_with_its_refine_mlp(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig("refined", network={"channels": [4, 8]})
    net = config.build_network().eval()
    width = net.head_input.width
    x, labels, soft, _ = _soft_nodes(n=300, width=width)
    refit_descriptor_path(net.head, x, labels, soft_labels=soft)
    config.network["head_refine_hidden"] = net.head.refine[0].out_features
    save_model(tmp_path / "m", config, net, "# card\n")
    loaded = load_model(tmp_path / "m")
    assert loaded.network.head.refine is not None
    patch = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(patch).metastasis_logit, net(patch).metastasis_logit)
