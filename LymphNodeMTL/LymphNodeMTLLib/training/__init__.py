"""Manifest -> cached node patches -> multi-task network -> calibrated model folder."""
