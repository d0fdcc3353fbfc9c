"""unet_pipeline: batch CT segmentation with a 2D U-Net.

The package holds all stage logic; the Snakemake workflow under ``workflow/`` only calls
:mod:`unet_pipeline.stages`. Imports here stay light so that ``import unet_pipeline`` does not
pull in torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
