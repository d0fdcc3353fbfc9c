"""Labels from RTSTRUCT and DICOM-SEG: polygon fill, contours on a CT grid, segments, discovery, import.

Synthetic series and structure sets (``tests/dicom_helpers.py``) have known answers; the real
ones in ``../shared/data`` are compared with their references (skipped when it is absent).
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_helpers import square, write_ct_series, write_rtstruct, write_seg
from unet_pipeline.cohort.discovery import CaseSpec, cohort_from_folders, cohort_from_manifest
from unet_pipeline.cohort.validation import check_case
from unet_pipeline.io.dicom import find_series, read_dicom_header, read_dicom_series
from unet_pipeline.io.dicom_labels import fill_polygons, is_dicom_label, read_dicom_label, read_dicom_label_info
from unet_pipeline.errors import CaseError
from unet_pipeline.io.images import load_image, read_voxels
from unet_pipeline.stages import import_case, import_label

ORIGIN, SPACING = (-20.0, -10.0, 50.0), (1.0, 1.0, 2.0)  # LPS mm; (column, row, slice) spacing
SHAPE = (4, 12, 16)  # (slices, rows, columns)


def _x(i: float) -> float:
    return ORIGIN[0] + i * SPACING[0]


def _y(j: float) -> float:
    return ORIGIN[1] + j * SPACING[1]


def _z(k: float) -> float:
    return ORIGIN[2] + k * SPACING[2]


def _box(i0, i1, j0, j1, k) -> np.ndarray:
    """A rectangle half a voxel outside the voxel centres ``i0..i1``, ``j0..j1`` (inclusive), on slice ``k``."""
    return square(_x(i0 - 0.5), _y(j0 - 0.5), _x(i1 + 0.5), _y(j1 + 0.5), _z(k))


@pytest.fixture
def ct(tmp_path):
    hu = np.full(SHAPE, -1000, np.int16)
    hu[:, 2:10, 2:14] = 40
    info = write_ct_series(tmp_path / "images" / "case1" / "ct", hu, spacing=SPACING, origin=ORIGIN)
    img = read_dicom_series(tmp_path / "images" / "case1" / "ct")
    return {**info, "folder": tmp_path / "images" / "case1", "img": img}


# ---------------------------------------------------------------------------------------------
# Polygon fill


def test_fill_square_covers_the_pixel_centres_inside():
    mask = fill_polygons([np.array([[1.5, 2.5], [1.5, 5.5], [4.5, 5.5], [4.5, 2.5]])], (7, 8))
    expected = np.zeros((7, 8), bool)
    expected[2:5, 3:6] = True
    np.testing.assert_array_equal(mask, expected)


def test_fill_even_odd_ring_with_hole_and_island():
    outer = np.array([[0.5, 0.5], [0.5, 8.5], [8.5, 8.5], [8.5, 0.5]])
    hole = np.array([[2.5, 2.5], [2.5, 6.5], [6.5, 6.5], [6.5, 2.5]])
    island = np.array([[3.5, 3.5], [3.5, 5.5], [5.5, 5.5], [5.5, 3.5]])
    expected = np.zeros((10, 10), bool)
    expected[1:9, 1:9] = True
    expected[3:7, 3:7] = False
    np.testing.assert_array_equal(fill_polygons([outer, hole], (10, 10)), expected)
    expected[4:6, 4:6] = True
    np.testing.assert_array_equal(fill_polygons([outer, hole[::-1], island], (10, 10)), expected)  # any winding


def test_fill_clips_at_the_grid_border_and_ignores_degenerate_polygons():
    mask = fill_polygons([np.array([[-3.0, -3.0], [-3.0, 1.5], [1.5, 1.5], [1.5, -3.0]]), np.zeros((2, 2))], (4, 4))
    expected = np.zeros((4, 4), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(mask, expected)


# ---------------------------------------------------------------------------------------------
# RTSTRUCT on a CT grid


def test_rtstruct_square_ring_and_reported_contours(ct, tmp_path):
    rois = {
        "Liver": [_box(3, 6, 2, 5, 1),  # a square on slice 1
                  _box(2, 9, 2, 9, 2), _box(4, 7, 4, 7, 2),  # a ring with a hole on slice 2
                  square(_x(3), _y(3), _x(5), _y(5), _z(2.5)),  # between slices 2 and 3
                  _box(3, 4, 3, 4, 9),  # beyond the last slice
                  ("OPEN_PLANAR", _box(3, 4, 3, 4, 0))],
        "BODY": [_box(0, 15, 0, 11, k) for k in range(4)],
    }
    rs = write_rtstruct(tmp_path / "images" / "case1" / "RS.dcm", ct, rois)
    img = ct["img"]
    label = read_dicom_label(rs, img.affine, img.shape, {1: "liver"})
    expected = np.zeros(img.shape, np.uint8)  # (i, j, k) = (column, row, slice)
    expected[3:7, 2:6, 1] = 1
    expected[2:10, 2:10, 2] = 1
    expected[4:8, 4:8, 2] = 0
    np.testing.assert_array_equal(label.data, expected)
    assert label.data.dtype == np.uint8 and label.rois == {1: "Liver"} and label.unmatched == ["BODY"]
    (warning,) = label.warnings
    assert "ROI 'Liver': 3 of 6 contour(s) left out" in warning
    assert "1 between slice planes (at slice index 2.5" in warning
    assert "1 outside the scanned slices" in warning and "1 not CLOSED_PLANAR" in warning


def test_rtstruct_of_another_frame_of_reference_is_refused(ct, tmp_path):
    rs = write_rtstruct(tmp_path / "RS.dcm", ct, {"Liver": [_box(3, 6, 2, 5, 1)]}, frame_uid="1.2.3.4")
    with pytest.raises(CaseError, match=r"belongs to another scan: FrameOfReferenceUID 1\.2\.3\.4 differs"):
        read_dicom_label(rs, ct["img"].affine, ct["img"].shape, {1: "liver"}, frame_of_reference_uid=ct["frame"])


def test_overlapping_rois_go_to_the_higher_label_value_with_a_warning(ct, tmp_path):
    rs = write_rtstruct(tmp_path / "RS.dcm", ct, {"GTV": [_box(3, 6, 2, 5, 1)], "CTV": [_box(2, 7, 2, 7, 1)]})
    label = read_dicom_label(rs, ct["img"].affine, ct["img"].shape, {1: "ctv", 2: "gtv"})
    assert np.count_nonzero(label.data == 2) == 16 and np.count_nonzero(label.data == 1) == 36 - 16
    assert any("16 voxel(s) of class 'gtv' (ROI 'GTV') also belong to 'ctv'" in w for w in label.warnings)


# ---------------------------------------------------------------------------------------------
# DICOM-SEG on a CT grid


def test_seg_binary_overlap_reported_and_fractional_thresholded(ct, tmp_path):
    a = np.zeros(SHAPE, bool)
    a[1:3, 2:6, 3:7] = True  # (slice, row, column)
    b = np.zeros(SHAPE, bool)
    b[2, 4:8, 5:9] = True
    seg = write_seg(tmp_path / "seg.dcm", ct["folder"] / "ct", {"Liver": a, "Tumour": b})
    assert is_dicom_label(seg) and read_dicom_label_info(seg).rois == ("Liver", "Tumour")
    img = ct["img"]
    label = read_dicom_label(seg, img.affine, img.shape, {1: "liver", 2: "tumour"}, frame_of_reference_uid=ct["frame"])
    expected = (np.where(b, 2, np.where(a, 1, 0))).transpose(2, 1, 0)  # (slice, row, col) -> (i, j, k)
    np.testing.assert_array_equal(label.data, expected)
    assert any("voxel(s) of class 'tumour' (segment 'Tumour') also belong to 'liver'" in w for w in label.warnings)
    frac = np.zeros(SHAPE, np.float32)
    frac[1, 3:5, 3:5] = 0.7
    frac[1, 6:8, 6:8] = 0.3  # below half: background
    seg = write_seg(tmp_path / "frac.dcm", ct["folder"] / "ct", {"Liver": frac}, fractional=True)
    label = read_dicom_label(seg, img.affine, img.shape, {1: "liver"})
    np.testing.assert_array_equal(label.data, (frac >= 0.5).astype(np.uint8).transpose(2, 1, 0))


# ---------------------------------------------------------------------------------------------
# Discovery, checks and import


def test_discovery_gives_a_series_the_rtstruct_sharing_its_frame_of_reference(ct, tmp_path):
    rs = write_rtstruct(ct["folder"] / "rt" / "RS.dcm", ct, {"Liver": [_box(3, 6, 2, 5, 1)]})
    other = write_rtstruct(ct["folder"] / "rt" / "other.dcm", ct, {"Liver": []}, frame_uid="1.2.3.4")
    assert read_dicom_header(rs).frame_of_reference_uid == ct["frame"]  # read from the sequence
    series, notes = find_series(ct["folder"])
    assert len(series) == 1 and series[0].labels == (str(rs),)
    assert any(str(other) in n and "shares its FrameOfReferenceUID with no image series" in n for n in notes)
    cohort = cohort_from_folders(tmp_path / "images", warn=False)
    (spec,) = cohort.cases
    assert (spec.case_id, spec.label, spec.series_uid) == ("case1", str(rs), ct["series"])


def test_two_label_objects_for_one_series_make_the_case_unusable(ct):
    write_rtstruct(ct["folder"] / "RS1.dcm", ct, {"Liver": [_box(3, 6, 2, 5, 1)]})
    write_rtstruct(ct["folder"] / "RS2.dcm", ct, {"Liver": [_box(3, 6, 2, 5, 1)]}, top_level_frame=True)
    cohort = cohort_from_folders(ct["folder"].parent, warn=False)
    assert cohort.cases[0].label is None and "several label files" in cohort.problems["case1"][0]


@pytest.mark.parametrize("rois, problem", [
    ({"BODY": [_box(0, 3, 0, 3, 0)], "GTV": []}, "no ROI matches a class (classes: liver; ROIs: 'BODY', 'GTV')"),
    ({"Liver": [_box(0, 3, 0, 3, 0)], "LIVER": []}, "class 'liver' is matched by 2 ROIs ('Liver', 'LIVER'"),
])
def test_check_case_names_rois_matching_no_class_or_one_twice(ct, tmp_path, rois, problem):
    rs = write_rtstruct(tmp_path / "RS.dcm", ct, rois)
    check = check_case(CaseSpec("case1", str(ct["folder"]), str(rs), ct["series"]), {1: "liver"})
    assert not check.ok and any(problem in e for e in check.errors), check.errors
    assert check.info["label_rois"] == list(rois)


def test_manifest_rtstruct_label_imports_like_a_nifti_label(ct, tmp_path):
    write_rtstruct(tmp_path / "labels" / "RS.dcm", ct, {"Leber": [_box(3, 6, 2, 5, 1)], "Body": []})
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["case_id", "image", "label"], ["c1", "images/case1", "labels/RS.dcm"]])
    (spec,) = cohort_from_manifest(manifest).cases
    labels, roi_names = {1: "liver"}, {1: ["Liver", "Leber"]}
    out = tmp_path / "imported" / "c1"
    record = import_case("c1", spec.image, spec.label, out, labels=labels, roi_names=roi_names)
    assert record["frame_of_reference_uid"] == ct["frame"] and record["label_rois"] == ["Leber", "Body"]
    import_label(spec.label, out / "image.nii.gz", out / "label.nii.gz", labels=labels,
                 roi_names={"1": ["Liver", "Leber"]}, record=out / "case.json")
    lab, image = nib.load(str(out / "label.nii.gz")), nib.load(str(out / "image.nii.gz"))
    assert lab.get_data_dtype() == np.uint8 and lab.shape == image.shape
    np.testing.assert_allclose(lab.affine, image.affine)
    expected = np.zeros(image.shape, np.uint8)
    expected[3:7, 2:6, 1] = 1
    np.testing.assert_array_equal(np.asanyarray(lab.dataobj), expected)
    with pytest.raises(CaseError, match="no ROI matches a class"):  # without the mapping: refused
        import_case("c1", spec.image, spec.label, tmp_path / "x", labels=labels)


# ---------------------------------------------------------------------------------------------
# Real data


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_sts_rtstruct_matches_mirps_mask(shared_data, tmp_path):
    """The STS RTSTRUCT names another (uncropped) series; matched by frame of reference alone."""
    root = shared_data / "sts-001-ct-rtstruct"
    series, _ = find_series(root)
    assert len(series) == 1 and series[0].labels == (str(root / "rtstruct" / "RS.dcm"),)
    labels = {1: "gtv"}
    out = tmp_path / "imported"
    import_case("sts", root / "dicom", root / "rtstruct" / "RS.dcm", out, labels=labels, series_uid=series[0].uid,
                roi_names={1: "(?i)gtv.*"})
    import_label(root / "rtstruct" / "RS.dcm", out / "image.nii.gz", out / "label.nii.gz", labels=labels,
                 roi_names={1: "(?i)gtv.*"}, record=out / "case.json")
    ours = np.asanyarray(nib.load(str(out / "label.nii.gz")).dataobj) == 1
    ref = nib.load(str(root / "mask_reference.nii.gz"))
    np.testing.assert_allclose(ref.affine, nib.load(str(out / "image.nii.gz")).affine, atol=1e-4)
    reference = np.asanyarray(ref.dataobj) > 0
    dice = _dice(ours, reference)
    print(f"STS GTV: Dice {dice:.4f} vs MIRP ({ours.sum()} / {reference.sum()} voxels)")
    assert dice >= 0.98 and reference.sum() == 117_145


def test_dcmqi_liver_seg_equals_the_liver_of_the_nrrd(shared_data):
    root = shared_data / "dcmqi-ct-3slice"
    img = read_dicom_series(root / "dicom")
    label = read_dicom_label(root / "liver_seg.dcm", img.affine, img.shape, {1: "liver"},
                             frame_of_reference_uid=find_series(root)[0][0].frame_of_reference_uid)
    ref = load_image(root / "liver_spine_seg.nrrd")
    np.testing.assert_allclose(ref.affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(label.data == 1, read_voxels(ref, "nrrd") == 1)
    assert np.count_nonzero(label.data) == 107_098 and label.warnings == []
