"""Preprocessing: resampling, normalisation, the plan, and the preprocessed files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import make_ct, save_nifti
from unet_pipeline.io.geometry import Orientation
from unet_pipeline.io.geometry import resampled_size
from unet_pipeline.plan.planner import make_plan
from unet_pipeline.preprocess.transform import normalise, preprocess_image, preprocess_label, resample_slices


def test_constant_image_stays_constant_and_labels_keep_their_values():
    const = np.full((2, 30, 40), 7.5, np.float32)
    out = resample_slices(const, (45, 60), mode="linear")
    assert out.shape == (2, 45, 60) and torch.allclose(out, torch.tensor(7.5))
    labels = np.random.default_rng(0).integers(0, 4, (2, 30, 40)).astype(np.uint8)
    lab = resample_slices(labels, (17, 23), mode="nearest")
    assert lab.dtype == torch.uint8 and set(lab.unique().tolist()) <= {0, 1, 2, 3}


def test_linear_ramp_keeps_its_slope_in_mm():
    """A ramp of 1 per pixel at 1 mm, upsampled to 0.5 mm, rises 0.5 per pixel (away from the edges)."""
    ramp = np.tile(np.arange(40, dtype=np.float32), (1, 20, 1))
    out = resample_slices(ramp, (40, 80), mode="linear")[0].numpy()
    assert np.allclose(np.diff(out[10, 4:-4]), 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        resample_slices(ramp, (10, 10), mode="cubic")


def test_resampled_size():
    assert resampled_size((512, 400), (0.7, 0.8), (1.4, 1.6)) == (256, 200)
    assert resampled_size((1, 1), (0.5, 0.5), (10, 10)) == (1, 1)


def test_normalise_clips_and_z_scores():
    x = np.array([-1000, 0, 50, 100, 3000], np.float32)
    out = normalise(x, {"p00_5": 0.0, "p99_5": 100.0, "mean": 50.0, "std": 25.0})
    assert out.dtype == np.float32 and out.tolist() == [-2.0, -2.0, 0.0, 2.0, 2.0]
    t = normalise(torch.from_numpy(x), {"p00_5": 0.0, "p99_5": 100.0, "mean": 50.0, "std": 25.0})
    assert t.tolist() == out.tolist()


def _cases(tmp_path, n=2):
    cases = []
    for i in range(n):
        image, label, affine = make_ct(shape=(24, 20, 6), spacing=(0.8 + 0.2 * i, 0.8 + 0.2 * i, 3.0), seed=i)
        ip = save_nifti(tmp_path / f"i{i}.nii.gz", image, affine)
        lp = save_nifti(tmp_path / f"l{i}.nii.gz", label, affine)
        cases.append((f"c{i}", ip, lp, image, label))
    return cases


def test_plan_from_training_cases(tmp_path):
    cases = _cases(tmp_path)
    plan = make_plan([c[:3] for c in cases], {1: "a", 2: "b"}, intensity="foreground")
    assert plan["num_classes"] == 3 and plan["labels"] == {"1": "a", "2": "b"}
    assert plan["target_spacing_mm"] == pytest.approx([0.9, 0.9])  # median of 0.8 and 1.0
    fg = np.concatenate([c[3][c[4] > 0].astype(np.float32) for c in cases])
    assert plan["intensity"]["p00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert plan["intensity"]["p99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert all(p % 16 == 0 for p in plan["patch_size"])
    assert plan["median_slice_thickness_mm"] == pytest.approx(3.0)
    # Label maps with gaps are classes too: class index k stands for the k-th smallest value.
    gapped = make_plan([c[:3] for c in cases], {1: "a", 3: "c"})
    assert gapped["label_values"] == [1, 3] and gapped["num_classes"] == 3
    with pytest.raises(ValueError, match="label values"):
        make_plan([c[:3] for c in cases], {0: "background"})


def test_label_values_with_gaps_become_class_indices_and_come_back(tmp_path):
    """{2: a, 7: b}: the network sees classes 1, 2; the segmentation holds 2 and 7 again."""
    from unet_pipeline.errors import CaseError
    from unet_pipeline.infer.reassembly import probabilities_to_labels

    image, label, affine = make_ct(shape=(24, 20, 6), spacing=(1.0, 1.0, 3.0))
    gapped = np.where(label == 1, 2, np.where(label == 2, 7, 0)).astype(np.uint8)
    ip = save_nifti(tmp_path / "img.nii.gz", image, affine)
    lp = save_nifti(tmp_path / "lab.nii.gz", gapped, affine)
    plan = {"target_spacing_mm": [1.0, 1.0], "labels": {"2": "a", "7": "b"},
            "intensity": {"p00_5": -1000.0, "p99_5": 500.0, "mean": 0.0, "std": 100.0}}
    meta = preprocess_image(ip, plan, tmp_path / "pre", case_id="x")
    assert meta["label_values"] == [2, 7]
    preprocess_label(lp, meta, tmp_path / "pre" / "label.npy")
    indices = np.load(tmp_path / "pre" / "label.npy")
    canonical = np.asarray(Orientation.from_dict(meta["orientation"]).to_canonical(gapped))
    np.testing.assert_array_equal(indices, np.select([canonical == 2, canonical == 7], [1, 2], 0))
    one_hot = np.eye(3, dtype=np.float32)[indices].transpose(0, 3, 1, 2)  # (Z, K, Y, X) from the indices
    back = probabilities_to_labels(one_hot, tuple(meta["canonical_shape"]), 3, meta["label_values"])
    np.testing.assert_array_equal(back, canonical)
    bad = save_nifti(tmp_path / "bad.nii.gz", np.where(gapped == 7, 5, gapped).astype(np.uint8), affine)
    with pytest.raises(CaseError, match=r"bad\.nii\.gz.*\[5\] are not declared classes \[2, 7\]"):
        preprocess_label(bad, meta, tmp_path / "pre" / "bad.npy")
    assert not (tmp_path / "pre" / "bad.npy").exists()


def test_preprocessed_files(tmp_path):
    cases = _cases(tmp_path, 1)
    plan = make_plan([cases[0][:3]], {1: "a", 2: "b"}, target_spacing_mm=[1.6, 1.6])
    meta = preprocess_image(cases[0][1], plan, tmp_path / "pre", case_id="c0")
    image = np.load(tmp_path / "pre" / "image.npy", mmap_mode="r")
    assert image.dtype == np.float32 and image.shape == tuple(meta["resampled_shape"])
    # canonical (Z, Y, X) = (S, A, R): stored (i=R 24, j=A 20, k=S 6) at 0.8 mm -> (6, 10, 12) at 1.6 mm
    assert image.shape == (6, 10, 12)
    assert json.loads((tmp_path / "pre" / "meta.json").read_text(encoding="utf-8"))["case_id"] == "c0"
    preprocess_label(cases[0][2], meta, tmp_path / "pre" / "label.npy")
    label = np.load(tmp_path / "pre" / "label.npy")
    assert label.dtype == np.uint8 and label.shape == image.shape and set(np.unique(label)) <= {0, 1, 2}
    # the organ (HU 120, label 1) is brighter than the body (HU 40) after normalisation
    assert image[label == 1].mean() > image[label == 0].mean()


def test_label_of_another_shape_names_the_file(tmp_path):
    cases = _cases(tmp_path, 1)
    plan = make_plan([cases[0][:3]], {1: "a", 2: "b"})
    meta = preprocess_image(cases[0][1], plan, tmp_path / "pre", case_id="c0")
    wrong = save_nifti(tmp_path / "wrong.nii.gz", np.zeros((24, 20, 5), np.uint8), nib.load(str(cases[0][1])).affine)
    with pytest.raises(ValueError, match="wrong.nii.gz"):
        preprocess_label(wrong, meta, tmp_path / "pre" / "label.npy")


def test_plan_intensity_schemes_clip_where_they_say(tmp_path):
    """foreground: percentiles of the labelled voxels; body: of every voxel above -500 HU (fat and
    bone included); window: the fixed HU window. The z-score is the clipped foreground's in each."""
    cases = _cases(tmp_path)
    triples = [c[:3] for c in cases]
    fg = np.concatenate([c[3][c[4] > 0].astype(np.float32) for c in cases])
    body = np.concatenate([c[3][c[3] > -500].astype(np.float32) for c in cases])
    by_fg = make_plan(triples, {1: "a", 2: "b"}, intensity="foreground")["intensity"]
    assert make_plan(triples, {1: "a", 2: "b"})["intensity"]["scheme"] == "body"  # the default
    by_body = make_plan(triples, {1: "a", 2: "b"}, intensity="body")["intensity"]
    by_window = make_plan(triples, {1: "a", 2: "b"}, intensity="window", hu_window=[-150, 250])["intensity"]
    assert by_fg["scheme"] == "foreground" and by_fg["p00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert by_body["p00_5"] == pytest.approx(np.percentile(body, 0.5))
    assert by_body["p99_5"] == pytest.approx(np.percentile(body, 99.5)) and by_body["p00_5"] < by_fg["p00_5"]
    assert (by_window["p00_5"], by_window["p99_5"]) == (-150.0, 250.0)
    assert by_window["mean"] == pytest.approx(np.clip(fg, -150, 250).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="hu_window"):
        make_plan(triples, {1: "a", 2: "b"}, intensity="window")
    with pytest.raises(ValueError, match="plan.intensity"):
        make_plan(triples, {1: "a", 2: "b"}, intensity="percentile")


def test_automatic_patch_is_capped_in_pixels_and_in_millimetres():
    from unet_pipeline.plan.planner import _median_patch

    shapes = np.array([[30, 512, 400], [30, 512, 400]])  # (Z, Y, X) px
    fine, coarse = np.array([[3.0, 0.8, 0.8]] * 2), np.array([[3.0, 3.0, 3.0]] * 2)
    # 0.8 mm: 512 x 400 px; 192 mm / 0.8 mm = 240 px
    assert _median_patch(shapes, fine, [0.8, 0.8], max_patch=256, max_patch_mm=192.0, divisor=16) == [240, 240]
    assert _median_patch(shapes, fine, [0.8, 0.8], max_patch=256, max_patch_mm=None, divisor=16) == [256, 256]
    # 3 mm: 192 mm = 64 px; a slice smaller than the cap keeps its own (rounded) size
    assert _median_patch(shapes, coarse, [3.0, 3.0], max_patch=256, max_patch_mm=192.0, divisor=16) == [64, 64]
    small = np.array([[30, 40, 50]] * 2)
    assert _median_patch(small, coarse, [3.0, 3.0], max_patch=256, max_patch_mm=192.0, divisor=16) == [48, 64]
    # never below two multiples of the divisor, whatever the mm limit
    assert _median_patch(shapes, coarse, [3.0, 3.0], max_patch=256, max_patch_mm=10.0, divisor=16) == [32, 32]
