"""Per-class postprocessing of label volumes: largest component, small components, holes.

Configuration (``postprocess`` section), per class name or ``"*"`` for every class::

    postprocess:
      "*": {min_volume_ml: 0.5}
      liver: {largest_component: true, fill_holes: true}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["postprocess_labels", "POSTPROCESS_KEYS"]

POSTPROCESS_KEYS = ("largest_component", "min_volume_ml", "fill_holes")


def _options(cfg: Mapping, name: str) -> dict:
    opts = dict(cfg.get("*", {}) or {})
    opts.update(cfg.get(name, {}) or {})
    unknown = set(opts) - set(POSTPROCESS_KEYS)
    if unknown:
        raise ValueError(f"postprocess.{name}: unknown option(s) {sorted(unknown)}; allowed {list(POSTPROCESS_KEYS)}")
    return opts


def postprocess_labels(labels: np.ndarray, spacing_mm: Sequence[float], cfg: Mapping, names: Mapping[int, str]) -> np.ndarray:
    """Apply the configured postprocessing class by class.

    Parameters
    ----------
    labels
        ``(Z, Y, X)`` integer label volume.
    spacing_mm
        Voxel size ``(z, y, x)`` in mm (for ``min_volume_ml``).
    cfg
        The ``postprocess`` section.
    names
        Label value -> class name.

    Returns
    -------
    numpy.ndarray
        A new label volume of the same shape and dtype; removed voxels become background.
    """
    out = labels.copy()
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    structure = ndimage.generate_binary_structure(3, 1)
    for value, name in names.items():
        opts = _options(cfg, name)
        if not any(opts.values()):
            continue
        mask = out == value
        if not mask.any():
            continue
        if opts.get("largest_component") or opts.get("min_volume_ml"):
            comp, n = ndimage.label(mask, structure)
            sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
            keep = np.ones(n, bool)
            if opts.get("min_volume_ml"):
                keep &= sizes * voxel_ml >= float(opts["min_volume_ml"])
            if opts.get("largest_component") and n:
                keep &= np.arange(n) == int(np.argmax(sizes))
            remove = mask & ~np.concatenate([[False], keep])[comp]
            out[remove] = 0
            mask &= ~remove
        if opts.get("fill_holes"):
            filled = ndimage.binary_fill_holes(mask)
            out[filled & (out == 0)] = value
    return out
