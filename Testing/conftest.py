"""Shared pytest fixtures. Each fixture lives in its own module; this file only registers them."""

from slicer_harness import mrml_scene  # noqa: F401  (pytest fixture: fresh wired MRML scene)
