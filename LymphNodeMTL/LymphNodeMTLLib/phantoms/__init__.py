"""Synthetic CT cases with lymph nodes and a known label model (the phantom specification, docs/phantom-spec.md)."""
