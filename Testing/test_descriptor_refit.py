"""The post-training refit of the head's descriptor path: a convex fit folded exactly into the
NodeHead weights, that ranks nodes by the descriptors that carry the label."""

import pytest
import torch
from LymphNodeMTLLib.core.classification_metrics import roc_auc
from LymphNodeMTLLib.network.node_descriptors import NUM_DESCRIPTORS
from LymphNodeMTLLib.network.node_head import NodeHead
from LymphNodeMTLLib.training.descriptor_refit import collect_head_inputs, refit_descriptor_path, refittable


def _nodes(n=600, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    x[:, -NUM_DESCRIPTORS:] = x[:, -NUM_DESCRIPTORS:] * 3.0 + 5.0  # descriptors off unit scale
    logit = 1.5 * (x[:, -NUM_DESCRIPTORS] - 5.0) / 3.0 - 1.0 * (x[:, -2] - 5.0) / 3.0
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return x, y, logit


def test_refit_learns_the_informative_descriptors_and_folds_into_the_head():
    torch.manual_seed(0)
    x, y, true_logit = _nodes(n=2000)
    head = NodeHead(x.shape[1], hidden=16)
    with torch.no_grad():
        before = head(x).squeeze(1)
    result = refit_descriptor_path(head, x, y)
    assert result["refit"] and result["nodes"] == len(y)
    assert result["train_loss_after"] < result["train_loss_before"]
    head.eval()
    with torch.no_grad():
        after = head(x).squeeze(1)
    assert roc_auc(y.numpy(), after.numpy()) > roc_auc(y.numpy(), before.numpy()) + 0.1
    assert roc_auc(y.numpy(), after.numpy()) == pytest.approx(roc_auc(y.numpy(), true_logit.numpy()), abs=0.03)
    # the informative descriptors carry the largest weights, with the right signs
    w = head.wide.weight[0] * 3.0  # back to standardised units
    assert w[0] > 1.0 and w[-2] < -0.6
    assert w[1:-2].abs().max() < 0.25


def test_refit_ignores_unlabelled_nodes_and_refuses_too_few_labels():
    x, y, _ = _nodes(n=200)
    head = NodeHead(x.shape[1], hidden=8)
    y_few = torch.full_like(y, float("nan"))
    y_few[:15] = y[:15]
    state = {k: v.clone() for k, v in head.state_dict().items()}
    result = refit_descriptor_path(head, x, y_few)
    assert not result["refit"] and "need" in result["reason"]
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())  # untouched
    y_part = y.clone()
    y_part[::2] = float("nan")
    assert refit_descriptor_path(head, x, y_part)["nodes"] == int((~torch.isnan(y_part)).sum())


def test_head_inputs_are_collected_as_inference_reads_them():
    from LymphNodeMTLLib.network.network_config import NetworkConfig
    from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet

    torch.manual_seed(0)
    net = MultiTaskNodeNet(NetworkConfig(channels=(4, 8)))
    assert refittable(net)
    net.train()
    x = torch.randn(3, 2, 24, 24, 24)
    rows = collect_head_inputs(net, [x[:2], x[2:]])
    assert rows.shape == (3, net.head_input.width)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        logits = net(x).metastasis_logit
    torch.testing.assert_close(net.head(rows).squeeze(1), logits, rtol=1e-4, atol=1e-4)


def test_cross_fitted_logits_are_held_out_by_case():
    from LymphNodeMTLLib.training.descriptor_refit import cross_fitted_logits

    # labels unrelated to the descriptors: a refit scores its own nodes above chance (it fits the
    # noise), the cross-fitted logits only at chance
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 40, generator=g)
    y = (torch.rand(300, generator=g) < 0.4).float()
    y[::7] = float("nan")
    groups = [f"case{i // 6}" for i in range(300)]
    head = NodeHead(40, hidden=8)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    held = cross_fitted_logits(head, x, y, groups, folds=5, seed=0)
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())  # untouched
    known = ~torch.isnan(y)
    assert torch.isnan(held[~known]).all() and torch.isfinite(held[known]).all()
    refit_descriptor_path(head, x, y)
    head.eval()
    with torch.no_grad():
        in_sample = head(x).squeeze(1)
    assert roc_auc(y[known].numpy(), in_sample[known].numpy()) > 0.6
    assert abs(roc_auc(y[known].numpy(), held[known].numpy()) - 0.5) < 0.07
    # on informative nodes the cross-fitted logits rank as the true logit does
    x, y, true_logit = _nodes(n=1500)
    held = cross_fitted_logits(NodeHead(x.shape[1], hidden=8), x, y, [i // 5 for i in range(1500)])
    assert roc_auc(y.numpy(), held.numpy()) == pytest.approx(roc_auc(y.numpy(), true_logit.numpy()), abs=0.03)
