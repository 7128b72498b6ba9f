"""Research probe for issue 4 (not product code): how far a small MLP over the node descriptors gets
when it is fitted to the phantoms' true logit (soft targets) instead of the 0/1 labels, with and
without the slice thickness (the patch's own estimate, or the source CT's true spacing), against a
logistic refit on the 0/1 labels; and how it scales with the number of training nodes. Inputs: two captures from capture_head_inputs.py.

    .venv/bin/python scripts/research/soft_target_head_probe.py TRAIN.pt TEST.pt
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "LymphNodeMTL"))
from LymphNodeMTLLib.core.classification_metrics import roc_auc  # noqa: E402
from LymphNodeMTLLib.network.node_descriptors import DESCRIPTOR_NAMES, NUM_DESCRIPTORS  # noqa: E402
from LymphNodeMTLLib.training.descriptor_refit import SOFT_LABEL_CLIP  # noqa: E402
from probe_tools import mlp_on_soft_targets  # noqa: E402

torch.set_num_threads(2)
tr, te = torch.load(sys.argv[1], weights_only=False), torch.load(sys.argv[2], weights_only=False)


def features(d):
    return torch.cat([d["head"][:, -NUM_DESCRIPTORS:], d["deep"][:, None], torch.log(d["slice_mm"])[:, None]], 1).double()


xtr, xte = features(tr), features(te)
mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
y = te["label"].numpy()
soft = torch.logit(tr["truth"][:, 6].double().clamp(SOFT_LABEL_CLIP, 1 - SOFT_LABEL_CLIP))[:, None]


def logistic(a, labels, b, l2=1e-3):
    w = torch.zeros(a.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w[:-1] + w[-1], labels.double()) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (b @ w[:-1] + w[-1]).detach()


# columns: the descriptors (noise_anisotropy is the patch's own slice-thickness estimate), the
# MLP's output, the true log slice thickness of the source CT
ESTIMATE = DESCRIPTOR_NAMES.index("noise_anisotropy")
base = [c for c in range(NUM_DESCRIPTORS + 1) if c != ESTIMATE]  # without any thickness
estimate = list(range(NUM_DESCRIPTORS + 1))  # what the product's refit reads
thick = base + [NUM_DESCRIPTORS + 1]
print(f"train {len(xtr)} nodes, test {len(xte)} nodes")
print("LR on labels, no thickness           AUC %.4f" % roc_auc(y, logistic(xtr[:, base], tr["label"], xte[:, base]).numpy()))
print("LR on labels + thickness estimate    AUC %.4f" % roc_auc(y, logistic(xtr[:, estimate], tr["label"], xte[:, estimate]).numpy()))
print("LR on labels + true slice thickness  AUC %.4f" % roc_auc(y, logistic(xtr[:, thick], tr["label"], xte[:, thick]).numpy()))
for name, cols in (("no thickness", base), ("thickness estimate", estimate), ("true slice thickness", thick)):
    for hidden in (16,):
        p = mlp_on_soft_targets(xtr[:, cols], soft, xte[:, cols], hidden)
        print(f"MLP({hidden}) on true logit, {name:30s} AUC %.4f" % roc_auc(y, p.numpy()))
rng = torch.Generator().manual_seed(1)
for frac in (0.33, 0.66, 1.0):
    idx = torch.randperm(len(xtr), generator=rng)[: int(frac * len(xtr))]
    p = mlp_on_soft_targets(xtr[idx][:, estimate], soft[idx], xte[:, estimate], 16)
    print(f"learning curve: {len(idx)} training nodes -> AUC %.4f" % roc_auc(y, p.numpy()))
