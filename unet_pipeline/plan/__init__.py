"""The plan: one fingerprint of the training cases fixes slice axis, spacing, intensity and patch size."""
