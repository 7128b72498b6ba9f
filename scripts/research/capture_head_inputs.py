"""Research probe for issue 4 (not product code): run the bundled model over a manifest's nodes as
evaluation reads them (no augmentation, head pooled under the predicted mask) and save, per node,
the head input, the MLP output, the source CT's coarsest spacing and the phantom truth
(short axis, axis ratio, necrosis, margin, heterogeneity, hilum, P), for offline head probes.
With --patches it also keeps each node's windowed CT patch (float16) and binarised predicted mask,
for descriptor prototypes (hilum_gap_probe.py; about 330 kB a node); --every N reads every Nth case.

    .venv/bin/python scripts/research/capture_head_inputs.py MANIFEST OUT.pt [--patches] [--every N]
"""
import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "LymphNodeMTL"))
from LymphNodeMTLLib.io.training_manifest import read_manifest  # noqa: E402
from LymphNodeMTLLib.network.model_store import load_model  # noqa: E402
from LymphNodeMTLLib.preprocessing.network_input import guidance_channel, window_hu  # noqa: E402
from LymphNodeMTLLib.training.node_patch_dataset import NodePatchDataset, build_patch_cache  # noqa: E402

TRUTH = ("short_axis_mm", "axis_ratio", "necrosis_fraction", "margin_irregularity", "heterogeneity",
         "fatty_hilum", "probability")

parser = argparse.ArgumentParser()
parser.add_argument("manifest")
parser.add_argument("out")
parser.add_argument("--patches", action="store_true")
parser.add_argument("--every", type=int, default=1)
args = parser.parse_args()
manifest, out = args.manifest, args.out
torch.set_num_threads(2)
loaded = load_model(Path(__file__).resolve().parents[2] / "Resources/Models/phantom-demo")
net, pre = loaded.network.eval(), loaded.config.preprocessing
cases = read_manifest(manifest)[:: args.every]
truth = {}
for c in cases:
    t = c.image.parent / "truth.csv"
    if t.exists():
        for row in csv.DictReader(open(t)):
            truth[(c.case_id, row["id"])] = [float(row[k]) for k in TRUTH]
cache = build_patch_cache(cases, pre, 0.0)
heads, deep = [], []


def keep(module, args, _output):  # returns None, so the head's output passes on unchanged
    heads.append(args[0])
    deep.append(module.mlp(args[0]).squeeze(1))


images, masks = [], []


def keep_patch(_module, args_, _output):  # head_input(feats, mask, image)
    masks.append((args_[1] > 0.5).to(torch.uint8))
    images.append(args_[2].to(torch.float16))


patch_hook = net.head_input.register_forward_hook(keep_patch) if args.patches else None
hook = net.head.register_forward_hook(keep)
with torch.no_grad():
    for batch in torch.utils.data.DataLoader(NodePatchDataset(cache, pre, augment=False), batch_size=16):
        img = window_hu(batch["image"], pre)
        net(torch.cat([img, guidance_channel(pre).expand_as(img)], 1), slice_mm=batch["slice_mm"])
hook.remove()
if patch_hook is not None:
    patch_hook.remove()
patches = {"image": torch.cat(images), "mask": torch.cat(masks)} if args.patches else {}
torch.save({
    "head": torch.cat(heads), "deep": torch.cat(deep), "label": cache.labels,
    "slice_mm": cache.slice_mm,  # the source CT's coarsest spacing, as the head reads it
    "truth": torch.tensor([truth.get((c, n), [float("nan")] * len(TRUTH)) for c, n in zip(cache.case_ids, cache.node_ids)]),
    "case_ids": cache.case_ids, "node_ids": cache.node_ids, **patches,
}, out)
print(f"{len(cache.labels)} nodes -> {out}")
