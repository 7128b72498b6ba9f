"""Every published component trained on the same data and budget, scored side by side."""
