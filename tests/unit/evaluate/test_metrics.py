"""Metrics: hand-made masks with known answers, the empty-mask policy, agreement with MONAI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from unet_pipeline.evaluate.metrics import EMPTY_POLICY, case_metrics, summarize

LABELS = {1: "a"}


def _cube(shape, start, size, value=1):
    arr = np.zeros(shape, np.uint8)
    arr[tuple(slice(s, s + size) for s in start)] = value
    return arr


def test_half_overlapping_cubes_have_dice_one_half():
    ref = _cube((30, 30, 30), (5, 5, 5), 10)
    pred = _cube((30, 30, 30), (10, 5, 5), 10)  # shifted by half the side
    (row,) = case_metrics(pred, ref, (1, 1, 1), LABELS)
    assert row["dice"] == pytest.approx(0.5)
    assert row["iou"] == pytest.approx(1 / 3)
    assert row["precision"] == pytest.approx(0.5) and row["recall"] == pytest.approx(0.5)


def test_identical_masks():
    ref = _cube((20, 20, 20), (3, 4, 5), 7)
    (row,) = case_metrics(ref, ref, (0.7, 0.7, 2.5), LABELS)
    assert row["dice"] == 1.0 and row["hd_mm"] == 0.0 and row["hd95_mm"] == 0.0 and row["assd_mm"] == 0.0
    assert row["nsd"] == 1.0 and row["empty_policy"] == ""


def test_shift_along_an_anisotropic_axis_gives_distances_in_mm():
    ref = _cube((20, 20, 20), (5, 5, 5), 8)
    pred = _cube((20, 20, 20), (5, 5, 7), 8)  # 2 voxels along the 3 mm axis
    (row,) = case_metrics(pred, ref, (1.0, 1.0, 3.0), LABELS, nsd_tolerance_mm=2.0)
    assert row["hd_mm"] == pytest.approx(6.0)
    assert 0 < row["nsd"] < 1  # the shifted end faces are 6 mm apart, the side faces touch


def test_volumes_in_millilitres():
    ref = _cube((20, 20, 20), (0, 0, 0), 10)  # 1000 voxels of 2 x 2 x 2.5 mm = 10 mL
    pred = _cube((20, 20, 20), (0, 0, 0), 5)  # 125 voxels = 1.25 mL
    (row,) = case_metrics(pred, ref, (2.0, 2.0, 2.5), LABELS)
    assert row["vol_ref_ml"] == pytest.approx(10.0) and row["vol_pred_ml"] == pytest.approx(1.25)
    assert row["vol_diff_ml"] == pytest.approx(-8.75)


def test_empty_mask_policy():
    empty = np.zeros((10, 10, 10), np.uint8)
    full = _cube((10, 10, 10), (2, 2, 2), 4)
    (both,) = case_metrics(empty, empty, (1, 1, 1), LABELS)
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0 and both["nsd"] == 1.0 and both["empty_policy"] == "both_empty"
    (missed,) = case_metrics(empty, full, (1, 1, 1), LABELS)
    assert missed["dice"] == 0.0 and math.isnan(missed["hd95_mm"]) and missed["pred_empty"] and missed["nsd"] == 0.0
    (spurious,) = case_metrics(full, empty, (1, 1, 1), LABELS)
    assert spurious["dice"] == 0.0 and math.isnan(spurious["assd_mm"]) and spurious["empty_policy"] == "ref_empty"
    assert "both empty" in EMPTY_POLICY


def test_rows_follow_the_label_order_and_values():
    ref = _cube((12, 12, 12), (1, 1, 1), 4, value=2) + _cube((12, 12, 12), (6, 6, 6), 4, value=1)
    rows = case_metrics(ref, ref, (1, 1, 1), {2: "spleen", 1: "liver", 3: "absent"})
    assert [r["label"] for r in rows] == ["spleen", "liver", "absent"]
    assert [r["label_id"] for r in rows] == [2, 1, 3]
    assert rows[2]["empty_policy"] == "both_empty"


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="differs from reference shape"):
        case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), (1, 1, 1), LABELS)
    with pytest.raises(ValueError, match="spacing_mm"):
        case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 1), LABELS)
    with pytest.raises(ValueError, match="no value for class"):
        case_metrics(_cube((5, 5, 5), (1, 1, 1), 2), _cube((5, 5, 5), (1, 1, 1), 3), (1, 1, 1), LABELS, {"b": 1.0})


def _blob(rng, shape, touch_border=False):
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3)
    mask = noise > np.percentile(noise, 85)
    if touch_border:
        mask[0] = True
    return mask.astype(np.uint8)


@pytest.mark.parametrize("seed,spacing", [(0, (1.0, 1.0, 1.0)), (1, (0.7, 0.7, 3.0)), (2, (2.5, 0.8, 0.6)),
                                          (3, (0.5, 1.5, 1.0))])
def test_agrees_with_monai(seed, spacing):
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_surface_dice)

    rng = np.random.default_rng(seed)
    shape = (40, 36, 28)
    ref = _blob(rng, shape, touch_border=seed == 3)
    pred = _blob(rng, shape)
    (row,) = case_metrics(pred, ref, spacing, LABELS, nsd_tolerance_mm=1.5)

    def onehot(a):
        return torch.from_numpy(np.stack([a == 0, a == 1]).astype(np.float32))[None]

    p, r = onehot(pred), onehot(ref)
    dice = compute_dice(p, r, include_background=False).item()
    hd = compute_hausdorff_distance(p, r, spacing=spacing).item()
    hd95 = compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).item()
    assd = compute_average_surface_distance(p, r, symmetric=True, spacing=spacing).item()
    nsd = compute_surface_dice(p, r, class_thresholds=[1.5], spacing=spacing).item()
    for ours, theirs in ((row["dice"], dice), (row["hd_mm"], hd), (row["hd95_mm"], hd95),
                         (row["assd_mm"], assd), (row["nsd"], nsd)):
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)


def test_summary_statistics_and_json_safety():
    rows = [{"case": f"c{i}", "label": "liver", "dice": d, "iou": d, "hd95_mm": h, "assd_mm": h, "nsd": d,
             "empty_policy": p}
            for i, (d, h, p) in enumerate([(0.8, 2.0, ""), (0.9, 4.0, ""), ("1.0", "", ""), (0.0, float("nan"), "pred_empty")])]
    summary = summarize(rows, n_bootstrap=500, seed=1)
    liver = summary["liver"]
    assert liver["n_cases"] == 4
    assert liver["dice"]["mean"] == pytest.approx(0.675) and liver["dice"]["median"] == pytest.approx(0.85)
    lo, hi = liver["dice"]["ci95"]
    assert lo <= liver["dice"]["mean"] <= hi
    assert liver["hd95_mm"]["n"] == 2 and liver["hd95_mm"]["mean"] == pytest.approx(3.0)  # NaN and "" left out
    assert liver["n_nan_hd95"] == 2 and liver["empty"]["pred_empty"] == 1
    json.dumps(summary, allow_nan=False)
    assert summarize(rows, n_bootstrap=500, seed=1) == summary  # seeded
