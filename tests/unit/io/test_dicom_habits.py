"""DICOM as hospitals export it, on the real 59-slice CT of ``../shared/data`` (skipped when absent).

Each export habit is built with pydicom from the real series ``sts-001-ct-rtstruct/dicom``: an
exact copy of a file, a localizer (tagged LOCALIZER, untagged but of another size, or in its own
series), the series as one Enhanced (multi-frame) CT file with frames shuffled and a per-frame
rescale; and the refusals: two different images at one position, a half-copied file, a file
cut inside its header. Every habit goes through ``check-cohort``, the workflow's import
(:func:`unet_pipeline.stages.import_case`) and ``predict`` (an untrained but fixed network, so
equal inputs give equal masks): the voxels and geometry read equal the plain series', or the
refusal names the reason and the file, the folder once.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from unet_pipeline.cli import main
from unet_pipeline.errors import CaseError
from unet_pipeline.stages import import_case

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("SimpleITK")

SERIES = SHARED_DATA / "sts-001-ct-rtstruct" / "dicom"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
READ = ("copy", "scout_tagged", "scout_size", "scout_series", "enhanced")  # cases read like "plain"
REFUSED = {  # case -> (file named, reason)
    "conflict": ("000004_b.dcm", "at the same position as another"),
    "half_copied": ("000010.dcm", "truncated: "),
    "cut_header": ("000010.dcm", "1 missing slice(s)"),
}


def _copy_series(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in sorted(SERIES.glob("*.dcm")):
        shutil.copy(f, folder)
    return folder


def _scout(source: Path, out: Path, *, tagged: bool, series_uid: str | None = None) -> None:
    """A scout made from a real slice: coronal and tagged LOCALIZER, or axial, untagged and 100 x 100 pixels."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    if tagged:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    else:
        pixels = ds.pixel_array[:100, :100]
        ds.Rows, ds.Columns, ds.PixelData = 100, 100, np.ascontiguousarray(pixels).tobytes()
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    ds.save_as(out)


def _functional_group(**items):
    """A functional groups item: sequence keyword -> the attributes of its one item."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    group = Dataset()
    for keyword, attributes in items.items():
        item = Dataset()
        for name, value in attributes.items():
            setattr(item, name, value)
        setattr(group, keyword, Sequence([item]))
    return group


def write_enhanced_ct(files: list[Path], out: Path, seed: int = 0) -> None:
    """The single-frame CT ``files`` as one Enhanced CT Image Storage file (explicit VR little endian).

    Frames are stored in a shuffled order; geometry goes in the functional groups (orientation and
    pixel measures shared, position per frame), and every other frame stores ``HU + 1024`` with
    RescaleIntercept -1024 in its PixelValueTransformationSequence, so a reader must rescale per frame.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slices = [pydicom.dcmread(f) for f in files]
    random.Random(seed).shuffle(slices)
    first, uid = slices[0], generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ENHANCED_CT_STORAGE, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = ENHANCED_CT_STORAGE, uid, generate_uid()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "Modality", "FrameOfReferenceUID", "Rows",
                    "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
                    "PhotometricInterpretation"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.PixelRepresentation, ds.SeriesNumber, ds.InstanceNumber = 1, 1, 1
    ds.ImageType, ds.NumberOfFrames = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"], len(slices)
    ds.SharedFunctionalGroupsSequence = Sequence([_functional_group(
        PixelMeasuresSequence={"PixelSpacing": first.PixelSpacing, "SliceThickness": first.SliceThickness},
        PlaneOrientationSequence={"ImageOrientationPatient": first.ImageOrientationPatient})])
    frames, pixels = [], []
    for k, s in enumerate(slices):
        hu = s.pixel_array.astype(np.int32) * int(s.RescaleSlope) + int(s.RescaleIntercept)
        intercept = -1024 if k % 2 else 0
        pixels.append((hu - intercept).astype("<i2"))
        frames.append(_functional_group(
            PlanePositionSequence={"ImagePositionPatient": s.ImagePositionPatient},
            PixelValueTransformationSequence={"RescaleIntercept": intercept, "RescaleSlope": 1, "RescaleType": "HU"}))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(pixels).tobytes()
    ds.save_as(out, enforce_file_format=True)


def _build_cohort(images: Path) -> None:
    """Every habit as one case folder under ``images`` (names: :data:`READ`, :data:`REFUSED`, ``plain``)."""
    _copy_series(images / "plain")
    shutil.copy(_copy_series(images / "copy") / "000004.dcm", images / "copy" / "000004 (copy).dcm")
    _scout(SERIES / "000000.dcm", _copy_series(images / "scout_tagged") / "scout.dcm", tagged=True)
    _scout(SERIES / "000030.dcm", _copy_series(images / "scout_size") / "IM9999", tagged=False)
    _scout(SERIES / "000000.dcm", _copy_series(images / "scout_series") / "scout.dcm", tagged=True,
           series_uid=pydicom.uid.generate_uid())
    (images / "enhanced").mkdir()
    write_enhanced_ct(sorted(SERIES.glob("*.dcm")), images / "enhanced" / "CT_ENHANCED")
    other = pydicom.dcmread(_copy_series(images / "conflict") / "000004.dcm")  # a different image, same place
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    other.PixelData = (other.pixel_array + 7).astype(other.pixel_array.dtype).tobytes()
    other.save_as(images / "conflict" / "000004_b.dcm")
    for case, keep in (("half_copied", 0.5), ("cut_header", 300)):
        victim = _copy_series(images / case) / "000010.dcm"
        data = victim.read_bytes()
        victim.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])


@pytest.fixture(scope="module")
def habits(tmp_path_factory):
    if not SERIES.is_dir():
        pytest.skip(f"shared test data not found at {SERIES}")
    root = tmp_path_factory.mktemp("habits")
    _build_cohort(root / "images")
    return root


def _imported(habits: Path, case: str) -> nib.Nifti1Image:
    out = habits / "imported" / case
    if not (out / "image.nii.gz").exists():
        import_case(case, habits / "images" / case, None, out, labels={})
    return nib.load(str(out / "image.nii.gz"))


def test_check_cohort_reads_the_habits_and_names_each_refusal_and_file(habits, capsys):
    images = habits / "images"
    assert main(["check-cohort", "-i", str(images)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "000004 (copy).dcm (copy of 000004.dcm)" in text and "read once" in text
    assert "localizer (scout) image(s) left out (ImageType LOCALIZER): scout.dcm" in text
    assert ("image(s) of another orientation or size than the other 59 (198x202 pixels) left out as localizer(s): "
            "IM9999") in text
    assert f"{images / 'scout_series' / 'scout.dcm'}: localizer (scout) image (ImageType LOCALIZER), left out" in text
    for case, (name, reason) in REFUSED.items():
        line = next(line for line in text.splitlines() if reason in line and str(images / case) in line)
        assert name in line, line
    assert "000004.dcm and 000004_b.dcm are different images" in text
    assert "unreadable file(s) here, the missing slice(s)?: 000010.dcm" in text


@pytest.mark.parametrize("case", READ)
def test_import_reads_each_habit_as_the_plain_series(habits, case):
    plain, other = _imported(habits, "plain"), _imported(habits, case)
    assert other.shape == plain.shape == (198, 202, 59)
    np.testing.assert_allclose(other.affine, plain.affine, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(other.dataobj), np.asarray(plain.dataobj))
    assert other.get_data_dtype() == plain.get_data_dtype() == np.int16


@pytest.mark.parametrize("case", REFUSED)
def test_import_refuses_naming_the_reason_and_the_file_once(habits, case):
    name, reason = REFUSED[case]
    folder = habits / "images" / case
    with pytest.raises(CaseError) as info:
        import_case(case, folder, None, habits / "refused" / case, labels={})
    message = str(info.value)
    assert reason in message and name in message, message
    assert message.count(str(folder)) == 1, message
    assert not (habits / "refused" / case / "image.nii.gz").exists()


def test_import_records_what_was_left_out(habits):
    import json

    _imported(habits, "copy")
    record = json.loads((habits / "imported" / "copy" / "case.json").read_text(encoding="utf-8"))
    assert any("000004 (copy).dcm (copy of 000004.dcm)" in w for w in record["warnings"])


def test_predict_segments_each_habit_as_the_plain_series(habits, tmp_path, capsys):
    from tests.unit.infer.test_predictor import PLAN, _model_folder

    plan = {**PLAN, "target_spacing_mm": [8.0, 8.0], "patch_size": [32, 32]}  # one tile per slice: quick on a CPU
    model = _model_folder(tmp_path / "model", seed=0, plan=plan)
    out = tmp_path / "out"
    argv = ["predict", "-m", str(model), "-i", str(habits / "images"), "-o", str(out), "--overlap", "0",
            "--batch-size", "64", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    plain = nib.load(str(out / "plain.nii.gz"))
    for case in READ:
        seg = nib.load(str(out / f"{case}.nii.gz"))
        np.testing.assert_allclose(seg.affine, plain.affine, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(plain.dataobj))
    for case, (name, reason) in REFUSED.items():
        assert not (out / f"{case}.nii.gz").exists()
        line = next(line for line in err.splitlines() if line.strip().startswith(f"FAILED {case}:"))
        assert reason in line and name in line, line


def test_dicom_seg_segments_carry_the_rtstruct_roi_colours(tmp_path, shared_data):
    """3D Slicer (dcmqi) reads a segment's colour from RecommendedDisplayCIELabValue: each segment has
    the colour the RTSTRUCT of the same masks gives its ROI."""
    hd = pytest.importorskip("highdicom")
    from unet_pipeline.io.dicom import read_dicom_series
    from unet_pipeline.io.dicom_export import read_source_series, write_dicom_seg, write_rtstruct

    folder = shared_data / "dcmqi-ct-3slice" / "dicom"
    image = read_dicom_series(folder)
    volume = np.zeros(image.shape, np.uint8)
    volume[100:200, 100:200, :] = 1
    volume[300:350, 300:350, 1:] = 2
    labels = {1: "liver", 2: "spleen"}
    sources = read_source_series(folder)
    write_dicom_seg(volume, image.affine, sources, labels, tmp_path / "seg.dcm")
    write_rtstruct(volume, image.affine, sources, labels, tmp_path / "rt.dcm")
    seg, rt = pydicom.dcmread(tmp_path / "seg.dcm"), pydicom.dcmread(tmp_path / "rt.dcm")
    roi_colours = {int(r.ReferencedROINumber): tuple(int(v) for v in r.ROIDisplayColor) for r in rt.ROIContourSequence}
    assert len(set(roi_colours.values())) == 2
    for segment, value in zip(seg.SegmentSequence, (1, 2)):
        lab = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in segment.RecommendedDisplayCIELabValue))
        assert np.abs(np.subtract(lab.to_rgb(), roi_colours[value])).max() <= 1, (segment.SegmentLabel, lab.to_rgb())
