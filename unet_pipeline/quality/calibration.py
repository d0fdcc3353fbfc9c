"""From review signals to a predicted Dice: the features, their fit to true Dice, and its use.

A calibration is a small ridge linear regression of the true Dice on a few features of
:func:`features`, chosen by forward selection: starting from none, the feature that lowers the
leave-one-out mean absolute error most is added, while it lowers it by at least
:data:`MIN_GAIN` (at most :data:`MAX_FEATURES`). It is fitted at training on cases with
references that the model did not train on (the validation cases, with degraded copies: see
:mod:`unet_pipeline.quality.fit`) and stored in ``model.json`` (``review.calibration``) with how
and on how many cases it was fitted. Predictions are clipped to 0..1.

Without a calibration (models trained before it existed), the predicted Dice is the case's own
``soft_dice`` signal: the network's expectation, not a measured relation (:data:`UNCALIBRATED`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["FEATURES", "features", "fit_calibration", "predict_dice", "UNCALIBRATED", "MIN_GAIN", "MAX_FEATURES"]

#: Candidate features (all floats, larger = more unusual or more sure, see :func:`features`).
FEATURES = ("soft_dice", "mean_maxprob", "entropy", "largest_share", "volume_log_ratio", "hu_shift",
            "scan_hu_shift", "thickness_log_ratio")
#: A feature joins the fit only if it lowers the leave-one-out MAE by at least this much (Dice units).
MIN_GAIN = 0.002
MAX_FEATURES = 4
#: Ridge penalty per row on the standardised features.
RIDGE = 0.05
#: The calibration used when a model has none.
UNCALIBRATED = {"method": "uncalibrated: predicted Dice = soft_dice signal", "features": ["soft_dice"],
                "n_cases": 0, "n_rows": 0, "fitted_on": None}


def _finite(x, default: float = 0.0) -> float:
    x = default if x is None else float(x)
    return x if math.isfinite(x) else default


def features(cls: Mapping, scan: Mapping, reference: Mapping | None, name: str) -> dict[str, float]:
    """The features of one predicted (non-empty) class of one case.

    ``cls`` and ``scan`` are the case's signals (:mod:`unet_pipeline.quality.signals`),
    ``reference`` the training distribution (``review.reference`` of ``model.json``; None: the
    comparisons are 0). ``volume_log_ratio``: ``|ln(volume / training median)|``; ``hu_shift``:
    the structure's median HU minus the training median of the class, absolute, in 100 HU;
    ``scan_hu_shift``: the same for the body's median HU; ``thickness_log_ratio``:
    ``|ln(slice thickness / training median)|``.
    """
    ref_cls = ((reference or {}).get("classes") or {}).get(name) or {}
    ref_scan = (reference or {}).get("scan") or {}
    med = _finite(ref_cls.get("volume_ml_median"))
    vol = _finite(cls.get("volume_ml"))
    thick, ref_thick = _finite(scan.get("slice_thickness_mm")), _finite(ref_scan.get("slice_thickness_mm"))
    return {
        "soft_dice": _finite(cls.get("soft_dice")),
        "mean_maxprob": _finite(cls.get("mean_maxprob")),
        "entropy": _finite(cls.get("entropy")),
        "largest_share": _finite(cls.get("largest_share"), 1.0),
        "volume_log_ratio": abs(math.log(vol / med)) if med > 0 and vol > 0 else 0.0,
        "hu_shift": abs(_finite(cls.get("hu_median")) - _finite(ref_cls.get("hu_median"), _finite(cls.get("hu_median"))))
        / 100.0,
        "scan_hu_shift": abs(_finite(scan.get("body_hu_median")) - _finite(ref_scan.get("body_hu_median"),
                                                                        _finite(scan.get("body_hu_median")))) / 100.0,
        "thickness_log_ratio": abs(math.log(thick / ref_thick)) if thick > 0 and ref_thick > 0 else 0.0,
    }


def _ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge fit of ``y`` ``(n,)`` on ``x`` ``(n, f)``: ``(mean, scale, coef, intercept)``, standardised."""
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (x - mean) / scale
    coef = np.linalg.solve(z.T @ z + RIDGE * len(y) * np.eye(x.shape[1]), z.T @ (y - y.mean()))
    return mean, scale, coef, float(y.mean())


def _loo_predictions(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions (clipped to 0..1) of the ridge fit, one row left out at a time."""
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        mean, scale, coef, b = _ridge(x[keep], y[keep])
        out[i] = b + ((x[i] - mean) / scale) @ coef
    return np.clip(out, 0.0, 1.0)


def _forward_selection(table: np.ndarray, y: np.ndarray) -> tuple[list[int], float, np.ndarray]:
    """Columns of ``table`` chosen one by one by leave-one-out MAE; ``(columns, MAE, LOO predictions)``."""
    chosen: list[int] = []
    best_mae, best_pred = float(np.abs(y - y.mean()).mean()), np.full(len(y), y.mean())
    while len(chosen) < MAX_FEATURES:
        trials = []
        for j in range(table.shape[1]):
            if j not in chosen:
                pred = _loo_predictions(table[:, chosen + [j]], y)
                trials.append((float(np.abs(pred - y).mean()), j, pred))
        if not trials:
            break
        mae, j, pred = min(trials, key=lambda t: t[0])
        if best_mae - mae < MIN_GAIN:
            break
        chosen, best_mae, best_pred = chosen + [j], mae, pred
    return chosen, best_mae, best_pred


def fit_calibration(rows: Sequence[Mapping], *, fitted_on: str, degradations: Sequence[str] = ()) -> dict:
    """Fit the calibration on ``rows``: dicts with ``case``, ``dice`` (true Dice) and the :data:`FEATURES`.

    Returns the record stored in ``model.json``: ``method``, ``features`` chosen, their ``mean``,
    ``scale`` and ``coef`` (standardised), ``intercept``, ``n_rows``, ``n_cases`` (distinct
    ``case`` values before degradation), ``fitted_on``, ``degradations``, and the leave-one-out
    ``loo_mae`` and ``loo_spearman`` of the chosen fit (how well it ranked rows it did not see).

    Raises
    ------
    ValueError
        Fewer than 3 rows.
    """
    from scipy.stats import spearmanr

    if len(rows) < 3:
        raise ValueError(f"fit_calibration needs at least 3 rows with a true Dice, got {len(rows)}")
    table = np.array([[float(r[f]) for f in FEATURES] for r in rows])
    y = np.array([float(r["dice"]) for r in rows])
    chosen, mae, loo = _forward_selection(table, y)
    names = [FEATURES[j] for j in chosen]
    if chosen:
        mean, scale, coef, b = _ridge(table[:, chosen], y)
    else:
        mean, scale, coef, b = np.zeros(0), np.ones(0), np.zeros(0), float(y.mean())
    rho = spearmanr(loo, y).statistic if np.ptp(loo) > 0 and np.ptp(y) > 0 else float("nan")
    return {"method": "ridge linear regression of true Dice on features chosen by forward selection "
                      "(leave-one-out mean absolute error), clipped to 0..1",
            "features": names, "mean": mean.tolist(), "scale": scale.tolist(), "coef": coef.tolist(),
            "intercept": b, "n_rows": len(rows), "n_cases": len({str(r["case"]) for r in rows}),
            "fitted_on": fitted_on, "degradations": list(degradations), "loo_mae": round(mae, 4),
            "loo_spearman": None if not math.isfinite(rho) else round(float(rho), 4),
            "dice_range": [float(y.min()), float(y.max())]}


def predict_dice(calibration: Mapping | None, feats: Mapping[str, float]) -> float:
    """Predicted Dice (0..1) of one class of one case from its :func:`features`.

    ``calibration``: a record of :func:`fit_calibration`, or None / :data:`UNCALIBRATED` (the
    ``soft_dice`` feature itself).
    """
    if not calibration or not calibration.get("coef"):
        if calibration and calibration.get("features") == [] and "intercept" in calibration:
            return float(np.clip(calibration["intercept"], 0.0, 1.0))  # a fit that found no useful feature
        return float(np.clip(feats["soft_dice"], 0.0, 1.0))
    x = np.array([float(feats[f]) for f in calibration["features"]])
    z = (x - np.asarray(calibration["mean"], float)) / np.asarray(calibration["scale"], float)
    return float(np.clip(float(calibration["intercept"]) + z @ np.asarray(calibration["coef"], float), 0.0, 1.0))
