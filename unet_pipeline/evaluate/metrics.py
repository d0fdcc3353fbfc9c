"""Segmentation metrics per case and class, in physical units, with an explicit empty-mask policy.

Inputs are integer label arrays of one shape (any axis order) and the voxel size in mm per array
axis. Per class the overlap metrics (Dice, IoU, precision, recall) count voxels; the surface
metrics use the class's *border voxels* (voxels of the mask with a face-neighbour outside it, the
mask eroded by the 6-connected structuring element, out-of-array counted as outside) and the
Euclidean distance in mm from each border voxel of one mask to the nearest border voxel of the
other, taking the anisotropic spacing into account (found with k-d trees of the border voxel
centres in mm, so the cost follows the surface, not the volume between the surfaces):

* ``hd_mm``: the maximum of both directed distance sets (Hausdorff distance);
* ``hd95_mm``: the larger of the two directed 95th percentiles (linear interpolation);
* ``assd_mm``: the mean over the union of both directed distance sets;
* ``nsd``: normalised surface Dice at a tolerance tau: the share of border voxels of both masks
  lying within tau mm of the other mask's border.

These are exactly the definitions of MONAI's ``compute_hausdorff_distance`` (``percentile=95``),
``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` (tested against
them). Borders are found on the bounding box of both masks plus a one-voxel margin, not on the
whole volume.

Volumes are voxel counts times the voxel volume, in mL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["EMPTY_POLICY", "case_metrics", "surface_distances", "summarize"]

#: The policy for empty masks, as written into summary.json and the report.
EMPTY_POLICY = ("Empty masks: if reference and prediction are both empty for a class, Dice = IoU = precision = "
                "recall = NSD = 1 and the distances (HD, HD95, ASSD) are 0; if exactly one is empty, Dice = IoU = "
                "NSD = 0, precision (empty prediction) or recall (empty reference) is undefined and the other 0, and the "
                "distances are undefined (NaN, left out of the summary statistics, and counted).")

_SUMMARY_METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd")


def _border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (array edges count as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed border distances (mm): ``(pred border -> ref border, ref border -> pred border)``.

    ``pred`` and ``ref`` are boolean masks of one shape, both non-empty. Computed on the bounding
    box of both masks grown by one voxel. Returns two float64 1-D arrays.
    """
    union = pred | ref
    idx = np.nonzero(union)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    p, r = pred[box], ref[box]
    # Cropping with a 1-voxel margin (or at the array edge) leaves the borders unchanged, since
    # binary_erosion treats the outside of the array as background like the cropped-off voxels.
    spacing = np.asarray([float(s) for s in spacing_mm])
    pts_p = np.argwhere(_border(p)) * spacing  # border voxel centres in mm
    pts_r = np.argwhere(_border(r)) * spacing
    # Nearest-neighbour queries between the two border point sets: the same exact Euclidean
    # distances as a distance transform of the other border, without touching the voxels between.
    to_ref, _ = cKDTree(pts_r).query(pts_p, k=1, workers=-1)
    to_pred, _ = cKDTree(pts_p).query(pts_r, k=1, workers=-1)
    return np.asarray(to_ref, np.float64), np.asarray(to_pred, np.float64)


def _check(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing_mm) != pred.ndim or any(not (float(s) > 0) for s in spacing_mm):
        raise ValueError(f"spacing_mm {tuple(spacing_mm)} must give one positive voxel size per axis of {pred.shape}")


def _tolerance(nsd_tolerance_mm: float | Mapping[str, float], name: str) -> float:
    if isinstance(nsd_tolerance_mm, Mapping):
        if name in nsd_tolerance_mm:
            return float(nsd_tolerance_mm[name])
        if "*" in nsd_tolerance_mm:
            return float(nsd_tolerance_mm["*"])
        raise ValueError(f"nsd_tolerance_mm has no value for class {name!r} (and no '*' default)")
    return float(nsd_tolerance_mm)


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float], labels: Mapping[int, str],
                 nsd_tolerance_mm: float | Mapping[str, float] = 2.0) -> list[dict[str, Any]]:
    """Metrics of one case for each class in ``labels`` (``{label value: name}``, in that order).

    Parameters
    ----------
    pred, ref
        Integer label arrays of one shape (2-D or 3-D, any axis order).
    spacing_mm
        Voxel size in mm per array axis.
    nsd_tolerance_mm
        NSD tolerance in mm: one number, or per class name (``"*"`` for the rest).

    Returns
    -------
    list of dict
        Keys ``label, label_id, dice, iou, precision, recall, hd_mm, hd95_mm, assd_mm, nsd,
        vol_ref_ml, vol_pred_ml, vol_diff_ml`` (pred - ref), ``ref_empty, pred_empty`` and
        ``empty_policy`` (``"both_empty"``, ``"ref_empty"``, ``"pred_empty"`` or ``""``).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check(pred, ref, spacing_mm)
    voxel_ml = float(np.prod([float(s) for s in spacing_mm])) / 1000.0
    rows = []
    for value, name in labels.items():
        p, r = pred == value, ref == value
        n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
        row: dict[str, Any] = {"label": str(name), "label_id": int(value), "vol_ref_ml": n_r * voxel_ml,
                               "vol_pred_ml": n_p * voxel_ml, "vol_diff_ml": (n_p - n_r) * voxel_ml,
                               "ref_empty": n_r == 0, "pred_empty": n_p == 0}
        if n_p == 0 and n_r == 0:
            row.update(dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd_mm=0.0, hd95_mm=0.0, assd_mm=0.0, nsd=1.0,
                       empty_policy="both_empty")
        elif n_p == 0 or n_r == 0:
            nan = float("nan")
            row.update(dice=0.0, iou=0.0, precision=nan if n_p == 0 else 0.0, recall=nan if n_r == 0 else 0.0,
                       hd_mm=nan, hd95_mm=nan, assd_mm=nan, nsd=0.0,
                       empty_policy="pred_empty" if n_p == 0 else "ref_empty")
        else:
            inter = int(np.count_nonzero(p & r))
            d_pr, d_rp = surface_distances(p, r, spacing_mm)
            tau = _tolerance(nsd_tolerance_mm, str(name))
            both = np.concatenate([d_pr, d_rp])
            row.update(dice=2.0 * inter / (n_p + n_r), iou=inter / (n_p + n_r - inter), precision=inter / n_p,
                       recall=inter / n_r, hd_mm=float(both.max()),
                       hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
                       assd_mm=float(both.mean()), nsd=float(np.count_nonzero(both <= tau)) / both.size,
                       empty_policy="")
        rows.append(row)
    return rows


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _json_number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _stats(values: np.ndarray, rng: np.random.Generator, n_bootstrap: int) -> dict[str, Any]:
    """Mean, std, median, min, max and a percentile-bootstrap 95 % CI of the mean (NaN left out)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None, "ci95": [None, None]}
    if v.size > 1 and n_bootstrap > 0:
        means = v[rng.integers(0, v.size, size=(n_bootstrap, v.size))].mean(axis=1)
        ci = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    else:
        ci = [float(v.mean()), float(v.mean())]
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "ci95": [_json_number(c) for c in ci]}


def summarize(rows: Sequence[Mapping[str, Any]], n_bootstrap: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Per-class statistics over cases: ``{label: {"n_cases", metric: {...}, "empty": {...}}}``.

    ``rows`` are :func:`case_metrics` rows with a ``case`` key (values may be strings, as read
    back from CSV). For each of Dice, IoU, HD95, ASSD and NSD: mean, std, median, min, max and a
    percentile-bootstrap 95 % confidence interval of the mean (``n_bootstrap`` resamples of the
    cases, seeded); NaN values (distances with one empty mask) are left out and counted. JSON-safe:
    no NaN or infinity (``None`` instead).
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(str(row["label"]), []).append(row)
    out: dict[str, dict] = {}
    for label, items in by_label.items():
        entry: dict[str, Any] = {"n_cases": len({str(r.get("case", i)) for i, r in enumerate(items)})}
        for metric in _SUMMARY_METRICS:
            entry[metric] = _stats(np.array([_as_float(r.get(metric)) for r in items], dtype=np.float64),
                                   rng, n_bootstrap)
        policies = [str(r.get("empty_policy") or "") for r in items]
        entry["empty"] = {k: policies.count(k) for k in ("both_empty", "ref_empty", "pred_empty")}
        entry["n_nan_hd95"] = int(sum(not math.isfinite(_as_float(r.get("hd95_mm"))) for r in items))
        out[label] = entry
    return out
