"""LymphNodeMTL core: CT + node seeds -> per-node masks and metastasis probabilities.

Pure Python + torch/MONAI/SimpleITK. Never imports slicer, qt or vtk, so the same code runs in
3D Slicer (through the module's Logic) and headless (the `lymphnode-mtl` CLI).
"""

__version__ = "0.1.0"
