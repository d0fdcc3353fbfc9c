"""The review record written at training: reference, calibration on degraded copies, feature correlations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from unet_pipeline.quality.fit import DEGRADATIONS, degrade, review_record

INTENSITY = {"mean": 0.0, "std": 100.0}


def _case(case_id, seed):
    rng = np.random.default_rng(seed)
    label = np.zeros((6, 32, 32), np.uint8)
    label[1:5, 6:20, 6:20] = 1
    label[2:5, 22:28, 22:28] = 2
    image = rng.normal(0.0, 0.05, label.shape).astype(np.float32)
    image[label == 1] += 1.0
    image[label == 2] += 2.0
    return SimpleNamespace(case_id=case_id, image=image, label=label, pad_value=-3.0)


def _threshold_model(image, pad_value):
    """A 'network' that thresholds the z-scores: noise, blur and shifts spoil it as they would a real one."""
    for z0 in range(0, image.shape[0], 4):
        x = image[z0:z0 + 4]
        logits = np.stack([np.zeros_like(x), 8 * (x - 0.5) - 8 * np.clip(x - 1.5, 0, None) * 2, 8 * (x - 1.5)], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        yield z0, e / e.sum(1, keepdims=True)


def test_degradations_do_what_they_say():
    image = np.zeros((2, 16, 16), np.float32)
    image[:, 8:, :] = 1.0
    assert np.array_equal(degrade(image, "none", 100.0), image)
    assert degrade(image, "shift_+60hu", 100.0) == pytest.approx(image + 0.6)
    noisy = degrade(image, "noise_80hu", 100.0)
    assert np.std(noisy - image) == pytest.approx(0.8, rel=0.1)
    blurred = degrade(image, "blur_2px", 100.0)
    assert 0.0 < blurred[0, 7, 0] < 0.5 < blurred[0, 8, 0] < 1.0 and np.allclose(blurred[0], blurred[1])
    with pytest.raises(ValueError, match="degradation must be one of"):
        degrade(image, "melt", 100.0)
    with pytest.raises(ValueError, match="hu_per_unit must be > 0"):
        degrade(image, "none", 0.0)


def test_review_record_fits_on_the_validation_cases_and_measures_every_feature():
    train, val = [_case("t0", 0), _case("t1", 1)], [_case("v0", 2)]
    record = review_record(_threshold_model, train, val, class_names=["liver", "kidney"],
                           spacing_of=lambda cid: (3.0, 1.0, 1.0), intensity=INTENSITY)
    ref = record["reference"]
    assert ref["n_cases"] == 2 and ref["classes"]["liver"]["volume_ml_median"] == pytest.approx(4 * 14 * 14 * 3 / 1000)
    cal = record["calibration"]
    assert cal["fitted_on"] == "validation cases" and cal["n_cases"] == 1
    assert cal["degradations"] == list(DEGRADATIONS)
    # One row per copy and class predicted in it (a class the copy wipes out has no signals to fit).
    assert len(DEGRADATIONS) < cal["n_rows"] <= 2 * len(DEGRADATIONS)
    assert cal["dice_range"][0] < cal["dice_range"][1]  # the degradations spread the Dice
    assert set(record["feature_spearman"]) >= {"soft_dice", "mean_maxprob"}


def test_review_record_without_validation_cases_says_the_fit_is_on_training_cases():
    record = review_record(_threshold_model, [_case("t0", 0)], [], class_names=["liver", "kidney"],
                           spacing_of=lambda cid: (3.0, 1.0, 1.0), intensity=INTENSITY)
    assert record["calibration"]["fitted_on"].startswith("training cases")
