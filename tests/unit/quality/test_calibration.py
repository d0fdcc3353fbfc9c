"""Calibration of the review signals: features, the fit (feature choice by measurement), storage in model.json."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_pipeline.model.card import read_model_card, write_model_card
from unet_pipeline.quality.calibration import (FEATURES, UNCALIBRATED, features, fit_calibration, fold_groups,
                                               isotonic_knots, predict_dice)

REFERENCE = {"classes": {"liver": {"volume_ml_median": 1500.0, "hu_median": 60.0, "present_share": 1.0,
                                   "volume_ml_min": 1200.0}},
             "scan": {"body_hu_median": 20.0, "slice_thickness_mm": 3.0}}


def _rows(n=30, seed=0):
    """Rows whose true Dice falls with soft_dice's shortfall; ``entropy`` is unrelated noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        soft = rng.uniform(0.5, 1.0)
        row = {f: 0.0 for f in FEATURES}
        row.update(case=f"c{i % 3}", soft_dice=soft, entropy=rng.uniform(0, 1),
                   dice=float(np.clip(1.6 * soft - 0.62 + rng.normal(0, 0.01), 0, 1)))
        rows.append(row)
    return rows


def test_features_compare_with_the_training_distribution():
    cls = {"volume_ml": 6000.0, "soft_dice": 0.9, "mean_maxprob": 0.95, "entropy": 0.1, "largest_share": 1.0,
           "hu_median": 160.0}
    scan = {"body_hu_median": -30.0, "slice_thickness_mm": 6.0}
    f = features(cls, scan, REFERENCE, "liver")
    assert set(f) == set(FEATURES)
    assert f["volume_log_ratio"] == pytest.approx(math.log(4.0))
    assert f["hu_shift"] == pytest.approx(1.0) and f["scan_hu_shift"] == pytest.approx(0.5)
    assert f["thickness_log_ratio"] == pytest.approx(math.log(2.0))
    # Without a reference (a model trained before it was recorded) the comparisons are 0.
    bare = features(cls, scan, None, "liver")
    assert bare["volume_log_ratio"] == bare["hu_shift"] == bare["scan_hu_shift"] == bare["thickness_log_ratio"] == 0.0
    # Missing signals (stored as null) do not break the features.
    assert features({"volume_ml": 1.0, "soft_dice": None}, {}, REFERENCE, "liver")["soft_dice"] == 0.0


def test_fit_chooses_the_informative_feature_and_predicts_dice():
    rows = _rows()
    cal = fit_calibration(rows, fitted_on="validation cases", degradations=["none", "noise"])
    assert cal["features"][0] == "soft_dice" and "entropy" not in cal["features"]
    assert cal["n_rows"] == 30 and cal["n_cases"] == 3 and cal["fitted_on"] == "validation cases"
    assert cal["degradations"] == ["none", "noise"] and "isotonic" in cal["method"]
    assert cal["cv"] == "one case left out at a time"  # no kinds given: the 3 cases are the folds
    assert cal["cv_mae"] < 0.03 and cal["cv_spearman"] > 0.95
    good = predict_dice(cal, {f: (0.97 if f == "soft_dice" else 0.0) for f in FEATURES})
    bad = predict_dice(cal, {f: (0.6 if f == "soft_dice" else 0.0) for f in FEATURES})
    assert good == pytest.approx(1.6 * 0.97 - 0.62, abs=0.06) and bad == pytest.approx(1.6 * 0.6 - 0.62, abs=0.06)
    assert predict_dice(cal, {f: (5.0 if f == "soft_dice" else 0.0) for f in FEATURES}) == 1.0  # clipped
    assert predict_dice(cal, {f: (-5.0 if f == "soft_dice" else 0.0) for f in FEATURES}) == 0.0


def test_the_primary_signal_is_the_one_that_ranks_held_out_rows_better():
    """True Dice follows ``soft_dice_near``; ``soft_dice`` is it minus unrelated far-away mass."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(30):
        near = rng.uniform(0.5, 1.0)
        row = {f: 0.0 for f in FEATURES}
        row.update(case=f"c{i % 3}", kind=f"k{i % 4}", soft_dice_near=near, soft_dice=near - rng.uniform(0, 0.3),
                   dice=float(np.clip(1.5 * near - 0.5 + rng.normal(0, 0.01), 0, 1)))
        rows.append(row)
    cal = fit_calibration(rows, fitted_on="validation cases")
    assert cal["features"][0] == "soft_dice_near" and "soft_dice_near" in cal["method"]
    choice = cal["primary_choice"]
    assert set(choice) == {"soft_dice", "soft_dice_near"}
    assert choice["soft_dice_near"]["cv_spearman"] > choice["soft_dice"]["cv_spearman"]
    assert cal["cv_spearman"] == choice["soft_dice_near"]["cv_spearman"]
    # the stored record predicts from its own primary, whatever the default is
    feats = {f: 0.0 for f in FEATURES} | {"soft_dice_near": 0.9, "soft_dice": 0.6}
    assert predict_dice(cal, feats) == pytest.approx(1.5 * 0.9 - 0.5, abs=0.05)
    # a primary given is used alone; an unknown one is refused
    forced = fit_calibration(rows, fitted_on="validation cases", primary="soft_dice")
    assert forced["features"][0] == "soft_dice" and list(forced["primary_choice"]) == ["soft_dice"]
    with pytest.raises(ValueError, match="primary must be one of"):
        fit_calibration(rows, fitted_on="validation cases", primary="volume_ml")


def test_fit_without_a_useful_feature_predicts_the_mean():
    rows = [{**{f: float(i % 2) for f in FEATURES}, "case": "a", "dice": 0.8} for i in range(6)]
    cal = fit_calibration(rows, fitted_on="validation cases")
    assert cal["features"] == ["soft_dice"] and cal["cv"] == "one row left out at a time"
    assert predict_dice(cal, {f: 0.3 for f in FEATURES}) == pytest.approx(0.8)


@pytest.mark.parametrize(("x", "y", "knot_x", "knot_y"), [
    ([1, 2, 3], [0.1, 0.2, 0.3], [1, 2, 3], [0.1, 0.2, 0.3]),  # already increasing: unchanged
    ([1, 2, 3], [0.3, 0.1, 0.5], [1.5, 3], [0.2, 0.5]),  # one violation pooled
    ([3, 1, 2], [0.5, 0.3, 0.1], [1.5, 3], [0.2, 0.5]),  # order of the rows does not matter
    ([1, 2, 3, 4], [0.4, 0.4, 0.2, 0.6], [2, 4], [1 / 3, 0.6]),  # ties pooled: knots strictly increasing
    ([1, 1, 2], [0.2, 0.4, 0.9], [1, 2], [0.3, 0.9]),  # equal x pooled
])
def test_isotonic_knots_by_hand(x, y, knot_x, knot_y):
    kx, ky = isotonic_knots(np.array(x, float), np.array(y, float))
    np.testing.assert_allclose(kx, knot_x)
    np.testing.assert_allclose(ky, knot_y)


def test_curve_is_monotone_and_extends_beyond_the_fitted_range():
    rows = [{**{f: 0.0 for f in FEATURES}, "case": "a", "kind": k, "soft_dice": s, "dice": d}
            for k, s, d in (("none", 0.95, 0.96), ("noise", 0.9, 0.9), ("noise", 0.85, 0.86), ("blur", 0.8, 0.7),
                            ("blur", 0.75, 0.72), ("shift", 0.7, 0.6))]
    cal = fit_calibration(rows, fitted_on="validation cases")
    assert cal["cv"] == "one kind of degradation left out at a time" and cal["curve"]["slope"] > 0
    grid = np.linspace(0.0, 1.0, 101)
    pred = [predict_dice(cal, {f: 0.0 for f in FEATURES} | {"soft_dice": s}) for s in grid]
    assert all(b >= a for a, b in zip(pred, pred[1:])) and 0.0 <= min(pred) and max(pred) <= 1.0
    # Below the lowest soft_dice seen the curve keeps falling: worse cases rank below the worst fitted one.
    below = [predict_dice(cal, {f: 0.0 for f in FEATURES} | {"soft_dice": s}) for s in (0.65, 0.6, 0.55)]
    assert below[0] > below[1] > below[2]


def test_corrections_join_only_when_they_help_on_a_kind_left_out():
    """A feature that explains the Dice beyond soft_dice in every kind of degradation is added; one that
    only tells the kinds apart (constant within each kind, unrelated to Dice across them) is not."""
    rng = np.random.default_rng(1)
    rows = []
    for k, kind in enumerate(("none", "noise", "blur", "shift", "blur+noise")):
        for _ in range(8):
            soft, frag = rng.uniform(0.7, 1.0), rng.uniform(0.0, 1.0)
            rows.append({**{f: 0.0 for f in FEATURES}, "case": "a", "kind": kind, "soft_dice": soft,
                         "largest_share": frag, "hu_shift": float(k) * rng.choice([-1, 1]),
                         "dice": float(np.clip(soft - 0.3 * (1 - frag), 0, 1))})
    cal = fit_calibration(rows, fitted_on="validation cases")
    assert cal["features"][:2] == ["soft_dice", "largest_share"] and "hu_shift" not in cal["features"]
    ok = {f: 0.0 for f in FEATURES} | {"soft_dice": 0.9, "largest_share": 1.0}
    assert predict_dice(cal, ok) > predict_dice(cal, ok | {"largest_share": 0.2}) + 0.1


def test_fold_groups():
    assert fold_groups([{"kind": k, "case": "a"} for k in "xyzx"]) == (list("xyzx"), "kind of degradation")
    assert fold_groups([{"kind": k, "case": c} for k, c in zip("xxyy", "abcd")]) == (list("abcd"), "case")
    assert fold_groups([{"case": "a"}] * 3) == (["0", "1", "2"], "row")


def test_earlier_ridge_records_are_still_read():
    old = {"method": "ridge", "features": ["soft_dice"], "mean": [0.9], "scale": [0.1], "coef": [0.05],
           "intercept": 0.85}
    assert predict_dice(old, {f: 0.0 for f in FEATURES} | {"soft_dice": 0.8}) == pytest.approx(0.80)
    assert predict_dice({"features": [], "intercept": 0.7}, {f: 0.1 for f in FEATURES}) == pytest.approx(0.7)


def test_fit_needs_three_rows():
    with pytest.raises(ValueError, match="at least 3 rows"):
        fit_calibration(_rows(2), fitted_on="validation cases")


def test_uncalibrated_prediction_is_the_soft_dice():
    feats = {f: 0.0 for f in FEATURES} | {"soft_dice": 0.73}
    assert predict_dice(None, feats) == pytest.approx(0.73)
    assert predict_dice(UNCALIBRATED, feats) == pytest.approx(0.73)


def test_calibration_is_stored_in_model_json_and_reloaded(tmp_path):
    cal = fit_calibration(_rows(), fitted_on="validation cases", degradations=["none"])
    meta = {"architecture": {}, "plan": {}, "labels": {"1": "liver"},
            "review": {"reference": REFERENCE, "calibration": cal, "feature_spearman": {"soft_dice": 0.9}}}
    write_model_card(tmp_path, meta)
    card = read_model_card(tmp_path)
    assert card.calibration == cal and card.review["reference"] == REFERENCE
    assert card.calibration["method"] and card.calibration["n_cases"] == 3
    feats = {f: 0.0 for f in FEATURES} | {"soft_dice": 0.8}
    assert predict_dice(card.calibration, feats) == predict_dice(cal, feats)
    # A model folder from before the review list: no record, no calibration.
    write_model_card(tmp_path, {"architecture": {}, "plan": {}, "labels": {"1": "liver"}})
    assert read_model_card(tmp_path).review is None and read_model_card(tmp_path).calibration is None
