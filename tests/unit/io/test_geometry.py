"""Canonical orientation and the golden geometry round trip (preprocess -> reassemble)."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from unet_pipeline.io.geometry import canonical_orientation
from unet_pipeline.preprocess.transform import preprocess_image, preprocess_label
from unet_pipeline.infer.reassembly import reassemble_case

from ...conftest import save_nifti

ALL_ORNTS = [np.array([[axis, flip] for axis, flip in zip(perm, flips)], dtype=float)
             for perm in itertools.permutations(range(3)) for flips in itertools.product((1, -1), repeat=3)]


def _stored_version(base: np.ndarray, base_affine: np.ndarray, ornt: np.ndarray):
    """The same physical volume stored with voxel axes ``ornt`` (world axis, flip) w.r.t. RAS."""
    transform = ornt_transform(axcodes2ornt("RAS"), ornt)
    stored = np.ascontiguousarray(apply_orientation(base, transform))
    affine = base_affine @ inv_ornt_aff(transform, base.shape)
    return stored, affine


def _plan(spacing_yx):
    return {"target_spacing_mm": list(spacing_yx), "num_classes": 3,
            "intensity": {"p00_5": -1000.0, "p99_5": 1000.0, "mean": 0.0, "std": 100.0}}


def _round_trip(tmp_path, label: np.ndarray, affine: np.ndarray, target_yx=None, name="c"):
    """Preprocess image + label, feed the preprocessed label back as one-hot probabilities, reassemble."""
    img_path = save_nifti(tmp_path / f"{name}_img.nii.gz", (label.astype(np.int16) * 100 - 500), affine)
    lab_path = save_nifti(tmp_path / f"{name}_lab.nii.gz", label, affine)
    orient = canonical_orientation(affine, label.shape)
    spacing = orient.canonical_spacing
    plan = _plan(target_yx or spacing[1:])
    meta = preprocess_image(img_path, plan, tmp_path / name, case_id=name)
    preprocess_label(lab_path, meta, tmp_path / name / "label.npy")
    lab_pre = np.load(tmp_path / name / "label.npy")
    probs = np.eye(3, dtype=np.float16)[lab_pre].transpose(0, 3, 1, 2)  # (Z, K, Y, X) one-hot
    np.save(tmp_path / f"{name}_probs.npy", probs)
    out = tmp_path / f"{name}_seg.nii.gz"
    reassemble_case(tmp_path / f"{name}_probs.npy", tmp_path / name / "meta.json", img_path, out, num_classes=3)
    return nib.load(str(img_path)), nib.load(str(out)), lab_pre


def _blob_label(shape):
    rng = np.random.default_rng(1)
    label = np.zeros(shape, np.uint8)
    label[2:7, 3:9, 1:4] = 1
    label[8:11, 1:5, 2:] = 2
    label[rng.random(shape) < 0.05] = 2  # scattered voxels: any shift or flip shows up
    return label


@pytest.mark.parametrize("ornt", ALL_ORNTS, ids=lambda o: "".join(nib.orientations.ornt2axcodes(o)))
def test_golden_round_trip_all_48_orientations(tmp_path, ornt):
    base = _blob_label((13, 11, 5))
    base_affine = np.diag([0.7, 0.9, 3.0, 1.0])
    base_affine[:3, 3] = [-4.0, 7.0, 11.0]
    stored, affine = _stored_version(base, base_affine, ornt)
    img, seg, _ = _round_trip(tmp_path, stored, affine)
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-5)
    assert int(seg.header["qform_code"]) == int(img.header["qform_code"])
    assert int(seg.header["sform_code"]) == int(img.header["sform_code"])
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(seg.dataobj), stored)


def test_round_trip_oblique_anisotropic_single_slice_and_odd_sizes(tmp_path):
    # Oblique: a rotation of 20 degrees about z and 10 about x, strongly anisotropic spacing.
    rz, rx = np.deg2rad(20), np.deg2rad(10)
    rot_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    for name, shape, spacing, rot in [("oblique", (16, 12, 6), (0.5, 0.5, 5.0), rot_z @ rot_x),
                                      ("single", (9, 10, 1), (0.8, 0.8, 2.0), np.eye(3)),
                                      ("odd", (97, 131, 7), (0.6, 0.6, 2.5), np.eye(3))]:
        affine = np.eye(4)
        affine[:3, :3] = rot @ np.diag(spacing)
        affine[:3, 3] = [3.0, -2.0, 40.0]
        label = np.zeros(shape, np.uint8)
        label[: shape[0] // 2, : shape[1] // 3] = 1
        label[shape[0] // 2:, shape[1] // 2:] = 2
        label[np.random.default_rng(0).random(shape) < 0.03] = 1
        img, seg, _ = _round_trip(tmp_path, label, affine, name=name)
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), label, err_msg=name)


def test_same_scan_in_any_axis_order_gives_same_canonical_arrays(tmp_path):
    base = _blob_label((13, 11, 5))
    base_affine = np.diag([0.7, 0.9, 3.0, 1.0])
    results = []
    for i, codes in enumerate(["RAS", "LPS", "PIR", "SAL", "ILA"]):
        stored, affine = _stored_version(base, base_affine, axcodes2ornt(codes))
        _, _, lab_pre = _round_trip(tmp_path, stored, affine, target_yx=(0.6, 0.6), name=f"v{i}")
        results.append(lab_pre)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_slice_axis_is_the_plans_plane_not_the_thickest_axis():
    """Sliced along the dataset's plane (axial by default), whatever the case's own spacing."""
    affine = np.diag([3.0, 0.8, 0.8, 1.0])  # thick along R: the old largest-spacing rule sliced it sagittally
    o = canonical_orientation(affine, (10, 20, 30))
    assert o.slice_world_axis == "S" and o.canonical_shape == (30, 20, 10)  # (S, A, R)
    assert o.canonical_spacing == (0.8, 0.8, 3.0)
    sag = canonical_orientation(affine, (10, 20, 30), "sagittal")
    assert sag.slice_world_axis == "R" and sag.canonical_shape == (10, 30, 20)  # (R, S, A)
    cor = canonical_orientation(affine, (10, 20, 30), "coronal")
    assert cor.slice_world_axis == "A" and cor.canonical_shape == (20, 30, 10)  # (A, S, R)
    iso = canonical_orientation(np.eye(4), (4, 5, 6))
    assert iso.slice_world_axis == "S" and iso.canonical_shape == (6, 5, 4)
    with pytest.raises(ValueError, match="slice_axis"):
        canonical_orientation(affine, (10, 20, 30), "oblique")


def test_thin_slice_scan_is_sliced_axially():
    """0.5 mm slices, 0.8 mm pixels (modern thin-slice CT), stored in LPS order."""
    affine = np.diag([-0.8, -0.8, 0.5, 1.0])
    o = canonical_orientation(affine, (512, 512, 700))
    assert o.slice_world_axis == "S" and o.canonical_shape == (700, 512, 512)
    assert o.canonical_spacing == (0.5, 0.8, 0.8)


def test_oblique_thin_slice_scan_is_sliced_along_its_axis_nearest_superior_inferior():
    tilt = np.deg2rad(25)  # gantry tilt about R
    rot = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.8, 0.6])
    o = canonical_orientation(affine, (40, 50, 60))
    assert o.slice_world_axis == "S" and o.canonical_shape == (60, 50, 40)
    # Stored as (S, R, A): the slices still come from the voxel axis nearest S.
    perm = np.eye(4)[:, [2, 0, 1, 3]]
    o2 = canonical_orientation(affine @ perm, (60, 40, 50))
    assert o2.slice_world_axis == "S" and o2.axis_order == (0, 2, 1)


def test_mixed_cohort_and_a_thick_slice_model_on_a_thin_slice_scan_all_slice_axially(tmp_path):
    """A plan made from a 3 mm and a 0.5 mm case records one plane; a thin-slice scan preprocessed
    with that plan (as prediction with the model does) is cut axially too."""
    from unet_pipeline.plan.planner import make_plan

    from ...conftest import make_ct

    cases = []
    for name, spacing in (("thick", (0.8, 0.8, 3.0)), ("thin", (0.8, 0.8, 0.5))):
        image, label, affine = make_ct(shape=(24, 20, 12), spacing=spacing, seed=1)
        cases.append((name, save_nifti(tmp_path / f"{name}_i.nii.gz", image, affine),
                      save_nifti(tmp_path / f"{name}_l.nii.gz", label, affine)))
    plan = make_plan(cases, {1: "a", 2: "b"})
    assert plan["slice_axis"] == "axial"
    assert plan["cases"]["thin"]["shape"] == [12, 20, 24] and plan["cases"]["thin"]["spacing_mm"][0] == 0.5
    thick_plan = make_plan(cases[:1], {1: "a", 2: "b"})  # a model trained on 3 mm scans only
    for name, image_path, _ in cases:
        meta = preprocess_image(image_path, thick_plan, tmp_path / f"pre_{name}", case_id=name)
        assert meta["slice_axis"] == "axial" and meta["slice_world_axis"] == "S"
        assert meta["resampled_shape"][0] == 12
    coronal = make_plan(cases, {1: "a", 2: "b"}, slice_axis="coronal")
    meta = preprocess_image(cases[1][1], coronal, tmp_path / "pre_cor", case_id="thin")
    assert meta["slice_world_axis"] == "A" and meta["canonical_shape"][0] == 20


def test_degenerate_affine_raises():
    with pytest.raises(ValueError, match="finite 4x4"):
        canonical_orientation(np.full((4, 4), np.nan), (2, 2, 2))
