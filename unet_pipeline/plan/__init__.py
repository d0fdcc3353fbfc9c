"""The plan: one fingerprint of the training cases (read once), then cheap decisions: slice axis,
spacing, intensity and patch size (:class:`~unet_pipeline.plan.plan.Plan`)."""
