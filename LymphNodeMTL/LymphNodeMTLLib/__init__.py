"""LymphNodeMTL core: CT + node seeds -> per-node masks and metastasis probabilities.

Pure Python + torch/MONAI/SimpleITK. Never imports slicer, qt or vtk, so the same code runs in
3D Slicer (through the module's Logic) and headless (the `lymphnode-mtl` CLI).

The Python entry point is `predict_to_folder` (what `lymphnode-mtl predict` runs):

    from LymphNodeMTLLib import predict_to_folder
    results = predict_to_folder("ct.nrrd", "seeds.mrk.json", "results/", device="cpu")

`predict_cohort` runs it over a cohort manifest, one case per row (`lymphnode-mtl predict
--manifest`): resumable, failed cases recorded, worker processes, one shard per machine:

    from LymphNodeMTLLib import predict_cohort
    run = predict_cohort("manifest.csv", "results/", workers=4)   # results/summary.csv

A follow-up CT against a baseline run is `follow_up_to_folder` (what `lymphnode-mtl follow-up`
runs), and `follow_up_cohort` runs it over a manifest of pairs as predict_cohort does
(`lymphnode-mtl follow-up --manifest`). All are loaded on first use, so `import LymphNodeMTLLib`
stays light (no torch, no SimpleITK).
"""

from .core.version import __version__

__all__ = ["__version__", "follow_up_cohort", "follow_up_to_folder", "predict_to_folder", "predict_cohort"]


def __getattr__(name):
    if name == "predict_to_folder":
        from .commands.predict import predict_to_folder

        return predict_to_folder
    if name == "predict_cohort":
        from .commands.predict_cohort import predict_cohort

        return predict_cohort
    if name == "follow_up_to_folder":
        from .commands.follow_up import follow_up_to_folder

        return follow_up_to_folder
    if name == "follow_up_cohort":
        from .commands.follow_up_cohort import follow_up_cohort

        return follow_up_cohort
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
