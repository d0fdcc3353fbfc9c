"""Context signals: the network's view around a structure against the training cases' (another body region)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unet_pipeline.model.unet import UNetConfig, build_unet
from unet_pipeline.quality.context import (ABSENT_DISTANCE, CONTEXT_FILE, FACTOR, class_context, fit_context, load_context,
                                           save_context, slice_descriptors)
from unet_pipeline.quality.review import ABSENT_DICE, case_review

NAMES = ["organ"]


def _model(padded: bool = True, in_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(UNetConfig(num_classes=2, in_channels=in_channels, base_channels=4, depth=2,
                                 padded=padded)).eval()


def _abdomen(n: int = 8, seed: int = 0) -> SimpleNamespace:
    """``(n, 32, 32)`` z-scores: a body disc with a bright organ on the left, the organ labelled 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 13 ** 2
    organ = (yy - 16) ** 2 + (xx - 11) ** 2 < (4 + np.arange(n)[:, None, None] % 3) ** 2
    image = np.where(body, 0.5, -2.0)[None].repeat(n, 0) + 0.05 * rng.standard_normal((n, 32, 32))
    image = np.where(organ, 1.5, image).astype(np.float32)
    return SimpleNamespace(case_id=f"c{seed}", image=image, label=organ.astype(np.uint8), pad_value=-2.0)


def _other_region(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Two separate 'legs' with a dense ring each, and a 'prediction' in one of them."""
    yy, xx = np.mgrid[:32, :32]
    image = np.full((n, 32, 32), -2.0, np.float32)
    labels = np.zeros((n, 32, 32), np.uint8)
    for cx in (8, 24):
        leg = (yy - 16) ** 2 + (xx - cx) ** 2 < 7 ** 2
        ring = np.abs(np.sqrt((yy - 16.0) ** 2 + (xx - cx) ** 2) - 2.5) < 1
        image[:, leg] = 0.4
        image[:, ring] = 6.0
    labels[:, ((yy - 16) ** 2 + (xx - 8) ** 2 < 6 ** 2) & ((yy - 16) ** 2 + (xx - 8) ** 2 > 4 ** 2)] = 1
    return image, labels


@pytest.mark.parametrize("padded,in_channels", [(True, 1), (True, 3), (False, 1)])
def test_descriptors_are_nan_where_the_class_is_not_and_the_padding_does_not_matter(padded, in_channels):
    case = _abdomen()
    label = case.label.copy()
    label[2] = 0
    d = slice_descriptors(_model(padded, in_channels), case.image, label, [1, 2, 3], 2, case.pad_value)
    assert d.shape[:2] == (3, 1) and np.isnan(d[1]).all() and np.isfinite(d[[0, 2]]).all()


def test_the_training_scans_are_familiar_and_another_body_region_is_not(tmp_path):
    model = _model()
    cases = [_abdomen(seed=0), _abdomen(seed=1)]
    record, tensors = fit_context(model, cases, NAMES)
    organ = record["classes"]["organ"]
    assert organ["n_slices"] == 16 and organ["n_cases"] == 2 and "other cases" in organ["fitted_on"]
    assert organ["threshold"] == pytest.approx(FACTOR * organ["own_distance_q95"], rel=1e-3)
    save_context(tmp_path, tensors)
    loaded = load_context(tmp_path)
    assert set(loaded) == {"organ", "organ.mean", "organ.scale"} and loaded["organ"].shape[0] == 16
    same = class_context(model, cases[0].image, cases[0].label, record, loaded, NAMES, -2.0)["organ"]
    assert same["context_distance"] == pytest.approx(0.0, abs=1e-4) and same["unfamiliar_share"] == 0.0
    image, labels = _other_region()
    other = class_context(model, image, labels, record, loaded, NAMES, -2.0)["organ"]
    assert other["context_distance"] > 1.0 and other["unfamiliar_share"] == 1.0


def test_one_training_case_compares_slices_further_apart_than_neighbours():
    record, _ = fit_context(_model(), [_abdomen(n=10)], NAMES)
    assert record["classes"]["organ"]["n_cases"] == 1 and "one case" in record["classes"]["organ"]["fitted_on"]


def test_a_class_without_a_reference_or_a_prediction_gets_no_context():
    model = _model()
    case = _abdomen()
    record, tensors = fit_context(model, [case], NAMES)
    assert class_context(model, case.image, np.zeros_like(case.label), record, tensors, NAMES, -2.0) == {}
    empty, _ = fit_context(model, [SimpleNamespace(**{**vars(case), "label": np.zeros_like(case.label)})], NAMES)
    assert empty["classes"] == {}


def test_a_missing_context_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONTEXT_FILE):
        load_context(tmp_path)


def _organ(volume_ml, area_mm2, distance, share):
    return {"volume_ml": volume_ml, "soft_dice": 0.95, "mean_maxprob": 0.97, "entropy": 0.05, "largest_share": 1.0,
            "n_components": 1, "max_area_mm2": area_mm2, "hu_median": 45.0, "context_distance": distance,
            "unfamiliar_share": share}


def test_an_unfamiliar_structure_is_ranked_as_probably_absent_whatever_its_softmax():
    """Another body region: every segmented class looks unlike the training scans' around it."""
    scan = {"slice_thickness_mm": 3.0, "z_extent_mm": 90.0}
    signals = {"scan": scan, "classes": {"liver": _organ(1100.0, 9000.0, 4.2, 0.9),
                                         "spleen": _organ(200.0, 4000.0, 1.5, 0.7)}}
    rows = {r["class"]: r for r in case_review("thigh", signals, None)}
    assert rows["liver"]["absent_suspected"] is True and rows["liver"]["predicted_dice"] <= ABSENT_DICE
    assert "another body region" in rows["liver"]["reason"] and "90%" in rows["liver"]["reason"]
    # under ABSENT_DISTANCE: a reason to look, not a verdict
    assert rows["spleen"]["absent_suspected"] is False and rows["spleen"]["predicted_dice"] > 0.5
    assert "surroundings unlike the training scans'" in rows["spleen"]["reason"]
    assert rows["liver"]["unfamiliar_share"] == 0.9 and rows["spleen"]["context_distance"] == 1.5


def test_far_surroundings_beside_a_familiar_structure_are_local_not_another_region():
    """The same liver in a scan whose spleen looks like training (streaks or a contrast phase
    around the liver): it keeps its estimate and gets the reason, the spleen gets none."""
    scan = {"slice_thickness_mm": 3.0, "z_extent_mm": 90.0}
    signals = {"scan": scan, "classes": {"liver": _organ(1100.0, 9000.0, 4.2, 0.9),
                                         "spleen": _organ(200.0, 4000.0, 0.4, 0.1)}}
    rows = {r["class"]: r for r in case_review("streaks", signals, None)}
    assert rows["liver"]["absent_suspected"] is False and rows["liver"]["predicted_dice"] > 0.5
    assert "surroundings unlike the training scans' (context distance 4.2x" in rows["liver"]["reason"]
    assert rows["spleen"]["absent_suspected"] is False and "surroundings" not in rows["spleen"]["reason"]
    # a class with nothing segmented does not count as familiar
    signals["classes"]["spleen"] = {**_organ(0.0, 0.0, float("nan"), float("nan"))}
    rows = {r["class"]: r for r in case_review("thigh", signals, None)}
    assert rows["liver"]["absent_suspected"] is True


def test_a_structure_somewhat_unlike_training_gets_a_reason_but_keeps_its_estimate():
    """Beyond the threshold but under ABSENT_DISTANCE of it (a strong contrast phase does that): a
    reason to look, not a verdict of absence."""
    cls = {"volume_ml": 1000.0, "soft_dice": 0.95, "mean_maxprob": 0.97, "entropy": 0.05, "largest_share": 1.0,
           "n_components": 1, "max_area_mm2": 9000.0, "hu_median": 45.0, "unfamiliar_share": 1.0}
    scan = {"slice_thickness_mm": 3.0, "z_extent_mm": 90.0}
    near = case_review("phase", {"scan": scan, "classes": {"liver": {**cls, "context_distance": ABSENT_DISTANCE - 0.5}}},
                       None)[0]
    far = case_review("thigh", {"scan": scan, "classes": {"liver": {**cls, "context_distance": ABSENT_DISTANCE}}},
                      None)[0]
    assert near["absent_suspected"] is False and near["predicted_dice"] > 0.5
    assert "surroundings unlike the training scans'" in near["reason"]
    assert far["absent_suspected"] is True and far["predicted_dice"] <= ABSENT_DICE
