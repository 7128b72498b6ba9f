"""`lymphnode-mtl phantom`: a phantom training set (CTs, seeds, masks, labels) in manifest format,
written all or nothing into --out."""

from __future__ import annotations

from pathlib import Path

from ..outputs.output_folder import OutputFolder, cleanup_on_signals

MANIFEST = "manifest.csv"


def add_arguments(ph) -> None:
    from .cli import positive_int

    ph.add_argument("--out", required=True, metavar="DIR", help="folder for the data set (created)")
    ph.add_argument("--cases", type=positive_int, required=True, metavar="N", help="number of cases, at least 1")
    ph.add_argument("--seed", type=int, required=True, metavar="S", help="random seed; fixes every case")
    ph.add_argument("--background", metavar="CT", help="real CT whose fat regions receive the nodes")
    ph.add_argument("--overwrite", action="store_true", help="replace a data set already in DIR")


def run(args) -> Path:
    from ..phantoms.dataset_writer import write_phantom_dataset

    out_dir = Path(args.out)
    if args.background:  # read and checked before anything is written
        from ..core.ct_plausibility import check_ct_plausibility
        from ..io.volume_reader import read_volume

        image, geometry, metadata = read_volume(args.background)
        image = check_ct_plausibility(image, geometry, metadata.get("Modality"), Path(args.background).name)
        background = (image, geometry)
    else:
        background = None
    with cleanup_on_signals():
        staged = _write_staged(out_dir, args, background, write_phantom_dataset)
    manifest = out_dir / MANIFEST
    print(f"phantom training set: {manifest} ({staged} files)")
    return manifest


def _write_staged(out_dir: Path, args, background, write_phantom_dataset) -> int:
    """The writer names the case folders itself: the whole set is staged, then checked against
    what --out holds, then published together."""
    folder = OutputFolder(out_dir, [MANIFEST], args.overwrite)
    folder.check()
    with folder:
        write_phantom_dataset(folder.staging, args.cases, args.seed, background=background)
        names = sorted(p.name for p in folder.staging.iterdir())
        existing = [n for n in names if n != MANIFEST and (out_dir / n).exists()]
        if existing and not args.overwrite:
            from ..core.errors import InputError

            raise InputError(f"{out_dir} already holds {', '.join(existing[:3])}; choose another --out "
                             "or pass --overwrite")
        folder.publish(names)
    return len(names)
