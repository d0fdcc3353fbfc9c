"""Per-case preprocessing with the plan (:mod:`unet_pipeline.plan.planner` makes the plan).

Preprocessing turns an imported NIfTI case into the arrays every later stage works on:

* canonical orientation ``(z, y, x)`` by exact permutation and flipping, ``z`` along the
  plan's ``slice_axis`` (one plane for the whole dataset, axial by default;
  :mod:`unet_pipeline.io.geometry`);
* in-plane resampling of every slice to the plan's spacing (bilinear with antialiasing for the
  image; nearest-exact for the label, which keeps label values crisp and costs nothing; the
  reverse direction, in :mod:`unet_pipeline.infer.reassembly`, resamples softmax probabilities
  bilinearly and then takes the argmax, i.e. one-hot linear interpolation);
* CT normalisation: clip the HU (plan ``intensity`` scheme: the 0.5/99.5 percentiles of the
  training foreground, of the whole body, or a fixed window), then z-score with the clipped
  training foreground's mean and standard deviation.

Outputs per case (``out_dir``): ``image.npy`` float32 ``(Z, Y', X')`` (z-scores),
``label.npy`` uint8 ``(Z, Y', X')`` (when a label is given) and ``meta.json`` with everything
needed to map predictions back onto the input grid. Slices are processed in chunks, so peak
memory is the stored volume plus a few chunks; no float64 copy of a volume is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CaseError
from ..io.files import save_json
from ..io.geometry import Orientation, orientation_of, resampled_size
from ..io.images import load_image, read_voxels
from ..io.npy import NpyWriter
from ..plan.plan import Plan

__all__ = ["air_value", "preprocess_image", "preprocess_label", "resample_slices", "normalise", "CHUNK_SLICES"]

log = logging.getLogger(__name__)


#: Slices processed at once; bounds the working memory to a few slabs.
CHUNK_SLICES = 16


def resample_slices(slices: np.ndarray | torch.Tensor, size: tuple[int, int], *, mode: str) -> torch.Tensor:
    """Resample a stack of 2-D slices in-plane.

    Parameters
    ----------
    slices
        ``(N, Y, X)`` or ``(N, C, Y, X)`` array (float for ``"linear"``, integer labels for
        ``"nearest"``).
    size
        Output in-plane size ``(Y', X')``; the field of view is kept (pixel edges align).
    mode
        ``"linear"`` (bilinear; antialiased when shrinking) or ``"nearest"`` (nearest-exact,
        pixel centres mapped consistently with ``"linear"``).

    Returns
    -------
    torch.Tensor
        Same leading dims with in-plane size ``size``; float32 for linear, the input dtype for nearest.
    """
    t = torch.as_tensor(slices)
    squeeze = t.ndim == 3
    if squeeze:
        t = t[:, None]
    if tuple(t.shape[-2:]) == tuple(size):
        out = t
    elif mode == "linear":
        shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
        out = F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    elif mode == "nearest":
        out = F.interpolate(t.to(torch.float32), size=size, mode="nearest-exact").to(t.dtype)
    else:
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    return out[:, 0] if squeeze else out


def normalise(x: np.ndarray | torch.Tensor, intensity: Mapping[str, float]) -> np.ndarray | torch.Tensor:
    """Clip HU to ``[p00_5, p99_5]`` and z-score with ``mean``/``std`` (from the plan). float32 in, float32 out."""
    lo, hi = float(intensity["p00_5"]), float(intensity["p99_5"])
    mean, std = float(intensity["mean"]), max(float(intensity["std"]), 1e-6)
    if isinstance(x, torch.Tensor):
        return (x.clamp(lo, hi) - mean) / std
    return ((np.clip(x, lo, hi) - mean) / std).astype(np.float32, copy=False)


def air_value(intensity: Mapping[str, float]) -> float:
    """The normalised value of air (``p00_5`` HU after :func:`normalise`): what tiles and patches are
    padded with beyond the image."""
    return (float(intensity["p00_5"]) - float(intensity["mean"])) / max(float(intensity["std"]), 1e-6)


def preprocess_image(image_path: str | Path, plan: Plan | Mapping, out_dir: str | Path, *, case_id: str) -> dict:
    """Preprocess one image into ``out_dir/image.npy`` and ``out_dir/meta.json``.

    The slices are cut along the plan's ``slice_axis`` whatever the case's own spacing (a plan
    or model without one: axial). Returns the ``meta`` dict written to ``meta.json``:
    orientation, canonical and resampled shapes and spacings, the source affine, and the
    intensity statistics applied.
    """
    out_dir = Path(out_dir)
    plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    orient, img = orientation_of(image_path, plan.slice_axis)
    stored = read_voxels(img, image_path)
    canonical = orient.to_canonical(stored)  # view, no copy
    n_z, n_y, n_x = canonical.shape
    spacing = orient.canonical_spacing
    out_yx = resampled_size((n_y, n_x), spacing[1:], plan.target_spacing_mm)
    intensity = plan.intensity.to_dict()
    with NpyWriter(out_dir / "image.npy", (n_z, *out_yx), np.float32) as writer:
        for z0 in range(0, n_z, CHUNK_SLICES):
            chunk = np.asarray(canonical[z0:z0 + CHUNK_SLICES], dtype=np.float32)
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0)
            res = resample_slices(chunk, out_yx, mode="linear")
            writer.write(normalise(res, intensity).numpy())
    effective = [spacing[1] * n_y / out_yx[0], spacing[2] * n_x / out_yx[1]]
    meta = {
        "format": "unet-pipeline-preprocessed/1",
        "case_id": case_id,
        "image": str(image_path),
        "orientation": orient.to_dict(),
        "slice_axis": plan.slice_axis,
        "slice_world_axis": orient.slice_world_axis,
        "canonical_shape": [n_z, n_y, n_x],
        "canonical_spacing_mm": list(spacing),
        "resampled_shape": [n_z, *out_yx],
        "resampled_spacing_mm": [spacing[0], *effective],
        "affine": np.asarray(img.affine).tolist(),
        "stored_shape": list(img.shape),
        "intensity": dict(intensity),
        "label_values": plan.label_values or None,
    }
    save_json(meta, out_dir / "meta.json")
    log.info("preprocessed %s: canonical %s at %s mm -> %s at %s mm", case_id, list(canonical.shape),
             [round(s, 3) for s in spacing], meta["resampled_shape"], [round(s, 3) for s in meta["resampled_spacing_mm"]])
    return meta


def _index_lookup(values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(lut, declared)``: ``lut[v]`` = class index of label value ``v`` (uint8), ``declared[v]`` = v is 0 or a class."""
    lut = np.zeros(max(values) + 1, np.uint8)
    lut[np.asarray(values)] = np.arange(1, len(values) + 1)
    declared = np.zeros(max(values) + 1, bool)
    declared[0] = True
    declared[np.asarray(values)] = True
    return lut, declared


def _values_to_indices(chunk: np.ndarray, lut: np.ndarray, declared: np.ndarray, path: str | Path) -> np.ndarray:
    """Label values of a chunk -> class indices (uint8); a value that is not a declared class is an error."""
    ints = np.asarray(chunk).astype(np.intp, copy=False)
    inside = (ints >= 0) & (ints < len(lut))
    ok = inside.copy()
    ok[inside] = declared[ints[inside]]
    if not ok.all():
        found = sorted(set(np.unique(ints[~ok]).tolist()))
        raise CaseError(path, f"label values {found[:10]} are not declared classes {np.flatnonzero(declared)[1:].tolist()}")
    return lut[ints]


def preprocess_label(label_path: str | Path, meta: Mapping, out_npy: str | Path) -> None:
    """Write the label of a preprocessed case as uint8 ``(Z, Y', X')`` on the preprocessed grid.

    Uses the orientation and resampled shape recorded in ``meta`` by :func:`preprocess_image`;
    in-plane resampling is nearest-exact. Label values become class indices: the ``k``-th value
    of ``meta["label_values"]`` is written as ``k`` (background stays 0), so label maps with gaps
    (``{1: spleen, 5: liver}``) train a network with consecutive classes.
    """
    orient = Orientation.from_dict(meta["orientation"])
    stored = read_voxels(load_image(label_path), label_path)
    if tuple(stored.shape) != tuple(orient.stored_shape):
        raise ValueError(f"{label_path}: label shape {stored.shape} differs from the image's {orient.stored_shape}")
    values = meta.get("label_values")
    lookup = _index_lookup(values) if values and values != list(range(1, len(values) + 1)) else None
    canonical = orient.to_canonical(stored)
    n_z = canonical.shape[0]
    out_yx = tuple(meta["resampled_shape"][1:])
    with NpyWriter(out_npy, (n_z, *out_yx), np.uint8) as writer:
        for z0 in range(0, n_z, CHUNK_SLICES):
            chunk = np.asarray(canonical[z0:z0 + CHUNK_SLICES])
            chunk = _values_to_indices(chunk, *lookup, label_path) if lookup else chunk.astype(np.uint8)
            writer.write(resample_slices(torch.from_numpy(chunk), out_yx, mode="nearest").numpy())
