"""Research probe for issue 4 (not product code): where the rest of the AUC gap lies, and how well
the fatty-hilum sector descriptors see a hilum. Inputs: two captures made with
`capture_head_inputs.py MANIFEST OUT.pt --patches` (training and test phantoms). The descriptors
are recomputed from the captured patches with the current code, so new descriptors can be tried
without re-running the network.

Prints: each hilum descriptor's AUC for telling nodes with a hilum from nodes without, by short
axis and slice thickness; then the soft-label MLP's test AUC on the descriptors and the deep logit,
alone and with one piece of phantom truth added (the hilum flag, the necrotic fraction, the true
slice thickness): how much each would still be worth if it were seen exactly.

    .venv/bin/python scripts/research/hilum_gap_probe.py TRAIN.pt TEST.pt
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "LymphNodeMTL"))
from LymphNodeMTLLib.core.classification_metrics import roc_auc  # noqa: E402
from LymphNodeMTLLib.network.node_descriptors import DESCRIPTOR_NAMES, node_descriptors  # noqa: E402
from LymphNodeMTLLib.training.descriptor_refit import SOFT_LABEL_CLIP  # noqa: E402
from probe_tools import mlp_on_soft_targets  # noqa: E402

SHORT_AXIS, NECROSIS, HILUM, PROBABILITY = 0, 2, 5, 6  # truth columns (capture_head_inputs.TRUTH)
torch.set_num_threads(2)


def descriptors(capture):
    return torch.cat([node_descriptors(capture["mask"][i:i + 32].float(), capture["image"][i:i + 32].float(), 1.0)
                      for i in range(0, len(capture["mask"]), 32)])


tr, te = torch.load(sys.argv[1], weights_only=False), torch.load(sys.argv[2], weights_only=False)
dtr, dte = descriptors(tr), descriptors(te)
hilum = (te["truth"][:, HILUM] > 0.5).numpy().astype(int)
size, slices = te["truth"][:, SHORT_AXIS].numpy(), te["slice_mm"].numpy()
for name in ("hilum_sector_drop", "hilum_sector_drop_z", "hilum_mask_gap"):
    v = dte[:, DESCRIPTOR_NAMES.index(name)].numpy()
    print(f"{name}: hilum AUC {roc_auc(hilum, v):.3f}")
    for lo, hi in ((0, 1.5), (1.5, 3.0), (3.0, 99.0)):
        cells = []
        for s0, s1 in ((3, 6), (6, 8), (8, 11), (11, 31)):
            k = (size >= s0) & (size < s1) & (slices >= lo) & (slices < hi)
            cells.append(f"{s0}-{s1} mm: {roc_auc(hilum[k], v[k]):.2f} ({k.sum()})")
        print(f"  slices {lo}-{hi} mm | " + " | ".join(cells))


def inputs(capture, d, extra):
    return torch.cat([d, capture["deep"][:, None], *[e(capture)[:, None] for e in extra]], 1).double()


soft = torch.logit(tr["truth"][:, PROBABILITY].double().clamp(SOFT_LABEL_CLIP, 1 - SOFT_LABEL_CLIP))[:, None]
y = te["label"].numpy()
oracles = {
    "descriptors + deep logit": [],
    "+ true hilum flag": [lambda c: c["truth"][:, HILUM]],
    "+ true necrotic fraction": [lambda c: c["truth"][:, NECROSIS]],
    "+ true slice thickness": [lambda c: torch.log(c["slice_mm"])],
}
print(f"soft-label MLP, {len(dtr)} training nodes, {len(dte)} test nodes (Bayes ceiling "
      f"{roc_auc(y, te['truth'][:, PROBABILITY].numpy()):.3f}):")
for name, extra in oracles.items():
    a, b = inputs(tr, dtr, extra), inputs(te, dte, extra)
    mu, sd = a.mean(0), a.std(0).clamp_min(1e-6)
    p = mlp_on_soft_targets((a - mu) / sd, soft, (b - mu) / sd)
    print(f"  {name:28s} AUC {roc_auc(y, p.numpy()):.4f}")
