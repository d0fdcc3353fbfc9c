"""DICOM series reading: slice order, HU rescaling, geometry, refused series, end-to-end import.

Every series here is written slice by slice with SimpleITK's GDCM writer, with the tags a CT
scanner writes (modality, study/series UIDs, ImagePositionPatient, ImageOrientationPatient,
PixelSpacing, SliceThickness, InstanceNumber, rescale intercept/slope). Positions and
orientations are given in DICOM's LPS patient coordinates; the expected RAS+ affine is worked
out by hand from them: ``RAS = diag(-1, -1, 1) @ LPS``.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unet_pipeline.cohort.discovery import CaseSpec, cohort_from_folders, cohort_from_manifest
from unet_pipeline.cohort.validation import check_case, load_case_image
from unet_pipeline.io.dicom import find_series, list_series, read_dicom_header, read_dicom_series
from unet_pipeline.errors import CaseError
from unet_pipeline.io.images import load_image, read_voxels
from unet_pipeline.io.formats import spacing_from_affine
from unet_pipeline.stages import import_case, import_label, preprocess, preprocess_label

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1.1"


def write_series(folder: Path, hu: np.ndarray, positions, *, orientation=AXIAL, pixel_spacing=(0.9, 0.7),
                 uid: str = SERIES_UID, names=None, instance_numbers=None, intercept: int = -1024, slope: int = 1,
                 thickness: float = 2.0, series_number: int | None = None, patient_id: str | None = None) -> list[Path]:
    """Write ``hu`` ``(n, rows, columns)`` (HU) as a CT series, slice ``s`` at ``positions[s]`` (LPS mm).

    ``pixel_spacing`` is DICOM's (row spacing, column spacing) in mm. The GDCM writer stores
    ``(HU - intercept) / slope``, so the files hold raw values and the reader must rescale.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # also for file names without .dcm, as many exports have
    n = hu.shape[0]
    names = names or [f"slice_{s:03d}.dcm" for s in range(n)]
    instance_numbers = instance_numbers or list(range(1, n + 1))
    paths = []
    for s in range(n):
        image = sitk.GetImageFromArray(np.asarray(hu[s], dtype=np.int16))
        image.SetSpacing((pixel_spacing[1], pixel_spacing[0]))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{uid}.{s + 1}",
            "0020|000d": STUDY_UID,
            "0020|000e": uid,
            "0020|0032": "\\".join(f"{v:.4f}" for v in positions[s]),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0028|0030": f"{pixel_spacing[0]}\\{pixel_spacing[1]}",
            "0018|0050": f"{thickness}",
            "0020|0013": str(instance_numbers[s]),
            "0028|1052": str(intercept),
            "0028|1053": str(slope),
        }
        if series_number is not None:
            tags["0020|0011"] = str(series_number)
        if patient_id is not None:
            tags["0010|0020"] = patient_id
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / names[s]
        writer.SetFileName(str(path))
        writer.Execute(image)
        paths.append(path)
    return paths


def _slices(n: int, rows: int = 4, columns: int = 5) -> np.ndarray:
    """``(n, rows, columns)`` int16 HU; slice ``s`` holds ``100 s + 10 row + column - 1000``."""
    s, r, c = np.meshgrid(np.arange(n), np.arange(rows), np.arange(columns), indexing="ij")
    return (100 * s + 10 * r + c - 1000).astype(np.int16)


def _normal(orientation) -> np.ndarray:
    o = np.asarray(orientation, dtype=np.float64)
    return np.cross(o[:3], o[3:])


def _expected_affine(orientation, pixel_spacing, slice_spacing, first_position) -> np.ndarray:
    """RAS+ affine from DICOM tags: columns = row direction x column spacing, column direction x row spacing, normal."""
    o = np.asarray(orientation, dtype=np.float64)
    lps = np.column_stack([o[:3] * pixel_spacing[1], o[3:] * pixel_spacing[0], _normal(o) * slice_spacing])
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ lps
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(first_position, dtype=np.float64)
    return affine


def _oblique() -> tuple[float, ...]:
    a, b = np.deg2rad(25.0), np.deg2rad(-10.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    return (*row, *col)


# ---------------------------------------------------------------------------------------------
# Slice order and geometry


@pytest.mark.parametrize("orientation", [AXIAL, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), _oblique()],
                         ids=["axial", "normal_down", "oblique"])
def test_slices_sorted_along_normal_not_by_name_or_instance_number(tmp_path, orientation):
    n, step = 7, 2.5
    normal = _normal(orientation)
    origin = np.array([-120.0, 80.5, -300.25])
    # Slice s lies at origin + step * s along the normal; files are named and numbered in a
    # scrambled order that is neither the physical order nor its reverse.
    scramble = [3, 0, 6, 2, 5, 1, 4]
    names = [f"IMG{scramble[s]:04d}.dcm" for s in range(n)]
    instance = [10 - scramble[s] for s in range(n)]
    positions = [origin + step * s * normal for s in range(n)]
    hu = _slices(n)
    write_series(tmp_path / "ct", hu, positions, orientation=orientation, names=names, instance_numbers=instance)

    img = load_image(tmp_path / "ct")
    data = read_voxels(img, tmp_path / "ct")
    assert data.shape == (5, 4, n)
    assert data.dtype == np.int16
    # Voxel (i, j, k) = (column, row, slice): slice k of the volume is physical slice k.
    np.testing.assert_array_equal(data, hu.transpose(2, 1, 0))
    expected = _expected_affine(orientation, (0.9, 0.7), step, positions[0])
    np.testing.assert_allclose(img.affine, expected, atol=1e-4)
    for k in range(n):
        world = img.affine @ [0, 0, k, 1]
        np.testing.assert_allclose(world[:3], LPS_TO_RAS @ positions[k], atol=1e-4)
    np.testing.assert_allclose(spacing_from_affine(img.affine), [0.7, 0.9, step], atol=1e-5)


def test_affine_agrees_with_simpleitk_nifti_read_by_nibabel(tmp_path):
    orientation = _oblique()
    normal = _normal(orientation)
    positions = [np.array([31.0, -12.0, 7.5]) + 3.0 * s * normal for s in range(5)]
    write_series(tmp_path / "ct", _slices(5, 6, 3), positions, orientation=orientation,
                 names=[f"{c}.dcm" for c in "ecabd"])
    ours = load_image(tmp_path / "ct")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "ref.nii.gz"))
    ref = nib.load(str(tmp_path / "ref.nii.gz"))

    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(read_voxels(ours, "ours"), np.asarray(ref.dataobj))
    assert nib.aff2axcodes(ours.affine) == nib.aff2axcodes(ref.affine)


def test_rescale_intercept_and_slope_give_hu(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(3, 6, 7)).astype(np.int16)
    stored[0, 0, 0], stored[1, 0, 0] = 0, 4095
    positions = [(0.0, 0.0, float(z)) for z in range(3)]
    paths = write_series(tmp_path / "a", stored.astype(np.int32) - 1024, positions)
    raw = np.frombuffer(paths[0].read_bytes()[-stored[0].nbytes:], dtype="<i2").reshape(6, 7)
    np.testing.assert_array_equal(raw, stored[0])  # the file holds 0..4095, not HU
    data = read_voxels(load_image(tmp_path / "a"), "a")
    assert data.dtype == np.int16  # ITK widens to int32; the reader narrows again
    assert data.min() == -1024 and data.max() == 3071
    np.testing.assert_array_equal(data, (stored.astype(np.int32) - 1024).transpose(2, 1, 0))

    even = (stored // 2 * 2).astype(np.int32) - 1024
    paths = write_series(tmp_path / "b", even, positions, slope=2)
    raw = np.frombuffer(paths[0].read_bytes()[-stored[0].nbytes:], dtype="<i2").reshape(6, 7)
    np.testing.assert_array_equal(raw, (even[0] + 1024) // 2)
    np.testing.assert_array_equal(read_voxels(load_image(tmp_path / "b"), "b"), even.transpose(2, 1, 0))


def test_rounded_positions_are_not_mistaken_for_irregular_spacing_or_tilt(tmp_path):
    # 0.625 mm slices with positions rounded to 0.01 mm (as many scanners write them): steps of
    # 0.62/0.63 mm and in-plane jitter of 0.01 mm are noise, not missing slices or tilt.
    n = 12
    positions = [(np.round(-10.004 + 0.003 * (s % 2), 2), 5.0, np.round(0.625 * s, 2)) for s in range(n)]
    write_series(tmp_path / "ct", _slices(n), positions, pixel_spacing=(0.3, 0.3))
    img = load_image(tmp_path / "ct")
    assert img.shape == (5, 4, n)
    assert spacing_from_affine(img.affine)[2] == pytest.approx((positions[-1][2] - positions[0][2]) / (n - 1), abs=1e-4)


def test_single_slice_uses_slice_thickness(tmp_path):
    write_series(tmp_path / "one", _slices(1), [(1.0, 2.0, 3.0)], thickness=5.0)
    img = load_image(tmp_path / "one")
    assert img.shape == (5, 4, 1)
    np.testing.assert_allclose(spacing_from_affine(img.affine), [0.7, 0.9, 5.0], atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, 3], [-1.0, -2.0, 3.0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Series that are refused


def _z(values):
    return [(-10.0, 5.0, float(z)) for z in values]


@pytest.mark.parametrize(
    "positions, match",
    [
        (_z([0, 2.5, 5, 10, 12.5]), r"1 missing slice\(s\): slice steps range 2\.500\.\.5\.000 mm"),
        (_z([0, 2.5, 5, 12.5, 15]), r"2 missing slice\(s\)"),
        (_z([0, 2.5, 5.6, 7.5, 10]), r"irregular slice spacing: slice steps range 1\.900\.\.3\.100 mm"),
        (_z([0, 2.5, 5, 5, 7.5]), r"1 slice\(s\) at the same position"),
        ([(-10.0, 5.0 + 0.5 * s, 2.5 * s) for s in range(5)], r"gantry tilt of about 11\.3 degrees"),
    ],
    ids=["missing_one", "missing_two", "irregular", "duplicate", "gantry_tilt"],
)
def test_bad_slice_geometry_is_refused_naming_folder(tmp_path, positions, match):
    folder = tmp_path / "series"
    write_series(folder, _slices(len(positions)), positions)
    with pytest.raises(CaseError, match=match) as info:
        load_image(folder)
    assert str(info.value).startswith(f"{folder}: ")


def test_mixed_slice_sizes_are_refused(tmp_path):
    folder = tmp_path / "mixed"
    write_series(folder, _slices(2, 4, 5), _z([0, 1]), names=["a.dcm", "b.dcm"])
    write_series(folder, _slices(2, 6, 5), _z([2, 3]), names=["c.dcm", "d.dcm"])
    with pytest.raises(CaseError, match=r"slices of different sizes in one series \(columns x rows: 5x4, 5x6\)") as info:
        load_image(folder)
    assert str(folder) in str(info.value)


def test_mixed_orientations_are_refused(tmp_path):
    # Two slices each way: neither is the majority, so neither is taken for a localizer.
    folder = tmp_path / "ori"
    write_series(folder, _slices(2), _z([0, 1]), names=["a.dcm", "b.dcm"])
    write_series(folder, _slices(2), _z([2, 3]), orientation=(1, 0, 0, 0, 0, -1), names=["c.dcm", "d.dcm"])
    with pytest.raises(CaseError, match="different orientations in one series, none of them the majority"):
        load_image(folder)


def test_several_series_in_one_folder(tmp_path):
    folder = tmp_path / "study"
    write_series(folder, _slices(3), _z([0, 1, 2]), uid="1.2.3.100")
    write_series(folder / "sub", _slices(2) + 7, _z([0, 3]), uid="1.2.3.200")
    series = list_series(folder)
    assert sorted(series) == ["1.2.3.100", "1.2.3.200"]
    assert len(series["1.2.3.100"]) == 3 and all(Path(f).parent == folder / "sub" for f in series["1.2.3.200"])

    with pytest.raises(CaseError, match=r"2 DICOM series in one folder.*1\.2\.3\.100 \(3 files\), 1\.2\.3\.200 \(2 files\)") as info:
        load_image(folder)
    assert str(folder) in str(info.value)
    chosen = read_dicom_series(folder, series_uid="1.2.3.200")
    np.testing.assert_array_equal(read_voxels(chosen, "x"), (_slices(2) + 7).transpose(2, 1, 0))
    assert spacing_from_affine(chosen.affine)[2] == pytest.approx(3.0, abs=1e-5)
    with pytest.raises(CaseError, match="series 9.9 not found"):
        read_dicom_series(folder, series_uid="9.9")
    with pytest.raises(TypeError, match="series_uid must be a str"):
        read_dicom_series(folder, series_uid=100)  # type: ignore[arg-type]


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here", encoding="utf-8")
    with pytest.raises(CaseError, match="no DICOM series found") as info:
        load_image(folder)
    assert str(folder) in str(info.value)
    assert list_series(folder) == {}
    with pytest.raises(CaseError, match="DICOM folder not found"):
        list_series(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# End to end: a manifest cohort with a DICOM folder and an NRRD label


def test_manifest_cohort_with_dicom_case_imports_and_preprocesses(tmp_path):
    rows, columns, n, step = 10, 12, 6, 2.0
    hu = np.full((n, rows, columns), -1000, np.int16)
    hu[:, 2:8, 3:10] = 60
    hu[0, 1, 0] = 900  # marker: slice 0, row 1, column 0
    label_zyx = (hu > 0).astype(np.uint8)
    positions = [(-50.0, -30.0, 100.0 + step * s) for s in range(n)]
    write_series(tmp_path / "cohort" / "dicom" / "ct01", hu[::-1], positions[::-1],
                 names=[f"{s:02d}.dcm" for s in range(n)])  # file 00 is the top slice

    label = sitk.GetImageFromArray(label_zyx)
    label.SetSpacing((0.7, 0.9, step))
    label.SetOrigin(positions[0])
    (tmp_path / "cohort" / "labels").mkdir()
    sitk.WriteImage(label, str(tmp_path / "cohort" / "labels" / "ct01.nrrd"), True)
    manifest = tmp_path / "cohort" / "cases.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["case_id", "image", "label"], ["ct01", "dicom/ct01", "labels/ct01.nrrd"]])

    cohort = cohort_from_manifest(manifest)
    spec = cohort.by_id()["ct01"]
    assert spec.image == str(tmp_path / "cohort" / "dicom" / "ct01")
    imported = tmp_path / "imported" / "ct01"
    record = import_case(spec.case_id, spec.image, spec.label, imported, labels={1: "body"})
    assert record["shape"] == [columns, rows, n] and record["orientation"] == "LPS"
    assert record["label_values"] == [0, 1]
    import_label(spec.label, imported / "image.nii.gz", imported / "label.nii.gz", labels={1: "body"})
    img = nib.load(str(imported / "image.nii.gz"))
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, _expected_affine(AXIAL, (0.9, 0.7), step, positions[0]), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), hu.transpose(2, 1, 0))

    plan = {"target_spacing_mm": [0.9, 0.7], "num_classes": 2,
            "intensity": {"p00_5": -1000.0, "p99_5": 1000.0, "mean": 0.0, "std": 100.0}}
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    meta = preprocess("ct01", imported / "image.nii.gz", tmp_path / "plan.json", tmp_path / "pre")
    preprocess_label(imported / "label.nii.gz", tmp_path / "pre" / "meta.json", tmp_path / "pre" / "label.npy")
    image_pre = np.load(tmp_path / "pre" / "image.npy")
    label_pre = np.load(tmp_path / "pre" / "label.npy")
    # Canonical (z, y, x) = (S, A, R): LPS column 0 (patient's right) becomes the last x, row 0
    # (anterior) the last y; slice 0 (inferior) stays first.
    assert meta["canonical_shape"] == [n, rows, columns]
    assert image_pre[0, rows - 2, columns - 1] == pytest.approx(9.0)  # (900 - 0) / 100
    np.testing.assert_array_equal(label_pre, label_zyx[:, ::-1, ::-1])
    np.testing.assert_array_equal(label_pre, (image_pre > 0).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Discovery: series split by SeriesInstanceUID, nested folders, what is passed over


def _volume(spec: CaseSpec) -> np.ndarray:
    return read_voxels(load_case_image(spec), spec.image)


def test_two_series_mixed_in_one_folder_become_two_cases(tmp_path):
    folder = tmp_path / "images" / "pat01"
    a = write_series(folder, _slices(4), _z([0, 2, 4, 6]), uid="1.2.3.7", series_number=7,
                     names=[f"IM{i:04d}" for i in (0, 2, 4, 6)])
    b = write_series(folder, _slices(3, 6, 5) + 50, _z([0, 1, 2]), uid="1.2.3.3", series_number=3,
                     names=[f"IM{i:04d}" for i in (1, 3, 5)])  # interleaved file names
    assert {p.parent for p in a + b} == {folder}
    cohort = cohort_from_folders(tmp_path / "images")
    assert cohort.case_ids == ["pat01_3", "pat01_7"] and cohort.notes == []
    specs = cohort.by_id()
    assert (specs["pat01_3"].image, specs["pat01_3"].series_uid) == (str(folder), "1.2.3.3")
    assert (specs["pat01_7"].image, specs["pat01_7"].series_uid) == (str(folder), "1.2.3.7")
    np.testing.assert_array_equal(_volume(specs["pat01_3"]), (_slices(3, 6, 5) + 50).transpose(2, 1, 0))
    np.testing.assert_array_equal(_volume(specs["pat01_7"]), _slices(4).transpose(2, 1, 0))
    check = check_case(specs["pat01_7"], {}, min_slices=4)
    assert check.ok, check.errors
    assert check.info["shape"] == [5, 4, 4] and check.info["series_uid"] == "1.2.3.7"
    assert spacing_from_affine(load_case_image(specs["pat01_7"]).affine)[2] == pytest.approx(2.0, abs=1e-5)
    # The same split as GDCM's.
    assert {s.uid: s.n_files for s in find_series(folder)[0]} == {u: len(f) for u, f in list_series(folder).items()}


def test_series_numbers_missing_or_repeated_give_1_2_in_order(tmp_path):
    folder = tmp_path / "images" / "p"
    write_series(folder, _slices(2), _z([0, 1]), uid="1.2.3.9", names=["a1", "a2"])
    write_series(folder, _slices(2), _z([0, 1]), uid="1.2.3.10", names=["b1", "b2"], series_number=4)
    cohort = cohort_from_folders(tmp_path / "images")
    assert [(c.case_id, c.series_uid) for c in cohort.cases] == [("p_1", "1.2.3.10"), ("p_2", "1.2.3.9")]


def test_nested_patient_study_series_folders_are_found(tmp_path):
    images = tmp_path / "images"
    write_series(images / "P001" / "ST 1" / "SE1", _slices(2), _z([0, 1]), uid="1.2.3.11", series_number=1)
    write_series(images / "P001" / "ST 1" / "SE2", _slices(3), _z([0, 1, 2]), uid="1.2.3.12", series_number=2)
    write_series(images / "P002" / "ST1" / "SE1", _slices(2) + 9, _z([0, 3]), uid="1.2.3.21")  # one series
    cohort = cohort_from_folders(images)
    specs = cohort.by_id()
    assert cohort.case_ids == ["P001_ST_1_SE1", "P001_ST_1_SE2", "P002"]
    assert specs["P001_ST_1_SE2"].image == str(images / "P001" / "ST 1" / "SE2")
    assert specs["P002"].image == str(images / "P002") and specs["P002"].series_uid == "1.2.3.21"
    assert _volume(specs["P001_ST_1_SE2"]).shape == (5, 4, 3)
    np.testing.assert_array_equal(_volume(specs["P002"]), (_slices(2) + 9).transpose(2, 1, 0))


def test_skipped_files_and_folders_are_named(tmp_path, caplog):
    images = tmp_path / "images"
    write_series(images / "ct01", _slices(2), _z([0, 1]))
    (images / "ct01" / "notes.txt").write_text("scanner protocol", encoding="utf-8")
    (images / "empty").mkdir()
    (images / "docs").mkdir()
    (images / "docs" / "README").write_text("not an image", encoding="utf-8")
    (images / "readme.md").write_text("about this cohort", encoding="utf-8")
    (images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with caplog.at_level("WARNING"):
        cohort = cohort_from_folders(images)
    assert cohort.case_ids == ["ct01"]
    for path in (images / "ct01" / "notes.txt", images / "empty", images / "docs" / "README", images / "readme.md"):
        assert any(n.startswith(f"{path}: ") for n in cohort.notes), (path, cohort.notes)
        assert str(path) in caplog.text
    assert ".DS_Store" not in caplog.text and len(cohort.notes) == 4
    assert "empty folder" in caplog.text and "not an image or DICOM file" in caplog.text


def test_loose_series_in_the_images_folder(tmp_path):
    images = tmp_path / "export"
    write_series(images, _slices(2), _z([0, 1]), uid="1.2.3.31", series_number=2, names=["x1", "x2"])
    write_series(images, _slices(2), _z([5, 6]), uid="1.2.3.32", series_number=5, names=["y1", "y2"])
    cohort = cohort_from_folders(images)
    assert [(c.case_id, c.series_uid) for c in cohort.cases] == [("export_2", "1.2.3.31"), ("export_5", "1.2.3.32")]


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """An explicit VR little endian data element."""
    if vr in (b"OB", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def _explicit_file(syntax: str, body: bytes) -> bytes:
    ts = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
    return b"\0" * 128 + b"DICM" + _element(0x0002, 0x0010, b"UI", ts) + body


def test_header_reader_handles_explicit_vr_sequences_and_refuses_what_it_cannot_parse(tmp_path):
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + _element(0x0008, 0x1150, b"UI", b"1.2\0") \
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + item \
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body = (_element(0x0008, 0x0060, b"CS", b"CT") + sequence + _element(0x0009, 0x0010, b"UN", b"\1" * 300)
            + _element(0x0020, 0x000E, b"UI", b"1.2.3.4\0") + _element(0x0020, 0x0011, b"IS", b"12")
            + _element(0x0028, 0x0010, b"US", struct.pack("<H", 256)) + _element(0x7FE0, 0x0010, b"OB", b"\0" * 8))
    path = tmp_path / "explicit.dcm"
    path.write_bytes(_explicit_file("1.2.840.10008.1.2.1", body))
    header = read_dicom_header(path)
    assert (header.uid, header.number, header.modality, header.rows, header.is_image) == ("1.2.3.4", "12", "CT", 256, True)
    path.write_bytes(body)  # no preamble: a bare data set
    assert read_dicom_header(path).uid == "1.2.3.4"
    rtstruct = _element(0x0008, 0x0060, b"CS", b"RTSTRUCT") + _element(0x0020, 0x000E, b"UI", b"1.2.3.5\0")
    path.write_bytes(_explicit_file("1.2.840.10008.1.2.1", rtstruct))
    assert read_dicom_header(path).is_image is False
    path.write_bytes(_explicit_file("1.2.840.10008.1.2.1.99", b"\x78\x9c"))
    with pytest.raises(ValueError, match="deflated"):
        read_dicom_header(path)
    path.write_bytes(b"plain text, not DICOM at all" * 10)
    assert read_dicom_header(path) is None


def test_real_3_slice_series_is_found_checked_and_imported(tmp_path, shared_data):
    root = shared_data / "dcmqi-ct-3slice"
    cohort = cohort_from_folders(root)
    spec = cohort.by_id()["dicom"]
    assert spec.image == str(root / "dicom") and spec.series_uid
    assert len(find_series(root / "dicom")[0]) == 1
    check = check_case(spec, {})
    assert check.ok and check.info["shape"] == [512, 512, 3], check.errors
    record = import_case(spec.case_id, spec.image, spec.label, tmp_path / "imp", labels={1: "liver"})
    assert record["shape"] == [512, 512, 3]
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "imp" / "image.nii.gz")).dataobj), _volume(spec))
