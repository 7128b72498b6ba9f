"""Slicer-side helpers of the LymphNodeMTL module: where the inference server is and its process,
the HTTP transports, the lymph-node segments and their tags, the results table, export and
dependency installation. Unlike LymphNodeMTLLib, code here may import slicer, qt and vtk; it holds
no numerical work (that runs in the inference server) and no HTTP steps (those are the Lib's)."""
