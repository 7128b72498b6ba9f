"""The engine's version: written into run.json, DICOM SEG and `lymphnode-mtl --version`."""

__version__ = "0.1.0"
