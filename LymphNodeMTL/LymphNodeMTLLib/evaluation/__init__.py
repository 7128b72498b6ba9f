"""A model run on a manifest and scored per node: AUC with CIs, Dice, HD95, calibration, baselines."""
