"""Benchmark: per-class surface metrics (unet_pipeline.evaluate.metrics) vs MONAI's, same masks, one process.

A 512 x 512 x 300 pair of label volumes (quick: 256 x 256 x 100) with 3 organ-like classes
(smoothly deformed ellipsoids; the prediction is the reference shifted and eroded/dilated a
little), spacing 0.8 x 0.8 x 2.5 mm. Both compute, per class, Dice, HD95, ASSD (symmetric) and
NSD at 2 mm:

* ours: :func:`unet_pipeline.evaluate.metrics.case_metrics` (all of them, plus IoU, HD, volumes, ...);
* MONAI: ``compute_dice``, ``compute_hausdorff_distance(percentile=95)``,
  ``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` on one-hot
  tensors, with the same spacing.

They run alternately after a warm-up; medians over the repeats are reported with the speedup
(MONAI / ours) and the largest relative difference of the values (must be <= 1e-4).
Run ``python bench/bench_metrics.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from scipy import ndimage

from unet_pipeline.evaluate.metrics import case_metrics

__all__ = ["run", "check"]

SPACING = (0.8, 0.8, 2.5)
LABELS = {1: "liver", 2: "spleen", 3: "kidney"}
TOLERANCE_MM = 2.0
TARGET_SPEEDUP = 5.0


def _volumes(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(reference, prediction)`` uint8 label volumes of ``shape`` (Y, X, Z)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    ref = np.zeros(shape, np.uint8)
    for value, (centre, radii) in zip(LABELS, [((0.45, 0.35, 0.5), (0.18, 0.15, 0.3)),
                                               ((0.5, 0.72, 0.55), (0.08, 0.07, 0.2)),
                                               ((0.7, 0.5, 0.4), (0.06, 0.05, 0.15))]):
        d = sum(((g - c * n) / (r * n)) ** 2 for g, c, r, n in zip(grid, centre, radii, shape))
        ref[d < 1.0] = value
    pred = np.zeros_like(ref)
    for value in LABELS:
        mask = ndimage.shift(ref == value, (2, -1, 1), order=0)
        mask = ndimage.binary_dilation(mask) if value % 2 else ndimage.binary_erosion(mask)
        pred[mask] = value
    noise = rng.random(shape) < 1e-5  # a few stray voxels far from the organs
    pred[noise & (pred == 0)] = 3
    return ref, pred


def _ours(pred: np.ndarray, ref: np.ndarray) -> tuple[float, dict]:
    start = time.perf_counter()
    rows = case_metrics(pred, ref, SPACING, LABELS, TOLERANCE_MM)
    seconds = time.perf_counter() - start
    return seconds, {r["label"]: [r["dice"], r["hd95_mm"], r["assd_mm"], r["nsd"]] for r in rows}


def _monai(pred: np.ndarray, ref: np.ndarray) -> tuple[float, dict]:
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_surface_dice)

    start = time.perf_counter()
    k = len(LABELS) + 1
    p = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), k).permute(3, 0, 1, 2)[None].float()
    r = torch.nn.functional.one_hot(torch.from_numpy(ref.astype(np.int64)), k).permute(3, 0, 1, 2)[None].float()
    dice = compute_dice(p, r, include_background=False)[0]
    hd95 = compute_hausdorff_distance(p, r, percentile=95, spacing=SPACING)[0]
    assd = compute_average_surface_distance(p, r, symmetric=True, spacing=SPACING)[0]
    nsd = compute_surface_dice(p, r, class_thresholds=[TOLERANCE_MM] * len(LABELS), spacing=SPACING)[0]
    seconds = time.perf_counter() - start
    return seconds, {name: [float(dice[i]), float(hd95[i]), float(assd[i]), float(nsd[i])]
                     for i, name in enumerate(LABELS.values())}


def _max_relative_difference(ours: dict, theirs: dict) -> float:
    return max(abs(a - b) / max(abs(b), 1e-12) for name in ours for a, b in zip(ours[name], theirs[name]))


def check(shape: tuple[int, int, int] = (64, 64, 24)) -> dict:
    """Correctness side only (no timing), on a small pair from the same generator: both sets of values.

    Returns ``ours`` and ``monai`` (label name -> [Dice, HD95, ASSD, NSD]) and
    ``max_relative_difference`` (the bench's criterion: <= 1e-4).
    """
    import warnings

    ref, pred = _volumes(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _, ours = _ours(pred, ref)
        _, theirs = _monai(pred, ref)
    return {"ours": ours, "monai": theirs, "max_relative_difference": _max_relative_difference(ours, theirs)}


def run(quick: bool = False) -> dict:
    """Time both; return seconds per case, the speedup (MONAI / ours) and the largest relative difference."""
    import warnings

    shape = (256, 256, 100) if quick else (512, 512, 300)
    repeats = 1 if quick else 3
    ref, pred = _volumes(shape)
    ours, theirs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's deprecation notices
        for _ in range(repeats):
            t, ours_values = _ours(pred, ref)
            ours.append(t)
            t, monai_values = _monai(pred, ref)
            theirs.append(t)
    diff = _max_relative_difference(ours_values, monai_values)
    ours_s, monai_s = statistics.median(ours), statistics.median(theirs)
    return {
        "metrics_ours_s": round(ours_s, 3),
        "metrics_monai_s": round(monai_s, 3),
        "speedup": round(monai_s / ours_s, 2),
        "target_speedup": TARGET_SPEEDUP,
        "max_relative_difference": float(f"{diff:.3g}"),
        "values_ours": {k: [round(v, 5) for v in vals] for k, vals in ours_values.items()},
        "shape": list(shape),
        "spacing_mm": list(SPACING),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 100 volumes, one repeat")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
