"""Research probe for issue 4 (not product code): run the bundled model over a manifest's nodes as
evaluation reads them (no augmentation, head pooled under the predicted mask) and save, per node,
the head input, the MLP output, the source CT's coarsest spacing and the phantom truth
(short axis, axis ratio, necrosis, margin, heterogeneity, hilum, P), for offline head probes.

    .venv/bin/python scripts/research/capture_head_inputs.py MANIFEST OUT.pt
"""
import csv
import sys
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "LymphNodeMTL"))
from LymphNodeMTLLib.model_store import load_model  # noqa: E402
from LymphNodeMTLLib.node_patch_dataset import NodePatchDataset, build_patch_cache  # noqa: E402
from LymphNodeMTLLib.preprocessing import guidance_channel, window_hu  # noqa: E402
from LymphNodeMTLLib.training_manifest import read_manifest  # noqa: E402

TRUTH = ("short_axis_mm", "axis_ratio", "necrosis_fraction", "margin_irregularity", "heterogeneity",
         "fatty_hilum", "probability")

manifest, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
loaded = load_model(Path(__file__).resolve().parents[2] / "Resources/Models/phantom-demo")
net, pre = loaded.network.eval(), loaded.config.preprocessing
cases = read_manifest(manifest)
truth, slice_mm = {}, {}
for c in cases:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(c.image))
    reader.ReadImageInformation()
    slice_mm[c.case_id] = max(reader.GetSpacing())
    t = c.image.parent / "truth.csv"
    if t.exists():
        for row in csv.DictReader(open(t)):
            truth[(c.case_id, row["id"])] = [float(row[k]) for k in TRUTH]
cache = build_patch_cache(cases, pre, 0.0)
heads, deep = [], []


def keep(module, args, _output):  # returns None, so the head's output passes on unchanged
    heads.append(args[0])
    deep.append(module.mlp(args[0]).squeeze(1))


hook = net.head.register_forward_hook(keep)
with torch.no_grad():
    for batch in torch.utils.data.DataLoader(NodePatchDataset(cache, pre, augment=False), batch_size=16):
        img = window_hu(batch["image"], pre)
        net(torch.cat([img, guidance_channel(pre).expand_as(img)], 1))
hook.remove()
torch.save({
    "head": torch.cat(heads), "deep": torch.cat(deep), "label": cache.labels,
    "slice_mm": torch.tensor([slice_mm[c] for c in cache.case_ids]),
    "truth": torch.tensor([truth.get((c, n), [float("nan")] * len(TRUTH)) for c, n in zip(cache.case_ids, cache.node_ids)]),
    "case_ids": cache.case_ids,
}, out)
print(f"{len(cache.labels)} nodes -> {out}")
