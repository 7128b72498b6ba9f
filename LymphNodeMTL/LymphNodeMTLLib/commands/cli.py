"""`lymphnode-mtl`: the headless engine from the command line.

Every user error ends as one line on stderr and exit code 2; outputs are written only when the
whole run succeeded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..core.errors import InputError

DESCRIPTION = """\
LymphNodeMTL: lymph-node masks and metastasis probabilities from a CT and one seed per node.

  predict   segment and classify the nodes of one CT (the main job)
  demo      make a synthetic phantom CT with seeds and run predict on it
  phantom   write a phantom training set (CTs, seeds, masks, labels) in manifest format
  train     train a model folder from a training manifest
  evaluate  score a model folder on a manifest (AUC, Dice, calibration, plots)
  ablate    train the published components' variants and compare them in one table

The bundled model is trained on synthetic phantoms: a demonstration, not a clinical model.
Run `lymphnode-mtl COMMAND --help` for each command's options.
"""

PREDICT_EPILOG = """\
inputs:
  CT      a file (.nrrd .nhdr .nii .nii.gz .mha .mhd) or a folder holding one DICOM series
  seeds   a 3D Slicer markups file (.mrk.json; each point's label is the node id) or a CSV with
          header id,r,a,s (RAS mm, Slicer's convention) or id,l,p,s (LPS mm, DICOM's convention)

outputs in DIR:
  nodes.seg.nrrd  one segment per seed, "LN <id>", opens in 3D Slicer as a segmentation
  nodes.csv       one row per node: probability, label, volume, short/long axis, mean/SD HU
  run.json        model id, weights hash, software versions, device and timings
  nodes.dcm       with --dicom-seg: DICOM SEG, one segment per node, referencing the CT series
  report.png      with --report: per-node axial/coronal/sagittal thumbnails, probability, axes
  report.html     with --report: the same as one self-contained web page

example:
  lymphnode-mtl predict --volume ct.nrrd --seeds seeds.mrk.json --out results/
"""


def _add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="model folder (default: the bundled demo model)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="where the network runs; auto picks a GPU when there is one (default auto)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="nodes per network pass (default: 64 on GPU, 8 on CPU)")
    p.add_argument("--no-uncertainty", action="store_true",
                   help="skip the test-time augmentation passes (mask agreement, probability "
                        "interval): about 5x faster on the CPU")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results in DIR (they may hold edited masks; off by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lymphnode-mtl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("predict", help="segment and classify the nodes of one CT",
                       epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", required=True, metavar="CT", help="CT file or DICOM series folder")
    p.add_argument("--series-uid", metavar="UID", help="which series, when the DICOM folder holds several")
    p.add_argument("--seeds", required=True, metavar="SEEDS", help=".mrk.json or .csv seed file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results (created)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write DIR/nodes.dcm, a DICOM SEG (for PACS and DICOM viewers)")
    p.add_argument("--report", action="store_true",
                   help="also write DIR/report.png and DIR/report.html for review")
    _add_predict_args(p)

    d = sub.add_parser("demo", help="run predict on a synthetic phantom CT")
    d.add_argument("--out", default="demo-output", metavar="DIR", help="output folder (default demo-output)")
    d.add_argument("--seed", type=int, default=2026, help="random seed of the phantom (default 2026)")
    d.add_argument("--nodes", type=int, default=8, help="number of nodes in the phantom (default 8)")
    _add_predict_args(d)

    ph = sub.add_parser("phantom", help="write a phantom training set in manifest format")
    ph.add_argument("--out", required=True, metavar="DIR")
    ph.add_argument("--cases", type=int, required=True, metavar="N")
    ph.add_argument("--seed", type=int, required=True, metavar="S")
    ph.add_argument("--background", metavar="CT", help="real CT whose fat regions receive the nodes")

    t = sub.add_parser("train", help="train a model folder from a training manifest")
    t.add_argument("--manifest", required=True, metavar="M", help="manifest.csv (see README)")
    t.add_argument("--out", required=True, metavar="MODELDIR")
    t.add_argument("--config", metavar="C", help="training config JSON (see TrainConfig)")
    t.add_argument("--resume", action="store_true", help="continue from MODELDIR/checkpoint.pt")

    e = sub.add_parser("evaluate", help="score a model on a manifest with per-node truth")
    e.add_argument("--model", metavar="MODELDIR", help="model folder (default: the bundled demo model)")
    e.add_argument("--manifest", required=True, metavar="M")
    e.add_argument("--out", required=True, metavar="DIR", help="folder for predictions.csv and the report")
    e.add_argument("--device", default="auto", metavar="auto|cpu|cuda")

    from .ablate import add_ablate_parser

    add_ablate_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if args.command == "predict":
            from .predict import run_predict

            run_predict(args)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(args)
        elif args.command == "phantom":
            from ..phantoms.dataset_writer import write_phantom_dataset

            manifest = write_phantom_dataset(Path(args.out), args.cases, args.seed, background=args.background)
            print(f"phantom training set: {manifest}")
        elif args.command == "train":
            from .train import run_train

            run_train(args)
        elif args.command == "evaluate":
            from .evaluate import run_evaluate

            run_evaluate(args)
        elif args.command == "ablate":
            from .ablate import run_ablate

            run_ablate(args)
    except InputError as e:
        print(f"lymphnode-mtl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lymphnode-mtl: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
