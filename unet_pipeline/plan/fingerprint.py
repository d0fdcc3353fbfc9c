"""Fingerprint the training cases -> plan (slice axis, spacing, intensity scheme, classes, patch size)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io.geometry import check_slice_axis, orientation_of, resampled_size
from ..io.images import load_image, read_voxels

__all__ = ["make_plan"]


#: Clipping schemes of the plan (see :func:`make_plan`); the z-score is the training foreground's in each.
INTENSITY_SCHEMES = ("foreground", "body", "window")
#: Voxels above this many HU are "body" for the ``body`` scheme (air and the scanner table's air gaps are below).
BODY_HU = -500.0


def make_plan(cases: Sequence[tuple[str, str | Path, str | Path]], labels: Mapping[int, str], *,
              target_spacing_mm: Sequence[float] | None = None, patch_size: Sequence[int] | None = None,
              max_patch: int = 256, max_patch_mm: float | None = 192.0, divisor: int = 16,
              samples_per_case: int = 20000, seed: int = 0,
              slice_axis: str | None = None, intensity: str = "body",
              hu_window: Sequence[float] | None = None) -> dict:
    """Fingerprint the training cases and derive the plan.

    Parameters
    ----------
    cases
        ``(case_id, image_path, label_path)`` of the *training* cases only.
    labels
        Label value -> name (background 0 excluded). Values need not be consecutive: class index
        ``k`` (1..K) of the network stands for the ``k``-th smallest value (``label_values``).
    target_spacing_mm
        In-plane ``(y, x)`` spacing in mm; default the median in-plane spacing of the cases.
    patch_size
        Training/inference tile ``(Y, X)`` in pixels; default the median resampled slice size
        rounded up to a multiple of ``divisor``, at most ``max_patch`` pixels and at most
        ``max_patch_mm`` millimetres (None: no limit in mm; see :func:`_median_patch`).
    slice_axis
        The dataset's slicing plane (``axial``, ``coronal``, ``sagittal``; None: axial). Every
        case, in training and in prediction with the model, is sliced along it.
    intensity
        How the HU are clipped before the z-score (mean and std of the clipped training
        foreground in every scheme): ``"body"`` (the default, measured best on real CT by
        ``bench/bench_realdata.py``: the 0.5 and 99.5 percentiles of every voxel above -500 HU,
        i.e. the whole body, so contrast-enhanced organs, bone and fat keep their contrast),
        ``"foreground"`` (nnU-Net's CT scheme: the 0.5 and 99.5 percentiles of the labelled
        foreground) or ``"window"`` (the fixed ``hu_window``).
    hu_window
        ``(low, high)`` HU of the ``"window"`` scheme.

    Returns
    -------
    dict
        JSON-serialisable plan: ``slice_axis``, ``labels``, ``num_classes``, ``target_spacing_mm`` (y, x),
        ``patch_size`` (y, x), ``intensity`` (``p00_5``, ``p99_5``, ``mean``, ``std`` in HU over
        labelled foreground), ``cases`` (per-case canonical shape and spacing).
    """
    if not cases:
        raise ValueError("make_plan needs at least one training case")
    values = label_values(labels)
    slice_axis = check_slice_axis(slice_axis)
    _check_intensity(intensity, hu_window)
    fg_values, body_values, per_case = _sample_cases(cases, slice_axis, intensity=intensity,
                                                     samples_per_case=samples_per_case, seed=seed)
    spacings = np.array([c["spacing_mm"] for c in per_case.values()])
    shapes = np.array([c["shape"] for c in per_case.values()])
    if target_spacing_mm is None:
        target = [float(np.median(spacings[:, 1])), float(np.median(spacings[:, 2]))]
    else:
        target = [float(s) for s in target_spacing_mm]
    if patch_size is None:
        patch = _median_patch(shapes, spacings, target, max_patch=max_patch, max_patch_mm=max_patch_mm,
                              divisor=divisor)
    else:
        patch = [int(p) for p in patch_size]
    if intensity == "window":
        lo, hi = (float(v) for v in hu_window)
    else:
        lo, hi = np.percentile(body_values if intensity == "body" else fg_values, [0.5, 99.5])
    clipped = np.clip(fg_values, lo, hi)
    return {
        "format": "unet-pipeline-plan/1",
        "slice_axis": slice_axis,
        "labels": {str(k): str(labels[k]) for k in values},
        "label_values": values,
        "num_classes": len(values) + 1,
        "target_spacing_mm": target,
        "patch_size": patch,
        "intensity": {"p00_5": float(lo), "p99_5": float(hi), "mean": float(clipped.mean()), "std": float(clipped.std()),
                      "scheme": intensity},
        "median_slice_thickness_mm": float(np.median(spacings[:, 0])),
        "training_cases": [c[0] for c in cases],
        "cases": per_case,
    }


def label_values(labels: Mapping) -> list[int]:
    """Sorted label values (background 0 excluded) of a ``{value: name}`` mapping: class ``k`` is the ``k``-th."""
    values = sorted(int(v) for v in labels)
    if not values or values[0] < 1 or len(values) > 255:
        raise ValueError(f"label values must be 1..65535, at most 255 classes besides background; got {values}")
    return values


def _check_intensity(intensity: str, hu_window: Sequence[float] | None) -> None:
    """Raise ``ValueError`` naming ``plan.intensity`` / ``plan.hu_window`` when they are unusable."""
    if intensity not in INTENSITY_SCHEMES:
        raise ValueError(f"plan.intensity must be one of {list(INTENSITY_SCHEMES)}, got {intensity!r}")
    if intensity == "window" and (hu_window is None or len(hu_window) != 2 or not hu_window[0] < hu_window[1]):
        raise ValueError(f"plan.hu_window must be [low, high] HU with low < high for plan.intensity: window, "
                         f"got {hu_window!r}")


def _sample_cases(cases: Sequence[tuple[str, str | Path, str | Path]], slice_axis: str, *, intensity: str,
                  samples_per_case: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """HU samples of the cases' labelled foreground (and body, for the ``body`` scheme), and per-case geometry.

    Returns ``(foreground float32 HU, body float32 HU or None, {case_id: shape, spacing_mm, foreground_voxels})``.
    """
    rng = np.random.default_rng(seed)
    samples, body_samples, per_case = [], [], {}
    for case_id, image_path, label_path in cases:
        orient, img = orientation_of(image_path, slice_axis)
        image = read_voxels(img, image_path)
        label = read_voxels(load_image(label_path), label_path)
        fg = np.flatnonzero(label.reshape(-1) > 0)
        if fg.size:
            pick = fg if fg.size <= samples_per_case else rng.choice(fg, samples_per_case, replace=False)
            samples.append(image.reshape(-1)[pick].astype(np.float32))
        if intensity == "body":
            body = np.flatnonzero(image.reshape(-1) > BODY_HU)
            pick = body if body.size <= samples_per_case else rng.choice(body, samples_per_case, replace=False)
            body_samples.append(image.reshape(-1)[pick].astype(np.float32))
        per_case[case_id] = {"shape": list(orient.canonical_shape), "spacing_mm": list(orient.canonical_spacing),
                             "foreground_voxels": int(fg.size)}
    if not samples:
        raise ValueError("no labelled foreground voxels in any training case: cannot derive CT statistics")
    return np.concatenate(samples), np.concatenate(body_samples) if body_samples else None, per_case


def _median_patch(shapes: np.ndarray, spacings: np.ndarray, target: Sequence[float], *, max_patch: int,
                  max_patch_mm: float | None, divisor: int) -> list[int]:
    """The median resampled slice size ``(Y, X)``, rounded up to a multiple of ``divisor``, at most
    ``max_patch`` px and ``max_patch_mm`` mm (rounded down to a multiple of ``divisor``, >= 2 of them).

    The limit in mm was chosen on real CT by ``bench/bench_realdata.py``: with 10 minutes of CPU
    training on the 3 mm scan, patches of 192 mm (64 px) gave the other scanner's liver a Dice of
    0.908 against 0.891 with the whole slice (112 x 128 px), in 6,719 steps against 1,849, and the
    venous phase the same or better; at 0.8 mm it allows 240 px, close to ``max_patch`` (256).
    """
    sizes = np.array([resampled_size(sh[1:], sp[1:], target) for sh, sp in zip(shapes, spacings)])
    med = np.median(sizes, axis=0)
    caps = [max_patch] * 2
    if max_patch_mm:
        caps = [min(max_patch, max(2 * divisor, divisor * int(max_patch_mm / s / divisor))) for s in target]
    return [int(min(cap, divisor * math.ceil(m / divisor))) for cap, m in zip(caps, med)]
