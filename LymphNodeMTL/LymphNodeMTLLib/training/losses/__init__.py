"""Training losses: segmentation, the uncertainty-weighted multi-task loss and self-distillation."""
