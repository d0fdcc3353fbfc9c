"""From review signals to a predicted Dice: the features, their fit to true Dice, and its use.

A calibration has two parts, fitted on cases with references that the model did not train on
(the validation cases, each also as degraded copies: see :mod:`unet_pipeline.quality.fit`):

* a monotone map of a primary signal to the true Dice: isotonic regression (pool adjacent
  violators), used as a piecewise-linear curve through its steps and extended beyond them with
  the least-squares slope, so a case's rank follows its primary signal unless a correction says
  otherwise. The primary is one of :data:`PRIMARY_CANDIDATES`, the Dice the network expects
  between its own probabilities and its segmentation, counting the probability everywhere
  (``soft_dice``) or only near the structure (``soft_dice_near``): the one whose whole fit ranks
  the held-out rows better (cross-validated Spearman correlation);
* corrections: a small ridge regression of what the curve leaves over on a few other
  :func:`features`, chosen by forward selection under cross-validation that leaves out one kind
  of degradation at a time (:func:`fold_groups`): a feature joins only while it lowers that
  error by at least :data:`MIN_GAIN` without lowering its Spearman correlation (at most
  :data:`MAX_FEATURES`). Leaving out single rows instead rewarded features that tell degraded
  copies of the same scan apart rather than predict Dice on a new kind of scan: on the real-CT
  benchmark that calibration ranked worse than ``soft_dice`` alone.

It is stored in ``model.json`` (``review.calibration``) with how and on how many cases it was
fitted. Predictions are clipped to 0..1. Without a calibration (models trained before it
existed), the predicted Dice is the case's own ``soft_dice``: the network's expectation, not a
measured relation (:data:`UNCALIBRATED`). Records of the earlier ridge-only calibration are
still read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["FEATURES", "PRIMARY", "PRIMARY_CANDIDATES", "features", "fit_calibration", "fold_groups",
           "isotonic_knots", "predict_dice", "UNCALIBRATED", "MIN_GAIN", "MAX_FEATURES"]

#: Candidate features (all floats, larger = more unusual or more sure, see :func:`features`).
FEATURES = ("soft_dice", "soft_dice_near", "mean_maxprob", "entropy", "largest_share", "far_share", "removed_share",
            "volume_log_ratio", "hu_shift", "scan_hu_shift", "thickness_log_ratio", "noise_log_ratio",
            "context_distance")
#: The feature the monotone curve maps to a Dice when a record does not say (records before
#: :data:`PRIMARY_CANDIDATES`) and the first of the candidates.
PRIMARY = "soft_dice"
#: The features the monotone curve may map to a Dice; :func:`fit_calibration` picks one by measurement.
PRIMARY_CANDIDATES = ("soft_dice", "soft_dice_near")
#: A correction joins the fit only if it lowers the cross-validated mean absolute error by at
#: least this much (Dice units).
MIN_GAIN = 0.005
#: At most this many corrections.
MAX_FEATURES = 2
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
    ``|ln(slice thickness / training median)|``; ``noise_log_ratio``: ``|ln(noise_hu / training
    median)|`` (noisier or smoother scans); ``context_distance``: the network's view around the
    structure against the training cases' (:mod:`unet_pipeline.quality.context`; 0 where the model
    has no reference). ``soft_dice_near`` falls back to ``soft_dice`` where a case has none.
    """
    ref_cls = ((reference or {}).get("classes") or {}).get(name) or {}
    ref_scan = (reference or {}).get("scan") or {}
    med = _finite(ref_cls.get("volume_ml_median"))
    vol = _finite(cls.get("volume_ml"))
    thick, ref_thick = _finite(scan.get("slice_thickness_mm")), _finite(ref_scan.get("slice_thickness_mm"))
    noise, ref_noise = _finite(scan.get("noise_hu")), _finite(ref_scan.get("noise_hu"))
    return {
        "soft_dice": _finite(cls.get("soft_dice")),
        "soft_dice_near": _finite(cls.get("soft_dice_near"), _finite(cls.get("soft_dice"))),
        "mean_maxprob": _finite(cls.get("mean_maxprob")),
        "entropy": _finite(cls.get("entropy")),
        "largest_share": _finite(cls.get("largest_share"), 1.0),
        "far_share": _finite(cls.get("far_share")),
        "removed_share": _finite(cls.get("removed_share")),
        "volume_log_ratio": abs(math.log(vol / med)) if med > 0 and vol > 0 else 0.0,
        "hu_shift": abs(_finite(cls.get("hu_median")) - _finite(ref_cls.get("hu_median"), _finite(cls.get("hu_median"))))
        / 100.0,
        "scan_hu_shift": abs(_finite(scan.get("body_hu_median")) - _finite(ref_scan.get("body_hu_median"),
                                                                        _finite(scan.get("body_hu_median")))) / 100.0,
        "thickness_log_ratio": abs(math.log(thick / ref_thick)) if thick > 0 and ref_thick > 0 else 0.0,
        "noise_log_ratio": abs(math.log(noise / ref_noise)) if noise > 0 and ref_noise > 0 else 0.0,
        "context_distance": _finite(cls.get("context_distance")),
    }


def _ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge fit of ``y`` ``(n,)`` on ``x`` ``(n, f)``: ``(mean, scale, coef, intercept)``, standardised."""
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (x - mean) / scale
    coef = np.linalg.solve(z.T @ z + RIDGE * len(y) * np.eye(x.shape[1]), z.T @ (y - y.mean()))
    return mean, scale, coef, float(y.mean())


def isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) regression of ``y`` on ``x`` by pooling adjacent violators.

    Returns the steps ``(knot_x, knot_y)``: the mean ``x`` and ``y`` of each pooled block, both
    strictly increasing (blocks with equal mean ``y`` or equal mean ``x`` are pooled)."""
    order = np.argsort(np.asarray(x, float), kind="stable")
    blocks: list[list[float]] = []  # [sum x, sum y, count]
    for xi, yi in zip(np.asarray(x, float)[order], np.asarray(y, float)[order]):
        blocks.append([xi, yi, 1.0])
        while len(blocks) > 1 and (blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]
                                   or blocks[-2][0] / blocks[-2][2] >= blocks[-1][0] / blocks[-1][2]):
            sx, sy, n = blocks.pop()
            blocks[-1] = [blocks[-1][0] + sx, blocks[-1][1] + sy, blocks[-1][2] + n]
    return np.array([b[0] / b[2] for b in blocks]), np.array([b[1] / b[2] for b in blocks])


def _curve(knot_x: Sequence[float], knot_y: Sequence[float], slope: float, x: np.ndarray) -> np.ndarray:
    """The monotone curve at ``x``: linear between the knots, with ``slope`` beyond them."""
    kx, ky, x = np.asarray(knot_x, float), np.asarray(knot_y, float), np.asarray(x, float)
    out = np.interp(x, kx, ky) if len(kx) > 1 else np.full(x.shape, ky[0])
    out = np.where(x < kx[0], ky[0] - slope * (kx[0] - x), out)
    return np.where(x > kx[-1], ky[-1] + slope * (x - kx[-1]), out)


def _fit(table: np.ndarray, y: np.ndarray, columns: list[int]) -> dict:
    """Curve on column 0 (the primary feature) and ridge corrections on ``columns`` of ``table`` ``(n, f)``."""
    x = table[:, 0]
    kx, ky = isotonic_knots(x, y)
    slope = max(float(np.polyfit(x, y, 1)[0]), 0.0) if np.ptp(x) > 0 else 0.0
    model = {"knot_x": kx, "knot_y": ky, "slope": slope, "columns": columns}
    if columns:
        rest = y - _curve(kx, ky, slope, x)
        model["mean"], model["scale"], model["coef"], model["offset"] = _ridge(table[:, columns], rest)
    return model


def _apply(model: Mapping, table: np.ndarray) -> np.ndarray:
    out = _curve(model["knot_x"], model["knot_y"], model["slope"], table[:, 0])
    if model["columns"]:
        z = (table[:, model["columns"]] - model["mean"]) / model["scale"]
        out = out + model["offset"] + z @ model["coef"]
    return np.clip(out, 0.0, 1.0)


def fold_groups(rows: Sequence[Mapping]) -> tuple[list[str], str]:
    """The cross-validation folds of the fit: ``(group of each row, what a group is)``.

    By kind of degradation (a row's ``kind``: ``"none"``, ``"noise"``, ``"blur+noise"``, ...)
    when the rows hold at least 3 kinds, else by case when they hold at least 3 cases, else one
    row at a time."""
    for key, what in (("kind", "kind of degradation"), ("case", "case")):
        groups = [str(r.get(key)) for r in rows]
        if all(r.get(key) is not None for r in rows) and len(set(groups)) >= 3:
            return groups, what
    return [str(i) for i in range(len(rows))], "row"


def _cross_validated(table: np.ndarray, y: np.ndarray, groups: Sequence[str], columns: list[int]) -> np.ndarray:
    """Predictions of each row by the fit on the rows of the other groups."""
    groups = np.asarray(groups)
    out = np.empty(len(y))
    for g in np.unique(groups):
        held = groups == g
        if held.all():  # a single group: nothing to fit on but itself
            return _apply(_fit(table, y, columns), table)
        out[held] = _apply(_fit(table[~held], y[~held], columns), table[held])
    return out


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")


def _forward_selection(table: np.ndarray, y: np.ndarray, groups: Sequence[str]) -> tuple[list[int], np.ndarray]:
    """Corrections (columns of ``table`` after the first) chosen one by one by cross-validated MAE;
    ``(columns, cross-validated predictions)``."""
    chosen: list[int] = []
    pred = _cross_validated(table, y, groups, chosen)
    mae, rho = float(np.abs(pred - y).mean()), _rho(pred, y)
    while len(chosen) < MAX_FEATURES:
        trials = []
        for j in range(1, table.shape[1]):
            if j not in chosen:
                p = _cross_validated(table, y, groups, chosen + [j])
                trials.append((float(np.abs(p - y).mean()), j, p))
        if not trials:
            break
        trial_mae, j, p = min(trials, key=lambda t: t[0])
        trial_rho = _rho(p, y)
        if mae - trial_mae < MIN_GAIN or (math.isfinite(rho) and not trial_rho >= rho):
            break
        chosen, pred, mae, rho = chosen + [j], p, trial_mae, trial_rho
    return chosen, pred


def _fit_with(rows: Sequence[Mapping], y: np.ndarray, groups: Sequence[str], primary: str) -> dict:
    """The fit on ``primary``: ``order`` of the features, ``chosen`` corrections (columns of it),
    cross-validated predictions ``cv``, their ``cv_mae`` and ``cv_rho``, and the ``model`` on all rows."""
    order = [primary] + [f for f in FEATURES if f != primary]
    table = np.array([[float(r[f]) for f in order] for r in rows])
    chosen, cv = _forward_selection(table, y, groups)
    return {"order": order, "chosen": chosen, "cv": cv, "cv_mae": float(np.abs(cv - y).mean()),
            "cv_rho": _rho(cv, y), "model": _fit(table, y, chosen)}


def fit_calibration(rows: Sequence[Mapping], *, fitted_on: str, degradations: Sequence[str] = (),
                    primary: str | None = None) -> dict:
    """Fit the calibration on ``rows``: dicts with ``case``, ``dice`` (true Dice), the :data:`FEATURES`
    and optionally ``kind`` (the kind of degradation, for :func:`fold_groups`).

    ``primary``: the feature of the monotone curve; None: each of :data:`PRIMARY_CANDIDATES` that
    varies over the rows is fitted and the one with the higher cross-validated Spearman
    correlation is kept (ties: the lower cross-validated error, then the first).

    Returns the record stored in ``model.json``: ``method``, ``features`` (the primary first, then
    the corrections chosen), ``curve`` (``x``, ``y`` knots and ``slope``), ``corrections`` (their
    ``mean``, ``scale``, ``coef`` on the standardised features and ``offset``), ``n_rows``,
    ``n_cases`` (distinct ``case`` values before degradation), ``fitted_on``, ``degradations``,
    ``cv`` (what a fold leaves out), the cross-validated ``cv_mae`` and ``cv_spearman`` of the
    chosen fit (how well it ranked rows of a kind it did not see) and ``primary_choice`` (those two
    figures of every primary tried).

    Raises
    ------
    ValueError
        Fewer than 3 rows, or a ``primary`` that is not one of :data:`FEATURES`.
    """
    if len(rows) < 3:
        raise ValueError(f"fit_calibration needs at least 3 rows with a true Dice, got {len(rows)}")
    if primary is not None and primary not in FEATURES:
        raise ValueError(f"primary must be one of {FEATURES}, got {primary!r}")
    y = np.array([float(r["dice"]) for r in rows])
    groups, what = fold_groups(rows)
    tried = [primary] if primary else [p for p in PRIMARY_CANDIDATES if np.ptp([float(r[p]) for r in rows]) > 0]
    fits = {p: _fit_with(rows, y, groups, p) for p in (tried or [PRIMARY])}

    def merit(p: str) -> tuple:
        rho = fits[p]["cv_rho"]
        return (rho if math.isfinite(rho) else -2.0, -fits[p]["cv_mae"], -list(fits).index(p))

    primary = max(fits, key=merit)
    best = fits[primary]
    order, chosen, cv, model, rho = best["order"], best["chosen"], best["cv"], best["model"], best["cv_rho"]
    corrections = {"features": [order[j] for j in chosen]}
    if chosen:
        corrections.update(mean=model["mean"].tolist(), scale=model["scale"].tolist(), coef=model["coef"].tolist(),
                           offset=float(model["offset"]))
    return {"method": f"isotonic curve of true Dice on {primary} (piecewise linear, least-squares slope beyond "
                      "its ends) plus ridge corrections chosen by forward selection (cross-validated mean "
                      "absolute error, one kind of degradation left out at a time), clipped to 0..1",
            "features": [primary, *corrections["features"]],
            "curve": {"x": model["knot_x"].tolist(), "y": model["knot_y"].tolist(), "slope": model["slope"]},
            "corrections": corrections, "n_rows": len(rows), "n_cases": len({str(r["case"]) for r in rows}),
            "fitted_on": fitted_on, "degradations": list(degradations), "cv": f"one {what} left out at a time",
            "cv_mae": round(float(np.abs(cv - y).mean()), 4),
            "cv_spearman": None if not math.isfinite(rho) else round(rho, 4),
            "primary_choice": {p: {"cv_mae": round(f["cv_mae"], 4),
                                   "cv_spearman": None if not math.isfinite(f["cv_rho"]) else round(f["cv_rho"], 4)}
                               for p, f in fits.items()},
            "dice_range": [float(y.min()), float(y.max())]}


def predict_dice(calibration: Mapping | None, feats: Mapping[str, float]) -> float:
    """Predicted Dice (0..1) of one class of one case from its :func:`features`.

    ``calibration``: a record of :func:`fit_calibration` (or of the earlier ridge-only fit, which
    has ``coef`` instead of ``curve``), or None / :data:`UNCALIBRATED` (the ``soft_dice`` feature itself).
    """
    if calibration and calibration.get("curve"):
        curve, primary = calibration["curve"], (calibration.get("features") or [PRIMARY])[0]
        dice = float(_curve(curve["x"], curve["y"], float(curve["slope"]), np.array([float(feats[primary])]))[0])
        corr = calibration.get("corrections") or {}
        if corr.get("coef"):
            x = np.array([float(feats[f]) for f in corr["features"]])
            z = (x - np.asarray(corr["mean"], float)) / np.asarray(corr["scale"], float)
            dice += float(corr["offset"]) + float(z @ np.asarray(corr["coef"], float))
        return float(np.clip(dice, 0.0, 1.0))
    if not calibration or not calibration.get("coef"):
        if calibration and calibration.get("features") == [] and "intercept" in calibration:
            return float(np.clip(calibration["intercept"], 0.0, 1.0))  # a fit that found no useful feature
        return float(np.clip(feats["soft_dice"], 0.0, 1.0))
    x = np.array([float(feats[f]) for f in calibration["features"]])
    z = (x - np.asarray(calibration["mean"], float)) / np.asarray(calibration["scale"], float)
    return float(np.clip(float(calibration["intercept"]) + z @ np.asarray(calibration["coef"], float), 0.0, 1.0))
