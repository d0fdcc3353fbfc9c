"""Review signals from probabilities (hand-computed values) and the training distribution."""

from __future__ import annotations

import numpy as np
import pytest

from unet_pipeline.quality.signals import SignalAccumulator, accumulate_signals, case_signals_from_files, \
    label_statistics, NearMasks, summarize_reference

INTENSITY = {"mean": 50.0, "std": 100.0}  # HU = 100 * z + 50


def _probs(label: np.ndarray, k: int, p: float) -> np.ndarray:
    """``(Z, K, Y, X)`` probabilities: ``p`` on the label's class, the rest shared equally."""
    out = np.full((label.shape[0], k, *label.shape[1:]), (1 - p) / (k - 1), np.float32)
    for c in range(k):
        out[:, c][label == c] = p
    return out


def _case():
    label = np.zeros((6, 10, 12), np.uint8)
    label[1:5, 2:6, 2:7] = 1  # 80 voxels
    label[0:2, 7:9, 8:10] = 2  # 8 voxels, reaches the first slice
    label[4:6, 7:9, 8:10] = 2  # a second piece of 8, reaches the last slice
    image = np.zeros(label.shape, np.float32)  # 50 HU
    image[label == 1] = 1.0  # 150 HU
    return label, image


def test_signals_of_a_certain_prediction_are_hand_computable():
    label, image = _case()
    acc = SignalAccumulator(label.shape, ["liver", "kidney"], (3.0, 1.0, 2.0), INTENSITY)
    acc.add(0, _probs(label, 3, 1.0), image)
    sig = acc.finish()
    liver, kidney = sig["classes"]["liver"], sig["classes"]["kidney"]
    assert liver["volume_ml"] == pytest.approx(80 * 6 / 1000) and kidney["volume_ml"] == pytest.approx(16 * 6 / 1000)
    assert liver["soft_dice"] == pytest.approx(1.0) and liver["mean_maxprob"] == pytest.approx(1.0)
    assert liver["soft_dice_near"] == pytest.approx(1.0) and liver["far_share"] == pytest.approx(0.0)
    assert liver["removed_share"] == 0.0 and liver["entropy"] == pytest.approx(0.0, abs=1e-5)
    assert liver["hu_median"] == 150.0 and kidney["hu_median"] == 50.0
    assert liver["max_area_mm2"] == 4 * 5 * 2.0 and kidney["max_area_mm2"] == 2 * 2 * 2.0  # largest slice, mm²
    assert (liver["n_components"], liver["largest_share"], liver["edge_slices"]) == (1, 1.0, False)
    assert (kidney["n_components"], kidney["largest_share"], kidney["edge_slices"]) == (2, 0.5, True)
    # a noiseless image: most neighbours along x are equal, so the median difference is 0
    assert sig["scan"] == {"slices": 6, "slice_thickness_mm": 3.0, "pixel_mm": 1.0, "z_extent_mm": 18.0,
                           "body_hu_median": 50.0, "noise_hu": 0.0}


def test_soft_dice_counts_probability_outside_the_structure():
    """p = 0.8 on every voxel's class, 0.1 elsewhere: inside 80 x 0.8, everywhere 80 x 0.8 + 640 x 0.1."""
    label, image = _case()
    label[label == 2] = 0
    acc = SignalAccumulator(label.shape, ["liver", "kidney"], (1.0, 1.0, 1.0), INTENSITY)
    acc.add(0, _probs(label, 3, 0.8), image)
    liver = acc.finish()["classes"]["liver"]
    inside, total = 80 * 0.8, 80 * 0.8 + (label.size - 80) * 0.1
    assert liver["soft_dice"] == pytest.approx(2 * inside / (total + 80), rel=1e-5)
    assert liver["mean_maxprob"] == pytest.approx(0.8)
    expected_entropy = -(0.8 * np.log(0.8) + 2 * 0.1 * np.log(0.1)) / np.log(3)
    assert liver["entropy"] == pytest.approx(expected_entropy, rel=1e-5)


def test_chunked_equals_one_pass_and_files_equal_arrays(tmp_path):
    import json

    label, image = _case()
    probs = _probs(label, 3, 0.7)
    one = SignalAccumulator(label.shape, ["a", "b"], (2.0, 1.0, 1.0), INTENSITY)
    one.add(0, probs, image)
    chunked = SignalAccumulator(label.shape, ["a", "b"], (2.0, 1.0, 1.0), INTENSITY)
    for z0 in range(0, 6, 4):
        chunked.add(z0, probs[z0:z0 + 4], image[z0:z0 + 4])
    whole, parts = one.finish(), chunked.finish()
    assert whole["scan"] == parts["scan"]
    for name, values in whole["classes"].items():
        for key, value in values.items():
            assert parts["classes"][name][key] == pytest.approx(value, rel=1e-6), (name, key)
    np.save(tmp_path / "probs.npy", probs.astype(np.float16))
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "meta.json").write_text(json.dumps({"resampled_spacing_mm": [2.0, 1.0, 1.0],
                                                    "intensity": INTENSITY}), encoding="utf-8")
    from_files = case_signals_from_files(tmp_path / "probs.npy", tmp_path, ["a", "b"])
    a, b = from_files["classes"]["a"], one.finish()["classes"]["a"]
    assert a["volume_ml"] == b["volume_ml"] and a["soft_dice"] == pytest.approx(b["soft_dice"], rel=1e-3)


def test_probabilities_of_the_wrong_shape_are_refused():
    acc = SignalAccumulator((2, 4, 4), ["a"], (1.0, 1.0, 1.0), INTENSITY)
    with pytest.raises(ValueError, match=r"probs must be \(n, 2, 4, 4\)"):
        acc.add(0, np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32))


def test_reference_summarizes_the_training_cases():
    label, image = _case()
    small = label.copy()
    small[small == 1] = 0
    stats = [label_statistics(label, image, (3.0, 1.0, 2.0), INTENSITY, ["liver", "kidney"]),
             label_statistics(small, image, (3.0, 1.0, 2.0), INTENSITY, ["liver", "kidney"])]
    ref = summarize_reference(stats)
    assert ref["n_cases"] == 2
    assert ref["classes"]["liver"]["present_share"] == 0.5  # the second case lacks it
    assert ref["classes"]["liver"]["volume_ml_median"] == pytest.approx(0.48)  # over the cases holding it
    assert ref["classes"]["kidney"]["volume_ml_min"] == pytest.approx(0.096)
    assert ref["classes"]["liver"]["hu_median"] == 150.0
    assert ref["classes"]["liver"]["max_area_mm2_min"] == 40.0 and ref["classes"]["kidney"]["max_area_mm2_min"] == 8.0
    assert ref["classes"]["liver"]["edge_share"] == 0.0 and ref["classes"]["kidney"]["edge_share"] == 1.0
    assert ref["scan"]["slice_thickness_mm"] == 3.0 and ref["scan"]["z_extent_mm"] == 18.0
    with pytest.raises(ValueError, match="at least one training case"):
        summarize_reference([])


def test_the_review_judges_the_segmentation_after_postprocessing(tmp_path):
    """A 2-voxel stray piece of "a" that the minimum volume removes is not in the signals."""
    import json

    from unet_pipeline.quality.signals import segmentation_on_grid

    label, image = _case()
    label[label == 2] = 0
    label[0, 0, 0:2] = 1  # a stray piece, 2 voxels of 2 mm³
    probs = _probs(label, 3, 0.9)
    np.save(tmp_path / "probs.npy", probs.astype(np.float16))
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "meta.json").write_text(json.dumps({"resampled_spacing_mm": [2.0, 1.0, 1.0],
                                                    "intensity": INTENSITY}), encoding="utf-8")
    raw = case_signals_from_files(tmp_path / "probs.npy", tmp_path, ["a", "b"])["classes"]["a"]
    final = segmentation_on_grid(tmp_path / "probs.npy", tmp_path, ["a", "b"], {"a": {"min_volume_ml": 0.1}})
    assert int((final == 1).sum()) == 80
    kept = case_signals_from_files(tmp_path / "probs.npy", tmp_path, ["a", "b"], final)["classes"]["a"]
    assert (raw["n_components"], kept["n_components"]) == (2, 1)
    assert raw["volume_ml"] == pytest.approx(82 * 2 / 1000) and kept["volume_ml"] == pytest.approx(80 * 2 / 1000)


def test_soft_dice_near_leaves_out_probability_far_from_the_structure():
    """A 2x2x2 structure at p = 1 and a far patch of 100 voxels at p = 0.4 (background wins there)."""
    label = np.zeros((12, 30, 30), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    probs = _probs(label, 2, 1.0)
    probs[8:12, 1, 20:25, 20:25] = 0.4  # 20 mm away along each axis at 1 mm spacing
    probs[8:12, 0, 20:25, 20:25] = 0.6
    sig = accumulate_signals(probs, np.zeros(label.shape, np.float32), ["a"], (1.0, 1.0, 1.0), INTENSITY,
                             label)["classes"]["a"]
    assert sig["soft_dice"] == pytest.approx(2 * 8 / (8 + 40 + 8))
    assert sig["soft_dice_near"] == pytest.approx(1.0)
    assert sig["far_share"] == pytest.approx(40 / 48)


def test_near_masks_are_a_box_of_the_margin_in_mm_along_each_axis():
    label = np.zeros((9, 11, 11), np.uint8)
    label[4, 5, 5] = 1
    masks = NearMasks(label, 3, (2.0, 1.0, 1.0), margin_mm=3.0)  # 2 slices (ceil 1.5) and 3 pixels either side
    near = masks(1)
    assert near.shape == (9, 11, 11) and not masks(2).any()  # class 2 is absent
    zs, ys, xs = np.nonzero(near)
    assert (zs.min(), zs.max(), ys.min(), ys.max(), xs.min(), xs.max()) == (2, 6, 2, 8, 2, 8)
    assert near.sum() == 5 * 7 * 7
    # a block of rows sees the structure in the slices beyond it
    assert np.array_equal(masks(1, slice(0, 3)), near[0:3])


def test_noise_is_measured_in_soft_tissue_and_falls_when_blurred():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    hu = 40.0 + rng.normal(0.0, 20.0, (8, 64, 64))
    hu[:, :, :8] = -1000.0  # air on one side is not soft tissue
    z = ((hu - INTENSITY["mean"]) / INTENSITY["std"]).astype(np.float32)
    label = np.zeros(hu.shape, np.uint8)
    probs = _probs(label, 2, 1.0)
    noisy = accumulate_signals(probs, z, ["a"], (1.0, 1.0, 1.0), INTENSITY)["scan"]["noise_hu"]
    assert noisy == pytest.approx(20.0, rel=0.05)
    blurred = ndimage.gaussian_filter(z, (0, 2, 2))
    smooth = accumulate_signals(probs, blurred, ["a"], (1.0, 1.0, 1.0), INTENSITY)["scan"]["noise_hu"]
    assert smooth < 0.25 * noisy
    stats = label_statistics(label, z, (1.0, 1.0, 1.0), INTENSITY, ["a"])
    assert stats["scan"]["noise_hu"] == pytest.approx(noisy)
    assert summarize_reference([stats])["scan"]["noise_hu"] == pytest.approx(noisy)


def test_removed_share_is_the_part_of_the_raw_argmax_the_postprocessing_dropped():
    label, image = _case()
    label[label == 2] = 0
    raw = label.copy()
    raw[0, 0, 0:10] = 1  # 10 stray voxels the network predicted; the judged segmentation lacks them
    probs = _probs(raw, 3, 0.9)
    sig = accumulate_signals(probs, image, ["a", "b"], (1.0, 1.0, 1.0), INTENSITY, label)["classes"]["a"]
    assert sig["volume_ml"] == pytest.approx(0.08) and sig["removed_share"] == pytest.approx(10 / 90)


def test_near_masks_by_boxes_equal_a_dilation_of_the_whole_volume():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    label = np.zeros((20, 30, 40), np.uint8)
    for k, n in ((1, 12), (2, 3), (4, 1)):  # class 3 absent
        for _ in range(n):
            z, y, x = rng.integers(0, 20), rng.integers(0, 30), rng.integers(0, 40)
            label[z:z + 2, y:y + 3, x:x + 2] = k
    spacing = (2.5, 0.7, 0.9)
    radius = [int(np.ceil(4.0 / s)) for s in spacing]
    masks = NearMasks(label, 5, spacing, 4.0)
    for k in range(1, 5):
        expected = ndimage.maximum_filter((label == k).astype(np.uint8), size=[2 * r + 1 for r in radius],
                                          mode="constant") > 0
        for rows in (slice(0, 20), slice(0, 7), slice(7, 16), slice(16, 20)):
            assert np.array_equal(masks(k, rows), expected[rows]), (k, rows)


def test_the_argmax_of_the_signals_is_numpys():
    from unet_pipeline.model.tiling import class_argmax

    p = np.random.default_rng(0).random((3, 5, 8, 9)).astype(np.float32)
    p[0, 2] = p[0, 4]  # ties: the first index, as numpy
    assert np.array_equal(class_argmax(p), p.argmax(axis=1))
