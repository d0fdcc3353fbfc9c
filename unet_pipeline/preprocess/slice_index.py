"""The 2-D slice store: which classes each slice holds, and the paper's weight maps.

The slice store of a case is a folder with

* ``index.json``: per slice ``z`` the classes present (so the sampler can oversample
  foreground without touching the volumes) and the slice's foreground bounding box;
* ``weightmap.npy`` (optional) float16 ``(Z, Y', X')``: the U-Net paper's pixel weights
  ``w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` per slice, computed once here
  instead of in every training step.

The image and label slices themselves are read from the preprocessed ``image.npy`` and
``label.npy`` through memory maps, so no voxel is stored twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..io.files import load_json, save_json
from ..io.files import load_json
from ..io.npy import NpyWriter


__all__ = ["build_slice_index", "load_slice_index", "stack_neighbours"]

log = logging.getLogger(__name__)


_FLOAT16_MAX = float(np.finfo(np.float16).max)


def build_slice_index(preprocessed_dir: str | Path, out_dir: str | Path, *, num_classes: int,
               weight_map: bool = False, w0: float = 10.0, sigma_px: float = 5.0) -> dict:
    """Build the slice index (and optionally the weight maps) of one preprocessed case.

    Parameters
    ----------
    preprocessed_dir
        Folder with ``label.npy`` uint8 ``(Z, Y, X)`` and ``meta.json``.
    out_dir
        Destination folder (``index.json``, ``weightmap.npy``).
    num_classes
        Number of classes including background.
    weight_map
        Also compute and store the paper's weight map per slice.
    """
    pre = Path(preprocessed_dir)
    out = Path(out_dir)
    meta = load_json(pre / "meta.json")
    label = np.load(pre / "label.npy", mmap_mode="r")
    n_z = label.shape[0]
    classes, boxes = [], []
    for z in range(n_z):
        sl = np.asarray(label[z])
        present = np.bincount(sl.reshape(-1), minlength=num_classes)
        classes.append([int(c) for c in np.flatnonzero(present[1:]) + 1])
        ys, xs = np.nonzero(sl)
        boxes.append([int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1] if ys.size else None)
    if weight_map:
        from .weight_map import unet_weight_map

        with NpyWriter(out / "weightmap.npy", label.shape, np.float16) as writer:
            for z in range(n_z):
                w = unet_weight_map(np.asarray(label[z]), w0=w0, sigma_px=sigma_px)
                # float16 tops out at 65504; a class of a few pixels can weigh more than that.
                writer.write(np.minimum(w, _FLOAT16_MAX)[None].astype(np.float16))
    index = {
        "format": "unet-pipeline-slices/1",
        "case_id": meta["case_id"],
        "shape": list(label.shape),
        "classes_present": classes,
        "foreground_box": boxes,
        "weight_map": bool(weight_map),
    }
    save_json(index, out / "index.json")
    n_fg = sum(1 for c in classes if c)
    log.info("sliced %s: %d slices, %d with foreground", meta["case_id"], n_z, n_fg)
    return index


def load_slice_index(slice_dir: str | Path) -> dict:
    """Read a case's ``index.json``."""
    return load_json(Path(slice_dir) / "index.json")

def stack_neighbours(volume: np.ndarray, z: int, in_slices: int) -> np.ndarray:
    """Slices ``z - k//2 .. z + k//2`` of ``volume`` ``(Z, Y, X)`` as channels ``(k, Y, X)``; edges repeat."""
    half = in_slices // 2
    idx = np.clip(np.arange(z - half, z + half + 1), 0, volume.shape[0] - 1)
    return np.asarray(volume[idx] if in_slices > 1 else volume[z:z + 1])
