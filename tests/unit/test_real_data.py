"""Real CT files from ``../shared/data`` (see its README): real headers, real HU, a real DICOM series.

Skipped when the shared data folder is absent. Known answers come from the data's README:
voxel counts per label, shapes, spacings and HU ranges.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from unet_pipeline.cohort.discovery import CaseSpec
from unet_pipeline.cohort.validation import check_case
from unet_pipeline.io.images import load_image, read_voxels
from unet_pipeline.io.formats import spacing_from_affine
from unet_pipeline.preprocess.transform import preprocess_image, preprocess_label
from unet_pipeline.infer.reassembly import reassemble_case
from unet_pipeline.stages import import_case, import_label

TOTALSEG_COUNTS = {5: 38_634, 1: 9_452, 2: 3_947, 3: 3_676, 6: 4_675}  # liver, spleen, kidney R/L, stomach
DCMQI_COUNTS = {1: 107_098, 2: 12_439}  # liver, spine


def _plan(target_yx, num_classes):
    return {"target_spacing_mm": [float(t) for t in target_yx], "num_classes": int(num_classes),
            "intensity": {"p00_5": -1000.0, "p99_5": 1500.0, "mean": 0.0, "std": 300.0}}


def _identity_round_trip(tmp_path, image_path, label_path, num_classes, target_yx):
    """Preprocess image + label, feed the preprocessed label back as one-hot probabilities, reassemble."""
    meta = preprocess_image(image_path, _plan(target_yx, num_classes), tmp_path / "pre", case_id="c")
    preprocess_label(label_path, meta, tmp_path / "pre" / "label.npy")
    lab = np.load(tmp_path / "pre" / "label.npy")
    assert list(lab.shape) == meta["resampled_shape"]
    probs = np.zeros((lab.shape[0], num_classes, *lab.shape[1:]), np.float16)  # (Z, K, Y', X')
    np.put_along_axis(probs, lab[:, None].astype(np.intp), np.float16(1), axis=1)
    np.save(tmp_path / "probs.npy", probs)
    out = tmp_path / "seg.nii.gz"
    reassemble_case(tmp_path / "probs.npy", tmp_path / "pre" / "meta.json", image_path, out, num_classes=num_classes)
    return meta, nib.load(str(out))


# ---------------------------------------------------------------------------------------------
# TotalSegmentator example: NIfTI CT + 42-class label


@pytest.fixture
def totalseg(shared_data):
    root = shared_data / "totalsegmentator-example"
    labels = {int(k): v for k, v in json.loads((root / "labels.json").read_text(encoding="utf-8"))["labels"].items()}
    return root / "example_ct_sm.nii.gz", root / "example_seg.nii.gz", labels


def test_totalseg_checks_and_imports_with_counts_preserved(tmp_path, totalseg):
    image, label, labels = totalseg
    assert labels[5] == "liver" and labels[1] == "spleen"
    check = check_case(CaseSpec("ts", str(image), str(label)), labels)
    assert check.ok, check.errors
    assert check.info["shape"] == [122, 101, 30] and check.info["spacing_mm"] == [3.0, 3.0, 3.0]
    assert check.info["dtype"] == "int16" and check.info["hu_min"] == -1100 and check.info["hu_max"] == 1207

    out = tmp_path / "imported"
    record = import_case("ts", image, label, out, labels=labels)
    # Background + 41 classes present (the README says 42; 41 distinct non-zero values are in the file).
    assert record["label_values"][0] == 0 and len(record["label_values"]) == 42
    assert (out / "image.nii.gz").read_bytes() == image.read_bytes()
    import_label(label, out / "image.nii.gz", out / "label.nii.gz", labels=labels)
    written = nib.load(str(out / "label.nii.gz"))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, nib.load(str(image)).affine, atol=1e-6)
    values = np.asarray(written.dataobj)
    for value, count in TOTALSEG_COUNTS.items():
        assert int(np.count_nonzero(values == value)) == count, labels[value]
    np.testing.assert_array_equal(values, np.asarray(nib.load(str(label)).dataobj))


def test_totalseg_preprocess_and_reassemble_give_the_label_back(tmp_path, totalseg):
    image, label, labels = totalseg
    num_classes = max(labels) + 1
    meta, seg = _identity_round_trip(tmp_path, image, label, num_classes, (3.0, 3.0))
    assert meta["canonical_shape"] == [30, 101, 122] and meta["resampled_shape"] == [30, 101, 122]
    ref = nib.load(str(image))
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-6)
    assert int(seg.header["sform_code"]) == int(ref.header["sform_code"])
    out = np.asarray(seg.dataobj)
    np.testing.assert_array_equal(out, np.asarray(nib.load(str(label)).dataobj))
    assert int(np.count_nonzero(out == 5)) == TOTALSEG_COUNTS[5]


# ---------------------------------------------------------------------------------------------
# dcmqi: a 3-slice CT DICOM series + NRRD labels


@pytest.fixture
def dcmqi(shared_data):
    root = shared_data / "dcmqi-ct-3slice"
    return root / "dicom", root / "liver_spine_seg.nrrd", root / "heart_seg.nrrd"


def test_dcmqi_dicom_series_reads_in_physical_order_as_hu(dcmqi):
    import SimpleITK as sitk

    dicom, _, _ = dcmqi
    img = load_image(dicom)
    data = read_voxels(img, dicom)
    assert data.shape == (512, 512, 3) and data.dtype == np.int16
    np.testing.assert_allclose(spacing_from_affine(img.affine), [0.810547, 0.810547, 1.0], atol=1e-5)
    assert int(data.min()) == -3024 and int(data.max()) == 1381
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    # 01.dcm (InstanceNumber 1) is the top slice, z = -126.69 mm: it must come last, not first.
    for k, name in enumerate(["03.dcm", "02.dcm", "01.dcm"]):
        single = sitk.ReadImage(str(dicom / name))
        np.testing.assert_array_equal(data[:, :, k], sitk.GetArrayFromImage(single)[0].T, err_msg=name)
        lps = np.array(single.GetOrigin())
        np.testing.assert_allclose((img.affine @ [0, 0, k, 1])[:3], lps * [-1, -1, 1], atol=1e-3)
    np.testing.assert_allclose(img.affine[:3, 3], [235.2, 226.8, -128.69], atol=1e-3)


def test_dcmqi_nrrd_labels_align_with_the_dicom_series(tmp_path, dcmqi):
    dicom, liver_spine, heart = dcmqi
    labels = {1: "liver", 2: "spine"}
    check = check_case(CaseSpec("d", str(dicom), str(liver_spine)), labels, geometry_tolerance_mm=1e-4)
    assert check.ok, check.errors
    assert check.info["label_values"] == [0, 1, 2]
    image_affine, label_affine = load_image(dicom).affine, load_image(liver_spine).affine
    assert np.abs(image_affine - label_affine).max() < 1e-5  # identical after float32 rounding
    assert check_case(CaseSpec("h", str(dicom), str(heart)), {3: "heart"}).ok

    out = tmp_path / "imported"
    record = import_case("d", dicom, liver_spine, out, labels=labels)
    assert record["shape"] == [512, 512, 3] and record["orientation"] == "LPS"
    imported = nib.load(str(out / "image.nii.gz"))
    assert imported.get_data_dtype() == np.int16
    np.testing.assert_allclose(imported.affine, image_affine, atol=1e-6)
    import_label(liver_spine, out / "image.nii.gz", out / "label.nii.gz", labels=labels)
    values = np.asarray(nib.load(str(out / "label.nii.gz")).dataobj)
    assert {v: int(np.count_nonzero(values == v)) for v in DCMQI_COUNTS} == DCMQI_COUNTS
    heart_values = read_voxels(load_image(heart), heart)
    assert int(np.count_nonzero(heart_values == 3)) == 41_449


def test_dcmqi_round_trip_returns_the_label_on_the_dicom_grid(tmp_path, dcmqi):
    dicom, liver_spine, _ = dcmqi
    labels = {1: "liver", 2: "spine"}
    out = tmp_path / "imported"
    import_case("d", dicom, liver_spine, out, labels=labels)
    import_label(liver_spine, out / "image.nii.gz", out / "label.nii.gz", labels=labels)
    meta, seg = _identity_round_trip(tmp_path, out / "image.nii.gz", out / "label.nii.gz", 3, (0.810547, 0.810547))
    assert meta["slice_world_axis"] == "S" and meta["canonical_shape"] == [3, 512, 512]
    np.testing.assert_allclose(seg.affine, nib.load(str(out / "image.nii.gz")).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(nib.load(str(out / "label.nii.gz")).dataobj))
