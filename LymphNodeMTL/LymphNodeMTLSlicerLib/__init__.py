"""Slicer-side helpers of the LymphNodeMTL module: the results table, dependency installation, the
local inference server process and the HTTP client. Unlike LymphNodeMTLLib, code here may import
slicer, qt and vtk; it holds no numerical work (that runs in the inference server)."""
