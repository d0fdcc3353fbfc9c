"""The plan from a fingerprint and the planning options: cheap decisions, no image read.

:func:`plan_from_fingerprint` turns ``fingerprint.json`` (:mod:`unet_pipeline.plan.fingerprint`)
and :class:`PlanOptions` (the config's ``plan`` section but ``slice_axis``, which the fingerprint
fixes) into a :class:`~unet_pipeline.plan.plan.Plan`: the in-plane spacing, the intensity
normalisation of the chosen scheme and the patch size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.geometry import resampled_size
from .fingerprint import SAMPLES_PER_CASE, clipped_moments, fingerprint_cases
from .plan import PLAN_FORMAT, Plan

__all__ = ["INTENSITY_SCHEMES", "PlanOptions", "plan_from_fingerprint", "make_plan"]

#: Clipping schemes of the plan (see :class:`PlanOptions`); the z-score is the training foreground's in each.
INTENSITY_SCHEMES = ("foreground", "body", "window")


@dataclass(frozen=True)
class PlanOptions:
    """The planning options (the config's ``plan`` section but ``slice_axis``).

    Attributes
    ----------
    target_spacing_mm
        In-plane ``(y, x)`` spacing in mm; None: the median in-plane spacing of the cases.
    patch_size
        Training/inference tile ``(Y, X)`` in pixels; None: the median resampled slice size
        rounded up to a multiple of ``divisor``, at most ``max_patch`` pixels and at most
        ``max_patch_mm`` millimetres (None: no limit in mm; see :func:`_median_patch`).
    intensity
        How the HU are clipped before the z-score (mean and std of the clipped training
        foreground in every scheme): ``"body"`` (the default, measured best on real CT by
        ``bench/bench_realdata.py``: the 0.5 and 99.5 percentiles of every voxel above -500 HU,
        i.e. the whole body, so contrast-enhanced organs, bone and fat keep their contrast),
        ``"foreground"`` (nnU-Net's CT scheme: the 0.5 and 99.5 percentiles of the labelled
        foreground) or ``"window"`` (the fixed ``hu_window``).
    hu_window
        ``(low, high)`` HU of the ``"window"`` scheme.
    """

    target_spacing_mm: Sequence[float] | None = None
    patch_size: Sequence[int] | None = None
    max_patch: int = 256
    max_patch_mm: float | None = 192.0
    divisor: int = 16
    intensity: str = "body"
    hu_window: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_SCHEMES:
            raise ValueError(f"plan.intensity must be one of {list(INTENSITY_SCHEMES)}, got {self.intensity!r}")
        window = self.hu_window
        if self.intensity == "window" and (window is None or len(window) != 2 or not window[0] < window[1]):
            raise ValueError(f"plan.hu_window must be [low, high] HU with low < high for plan.intensity: window, "
                             f"got {window!r}")


def plan_from_fingerprint(fingerprint: Mapping[str, Any], options: PlanOptions) -> Plan:
    """Derive the plan from a fingerprint (:func:`~unet_pipeline.plan.fingerprint.fingerprint_cases`).

    Returns
    -------
    Plan
        Slicing plane, labels and cases as fingerprinted; ``target_spacing_mm`` (y, x),
        ``patch_size`` (y, x) and ``intensity`` (``p00_5``, ``p99_5``, ``mean``, ``std`` in HU,
        ``scheme``) as ``options`` decide.
    """
    per_case = fingerprint["cases"]
    spacings = np.array([c["spacing_mm"] for c in per_case.values()])
    shapes = np.array([c["shape"] for c in per_case.values()])
    if options.target_spacing_mm is None:
        target = [float(np.median(spacings[:, 1])), float(np.median(spacings[:, 2]))]
    else:
        target = [float(s) for s in options.target_spacing_mm]
    if options.patch_size is None:
        patch = _median_patch(shapes, spacings, target, max_patch=options.max_patch,
                              max_patch_mm=options.max_patch_mm, divisor=options.divisor)
    else:
        patch = [int(p) for p in options.patch_size]
    labels = fingerprint["labels"]
    return Plan.from_dict({
        "format": PLAN_FORMAT,
        "slice_axis": fingerprint["slice_axis"],
        "labels": labels,
        "num_classes": len(labels) + 1,
        "target_spacing_mm": target,
        "patch_size": patch,
        "intensity": _normalisation(fingerprint["intensity"], options),
        "median_slice_thickness_mm": float(np.median(spacings[:, 0])),
        "training_cases": fingerprint["training_cases"],
        "cases": {cid: {k: c[k] for k in ("shape", "spacing_mm", "foreground_voxels")} for cid, c in per_case.items()},
    })


def make_plan(cases: Sequence[tuple[str, str | Path, str | Path]], labels: Mapping[int, str], *,
              slice_axis: str | None = None, seed: int = 0, samples_per_case: int = SAMPLES_PER_CASE,
              **options: Any) -> dict:
    """Fingerprint ``(case_id, image_path, label_path)`` training cases and derive the plan in one
    call; ``options`` are those of :class:`PlanOptions`. Returns ``plan.json``'s content."""
    checked = PlanOptions(**options)  # unusable options fail before any image is read
    fingerprint = fingerprint_cases(cases, labels, slice_axis=slice_axis, samples_per_case=samples_per_case,
                                    seed=seed)
    return plan_from_fingerprint(fingerprint, checked).to_dict()


def _normalisation(stats: Mapping[str, Any], options: PlanOptions) -> dict[str, Any]:
    """The clip range and z-score (HU) of ``options.intensity`` from the fingerprint's intensity statistics."""
    if options.intensity == "window":
        lo, hi = (float(v) for v in options.hu_window)
        hist = stats["foreground_histogram"]
        mean, std = clipped_moments(np.asarray(hist["hu"]), np.asarray(hist["count"]), lo, hi)
    else:
        region = stats[options.intensity]
        if region is None:
            raise ValueError(f"plan.intensity: {options.intensity}: no voxel of the training cases is above -500 HU; "
                             "are the images CT in HU? Choose plan.intensity: foreground or window")
        lo, hi = region["p00_5"], region["p99_5"]
        mean, std = region["clipped_foreground"]["mean"], region["clipped_foreground"]["std"]
    return {"p00_5": float(lo), "p99_5": float(hi), "mean": float(mean), "std": float(std),
            "scheme": options.intensity}


def _median_patch(shapes: np.ndarray, spacings: np.ndarray, target: Sequence[float], *, max_patch: int,
                  max_patch_mm: float | None, divisor: int) -> list[int]:
    """The median resampled slice size ``(Y, X)``, rounded up to a multiple of ``divisor``, at most
    ``max_patch`` px and ``max_patch_mm`` mm (rounded down to a multiple of ``divisor``, >= 2 of them).

    ``shapes``: ``(N, 3)`` canonical ``(Z, Y, X)`` voxels; ``spacings``: ``(N, 3)`` mm; ``target``: ``(y, x)`` mm.

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
