"""Benchmarks of unet_pipeline against the reference libraries (MONAI), side by side in one process."""
