"""Fingerprint the training cases: the image and label statistics every plan is derived from.

This is the one step of planning that reads the images; :mod:`unet_pipeline.plan.planner`
derives the plan from its result without reading them again, so a change of a planning option
(patch size, spacing, intensity scheme, HU window) costs a JSON read, not a pass over the cohort.

The fingerprint (``fingerprint.json``) depends on the training cases, the label map, the slicing
plane and the sampling seed only. It holds, for every intensity scheme the planner offers, what
the scheme needs: HU statistics of a sample of the labelled foreground and of the body (voxels
above :data:`BODY_HU`), the z-score of the foreground clipped to either's 0.5/99.5 percentiles,
and a 1-HU histogram of the foreground sample for any fixed window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.geometry import check_slice_axis, orientation_of
from ..io.images import load_image, read_voxels

__all__ = ["FINGERPRINT_FORMAT", "BODY_HU", "SAMPLES_PER_CASE", "fingerprint_cases", "label_values",
           "clipped_moments"]

#: The format tag of ``fingerprint.json``.
FINGERPRINT_FORMAT = "unet-pipeline-fingerprint/1"
#: Voxels above this many HU are "body" for the ``body`` scheme (air and the scanner table's air gaps are below).
BODY_HU = -500.0
#: HU values sampled per case from the foreground, and as many from the body.
SAMPLES_PER_CASE = 20000


def fingerprint_cases(cases: Sequence[tuple[str, str | Path, str | Path]], labels: Mapping[int, str], *,
                      slice_axis: str | None = None, samples_per_case: int = SAMPLES_PER_CASE,
                      seed: int = 0) -> dict[str, Any]:
    """Read the training cases once and return their statistics (the content of ``fingerprint.json``).

    Parameters
    ----------
    cases
        ``(case_id, image_path, label_path)`` of the *training* cases only; images in HU.
    labels
        Label value -> name (background 0 excluded); the classes counted per case.
    slice_axis
        The dataset's slicing plane (``axial``, ``coronal``, ``sagittal``; None: axial): shapes
        and spacings are given in its canonical ``(z, y, x)`` order.
    samples_per_case, seed
        Up to ``samples_per_case`` foreground and as many body voxels are drawn per case, with a
        generator seeded by ``seed`` (``split.seed``).

    Returns
    -------
    dict
        ``format``, ``slice_axis``, ``labels``, ``training_cases``, ``sampling``, ``intensity``
        (:func:`_intensity_statistics`: HU) and ``cases`` (per case: canonical ``shape``
        ``(Z, Y, X)`` voxels, ``spacing_mm`` ``(z, y, x)``, ``foreground_voxels`` and
        ``class_voxels``, label value -> voxels).
    """
    if not cases:
        raise ValueError("the fingerprint needs at least one training case")
    values = label_values(labels)
    slice_axis = check_slice_axis(slice_axis)
    fg, body, per_case = _sample_cases(cases, slice_axis, values, samples_per_case=samples_per_case, seed=seed)
    return {
        "format": FINGERPRINT_FORMAT,
        "slice_axis": slice_axis,
        "labels": {str(k): str(labels[k]) for k in values},
        "training_cases": [c[0] for c in cases],
        "sampling": {"samples_per_case": int(samples_per_case), "seed": int(seed), "body_hu": BODY_HU},
        "intensity": _intensity_statistics(fg, body),
        "cases": per_case,
    }


def label_values(labels: Mapping) -> list[int]:
    """Sorted label values (background 0 excluded) of a ``{value: name}`` mapping: class ``k`` is the ``k``-th."""
    values = sorted(int(v) for v in labels)
    if not values or values[0] < 1 or len(values) > 255:
        raise ValueError(f"label values must be 1..65535, at most 255 classes besides background; got {values}")
    return values


def clipped_moments(hu: np.ndarray, count: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Mean and standard deviation (HU) of a histogram's values clipped to ``[low, high]`` HU.

    ``hu``: ``(B,)`` bin values (HU); ``count``: ``(B,)`` voxels per bin.
    """
    hu, count = np.asarray(hu, np.float64), np.asarray(count, np.float64)
    clipped = np.clip(hu, low, high)
    mean = float((clipped * count).sum() / count.sum())
    return mean, float(np.sqrt(((clipped - mean) ** 2 * count).sum() / count.sum()))


def _intensity_statistics(fg: np.ndarray, body: np.ndarray) -> dict[str, Any]:
    """The HU statistics of the foreground and body samples (float32 HU, 1-D).

    ``foreground`` and ``body``: ``samples``, ``mean``, ``std``, ``min``, ``max``, ``p00_5``,
    ``p99_5`` of the region's sample (``body`` None when no voxel is above :data:`BODY_HU`), and
    ``clipped_foreground``: ``mean`` and ``std`` of the foreground sample clipped to the region's
    ``[p00_5, p99_5]`` (the z-score of the scheme named after the region). ``foreground_histogram``: ``hu`` (whole HU; values rounded) and ``count``.
    """
    stats: dict[str, Any] = {"body": None}  # None: no voxel above BODY_HU (not CT in HU)
    for name, sample in (("foreground", fg), ("body", body)):
        if not sample.size:
            continue
        lo, hi = np.percentile(sample, [0.5, 99.5])
        clipped = np.clip(fg, lo, hi)
        stats[name] = {"samples": int(sample.size), "mean": float(sample.mean()), "std": float(sample.std()),
                       "min": float(sample.min()), "max": float(sample.max()), "p00_5": float(lo), "p99_5": float(hi),
                       "clipped_foreground": {"mean": float(clipped.mean()), "std": float(clipped.std())}}
    hu, count = np.unique(np.rint(fg).astype(np.int64), return_counts=True)
    stats["foreground_histogram"] = {"hu": hu.tolist(), "count": count.tolist()}
    return stats


def _sample_cases(cases: Sequence[tuple[str, str | Path, str | Path]], slice_axis: str, values: Sequence[int], *,
                  samples_per_case: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """HU samples of the cases' labelled foreground and body, and per-case geometry and class counts.

    Returns ``(foreground float32 HU, body float32 HU, {case_id: shape, spacing_mm, foreground_voxels,
    class_voxels})``.
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
        body = np.flatnonzero(image.reshape(-1) > BODY_HU)
        pick = body if body.size <= samples_per_case else rng.choice(body, samples_per_case, replace=False)
        body_samples.append(image.reshape(-1)[pick].astype(np.float32))
        per_case[case_id] = {"shape": list(orient.canonical_shape), "spacing_mm": list(orient.canonical_spacing),
                             "foreground_voxels": int(fg.size), "class_voxels": _class_voxels(label, values)}
    if not samples:
        raise ValueError("no labelled foreground voxels in any training case: cannot derive CT statistics")
    return np.concatenate(samples), np.concatenate(body_samples), per_case


def _class_voxels(label: np.ndarray, values: Sequence[int]) -> dict[str, int]:
    """Voxels of each declared label value (``str(value)`` -> count) in a label volume (one pass a class)."""
    return {str(v): int(np.count_nonzero(label == v)) for v in values}
