"""The review list: contract of review.csv, ranking by known quality, absent classes, reasons."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import ndimage

from unet_pipeline.quality.calibration import FEATURES, fit_calibration
from unet_pipeline.quality.review import ABSENT_DICE, REVIEW_COLUMNS, case_review, rank_rows, read_review_csv, \
    review_cohort
from unet_pipeline.quality.signals import SignalAccumulator, label_statistics, summarize_reference

INTENSITY = {"mean": 0.0, "std": 100.0}
NAMES = ["liver", "kidney"]
SPACING = (3.0, 1.0, 1.0)


def _label(n_z=8):
    label = np.zeros((n_z, 40, 40), np.uint8)
    label[1:7, 5:25, 5:25] = 1  # liver: 2400 voxels
    label[2:6, 28:36, 28:36] = 2  # kidney: 256 voxels
    return label


def _image(label):
    image = np.full(label.shape, 0.3, np.float32)  # 30 HU
    image[label == 1] = 0.6
    image[label == 2] = 1.5
    return image


REFERENCE = summarize_reference([label_statistics(_label(), _image(_label()), SPACING, INTENSITY, NAMES)])


def _signals(probs, image, names=NAMES):
    acc = SignalAccumulator(image.shape, names, SPACING, INTENSITY)
    acc.add(0, probs, image)
    return acc.finish()


def _degraded_probs(label, step):
    """Softmax of a one-hot blurred ``step`` px in-plane (step 0: sharp): the boundary ever less sure."""
    onehot = np.stack([(label == k).astype(np.float32) for k in range(3)], axis=1)
    if step:
        onehot = ndimage.gaussian_filter(onehot, sigma=(0, 0, step, step))
    logits = 6.0 * onehot
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _calibration():
    """A calibration fitted on rows where the Dice follows soft_dice (as measured on real CT)."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        soft = rng.uniform(0.4, 1.0)
        rows.append({**{f: 0.0 for f in FEATURES}, "case": f"v{i}", "soft_dice": soft,
                     "dice": float(np.clip(1.2 * soft - 0.25 + rng.normal(0, 0.02), 0, 1))})
    return fit_calibration(rows, fitted_on="validation cases")


@pytest.mark.parametrize("calibrated", [False, True])
def test_the_same_case_degraded_step_by_step_ranks_worse_step_by_step(calibrated):
    label = _label()
    image = _image(label)
    review = {"reference": REFERENCE, "calibration": _calibration() if calibrated else None}
    rows = []
    for step in range(5):
        rows += case_review(f"step{step}", _signals(_degraded_probs(label, step), image), review)
    ranked = rank_rows(rows)
    for name in NAMES:
        order = [r["case"] for r in ranked if r["class"] == name]
        assert order == [f"step{s}" for s in range(4, -1, -1)], (name, order)  # the worst first
        dice = [r["predicted_dice"] for r in sorted(ranked, key=lambda r: r["case"]) if r["class"] == name]
        assert all(a > b for a, b in zip(dice, dice[1:])), dice
        assert 0.0 <= min(dice) and max(dice) <= 1.0
    assert {r["calibration"] for r in ranked} == {"fitted" if calibrated else "uncalibrated"}


def test_review_csv_contract(tmp_path):
    label = _label()
    image = _image(label)
    sidecars = []
    for step in (0, 2, 4):
        rows = case_review(f"case{step}", _signals(_degraded_probs(label, step), image), {"reference": REFERENCE})
        sidecars.append({"case": f"case{step}", "review": {"rows": rows}})
    sidecars.append({"case": "old", "review": None})  # a sidecar from before the review list: no rows
    out = tmp_path / "review.csv"
    ranked = review_cohort(sidecars, out)
    with open(out, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == REVIEW_COLUMNS
        rows = list(reader)
    assert {"case", "class", "predicted_dice", "review_rank", "reason"} <= set(rows[0])
    assert [int(r["review_rank"]) for r in rows] == list(range(1, 7)) == [r["review_rank"] for r in ranked]
    assert {(r["case"], r["class"]) for r in rows} == {(f"case{s}", n) for s in (0, 2, 4) for n in NAMES}
    dice = [float(r["predicted_dice"]) for r in rows]
    assert all(0.0 <= d <= 1.0 for d in dice) and dice == sorted(dice)
    assert all(r["reason"] for r in rows) and read_review_csv(out) == rows


def test_a_class_probably_absent_is_ranked_first_whatever_its_softmax():
    """A confident 4-voxel 'kidney' (12 mL less than the training's) in a scan without one."""
    label = _label()
    label[label == 2] = 0
    label[3, 30:32, 30:32] = 2
    image = _image(label)
    probs = _degraded_probs(label, 0)  # certain: p ~ 0.995 on every voxel's class
    rows = case_review("no_kidney", _signals(probs, image), {"reference": REFERENCE})
    worse = case_review("blurred", _signals(_degraded_probs(_label(), 3), _image(_label())), {"reference": REFERENCE})
    ranked = rank_rows(rows + worse)
    first = ranked[0]
    assert (first["case"], first["class"]) == ("no_kidney", "kidney")
    assert first["absent_suspected"] is True and first["predicted_dice"] <= ABSENT_DICE
    assert first["mean_maxprob"] > 0.99  # its softmax is sure
    assert "probably absent" in first["reason"]
    liver = next(r for r in ranked if r["case"] == "no_kidney" and r["class"] == "liver")
    assert liver["absent_suspected"] is False and liver["predicted_dice"] > 0.5


def test_a_scan_covering_part_of_the_organ_is_not_taken_for_one_without_it():
    """One slice through both organs: small volumes (a sixth and a quarter of training's), full
    cross-sections: not absent; the volume is named as a reason instead."""
    label = _label()[2:3]
    rows = case_review("part", _signals(_degraded_probs(label, 0), _image(label)), {"reference": REFERENCE})
    assert not any(r["absent_suspected"] for r in rows)
    assert all(r["volume_ratio"] < 0.5 and "x the training median" in r["reason"] for r in rows)


def test_reaching_the_edge_slices_is_a_reason_only_where_training_scans_do_not():
    label = _label(n_z=6)
    label[0][label[1] == 1] = 1  # the liver now starts in the first slice; in the training scans it does not
    label[0][label[2] == 2] = 2  # the kidney too
    ref = {**REFERENCE, "classes": {**REFERENCE["classes"], "kidney": {**REFERENCE["classes"]["kidney"],
                                                                       "edge_share": 1.0}}}
    rows = {r["class"]: r for r in case_review("c", _signals(_degraded_probs(label, 0), _image(label)),
                                               {"reference": ref})}
    assert rows["liver"]["edge_slices"] and "first or last slice" in rows["liver"]["reason"]
    assert rows["kidney"]["edge_slices"] and "first or last slice" not in rows["kidney"]["reason"]


def test_a_class_no_training_scan_holds_is_flagged():
    ref = {**REFERENCE, "classes": {**REFERENCE["classes"], "kidney": {**REFERENCE["classes"]["kidney"],
                                                                       "present_share": 0.0}}}
    label = _label()
    rows = case_review("c", _signals(_degraded_probs(label, 0), _image(label)), {"reference": ref})
    kidney = next(r for r in rows if r["class"] == "kidney")
    assert kidney["absent_suspected"] and kidney["reason"].startswith("absent in every training scan")


def test_nothing_segmented_in_a_full_scan_is_a_probable_miss_and_in_a_short_one_ranks_last():
    full = _label()
    full[full == 2] = 0
    short = _label(n_z=3)
    short[short == 2] = 0
    rows = case_review("full", _signals(_degraded_probs(full, 0), _image(full)), {"reference": REFERENCE})
    rows += case_review("short", _signals(_degraded_probs(short, 0), _image(short)), {"reference": REFERENCE})
    ranked = rank_rows(rows)
    assert (ranked[0]["case"], ranked[0]["class"], ranked[0]["predicted_dice"]) == ("full", "kidney", 0.0)
    assert "every training scan holds it" in ranked[0]["reason"]
    assert (ranked[-1]["case"], ranked[-1]["class"]) == ("short", "kidney")
    assert math.isnan(ranked[-1]["predicted_dice"]) and ranked[-1]["reason"] == "nothing segmented"


def test_reasons_name_what_is_out_of_the_training_range():
    label = _label()
    image = _image(label) + 1.0  # +100 HU everywhere: another scanner's profile, another phase
    big = label.copy()
    big[:, 5:39, 5:25][big[:, 5:39, 5:25] == 0] = 1  # the liver more than twice its training volume
    rows = case_review("c", _signals(_degraded_probs(big, 0), image), {"reference": REFERENCE})
    liver = next(r for r in rows if r["class"] == "liver")
    assert "x the training median" in liver["reason"] and "HU from training" in liver["reason"]
    assert "other scanner's HU profile" in liver["reason"]
    assert liver["volume_ratio"] > 2.0 and liver["scan_hu_shift"] == pytest.approx(100.0, abs=1.0)
    plain = case_review("p", _signals(_degraded_probs(label, 0), _image(label)), {"reference": REFERENCE})
    assert all(r["reason"] == "no signal out of the usual" for r in plain)


@pytest.mark.parametrize(("noise_hu", "expected"), [(60.0, "noise 4.0x the training scans' (60 HU)"),
                                                    (4.0, "image smoother than the training scans' (noise 4 HU "
                                                          "against 15: blur or a soft kernel?)"),
                                                    (20.0, None)])
def test_a_noisier_or_smoother_scan_than_training_gets_a_reason(noise_hu, expected):
    cls = {"volume_ml": 7.2, "max_area_mm2": 400.0, "soft_dice": 0.97, "soft_dice_near": 0.97, "far_share": 0.0,
           "mean_maxprob": 0.98, "entropy": 0.02, "largest_share": 1.0, "n_components": 1, "hu_median": 60.0}
    reference = {**REFERENCE, "scan": {**REFERENCE["scan"], "noise_hu": 15.0}}
    row = case_review("c", {"scan": {**REFERENCE["scan"], "noise_hu": noise_hu}, "classes": {"liver": cls}},
                      {"reference": reference})[0]
    assert row["noise_hu"] == noise_hu and row["noise_ratio"] == pytest.approx(noise_hu / 15.0)
    if expected:
        assert expected in row["reason"]
    else:
        assert "noise" not in row["reason"] and "smoother" not in row["reason"]


def test_probability_far_from_the_structure_is_named_and_the_near_soft_dice_judges_the_boundary():
    """Mass far away (stray pieces the postprocessing removed) is its own reason, not an unsure boundary."""
    cls = {"volume_ml": 7.2, "max_area_mm2": 400.0, "soft_dice": 0.62, "soft_dice_near": 0.96, "far_share": 0.4,
           "removed_share": 0.3, "mean_maxprob": 0.98, "entropy": 0.02, "largest_share": 1.0, "n_components": 1,
           "hu_median": 60.0}
    row = case_review("c", {"scan": dict(REFERENCE["scan"]), "classes": {"liver": cls}}, {"reference": REFERENCE})[0]
    assert "40% of its probability lies away from it" in row["reason"]
    assert "unsure boundary" not in row["reason"]
    assert (row["soft_dice_near"], row["far_share"], row["removed_share"]) == (0.96, 0.4, 0.3)
    # a sidecar from before soft_dice_near: the boundary is judged by soft_dice
    old = {k: v for k, v in cls.items() if k not in ("soft_dice_near", "far_share", "removed_share")}
    row = case_review("c", {"scan": dict(REFERENCE["scan"]), "classes": {"liver": old}}, {"reference": REFERENCE})[0]
    assert "unsure boundary (soft Dice 0.62)" in row["reason"]
