"""Training: slice sampling, augmentation, losses, the loop, postprocessing chosen on held-out cases, curves."""
