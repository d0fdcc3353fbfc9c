"""Segmentations written back as DICOM-SEG and RTSTRUCT: round trips, references, valid files.

Round trips on the real series of ``../shared/data`` (skipped when it is absent): the written
SEG read back with highdicom equals the NIfTI segmentation voxel for voxel, the RTSTRUCT
rasterised again by our reader agrees with it (Dice >= 0.98 per class), both reference the
series and its frame of reference, and pydicom reads them with no validation warning.
"""

from __future__ import annotations

import warnings

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.dicom_helpers import write_ct_series
from unet_pipeline.io.dicom import find_series, read_dicom_series
from unet_pipeline.io.dicom_export import mask_contours, read_source_series, segment_codes, write_dicom_seg
from unet_pipeline.io.dicom_labels import fill_polygons, read_dicom_label
from unet_pipeline.errors import CaseError
from unet_pipeline.io.images import load_image, read_voxels
from unet_pipeline.infer.reassembly import write_segmentation
from unet_pipeline.stages import dicom_output_paths, export_dicom, import_case


@pytest.mark.parametrize("seed", range(4))
def test_contours_filled_even_odd_give_the_mask_back(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((23, 31)) < 0.45  # holes, islands, diagonal touches, pixels on the border
    mask[5:15, 5:20] = True
    mask[8:11, 9:12] = False
    contours = mask_contours(mask)
    assert contours and all(c.shape[1] == 2 for c in contours)
    np.testing.assert_array_equal(fill_polygons(contours, mask.shape), mask)


def test_contour_of_a_block_runs_half_a_pixel_out_with_its_corners_cut():
    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:6] = True  # rows 1..3, columns 2..5
    (contour,) = mask_contours(mask)  # (row, column); straight runs reduced to their ends
    assert {tuple(p) for p in contour.tolist()} == {(0.5, 2.0), (0.5, 5.0), (1.0, 5.5), (3.0, 5.5), (3.5, 5.0),
                                                    (3.5, 2.0), (3.0, 1.5), (1.0, 1.5)}
    assert mask_contours(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize("name, meaning, category", [
    ("liver", "Liver", "Anatomical Structure"),
    ("kidney_left", "Kidney", "Anatomical Structure"),
    ("GTV_Mass", "Tissue", "Tissue"),
])
def test_segment_codes(name, meaning, category):
    cat, kind = segment_codes(name)
    assert (kind.meaning, cat.meaning) == (meaning, category)


def test_a_segmentation_on_another_grid_is_refused(tmp_path):
    hu = np.zeros((3, 8, 10), np.int16)
    write_ct_series(tmp_path / "ct", hu, spacing=(1.0, 1.0, 2.0))
    img = read_dicom_series(tmp_path / "ct")
    shifted = img.affine.copy()
    shifted[:3, 3] += 0.4  # 0.4 mm off: not the series' voxels
    with pytest.raises(CaseError, match="not this series' grid"):
        write_dicom_seg(np.ones(img.shape, np.uint8), shifted, read_source_series(tmp_path / "ct"), {1: "liver"},
                        tmp_path / "seg.dcm")


def _read_strictly(path):
    """The file read by pydicom with validation errors raised and warnings as errors, every value decoded."""
    from pydicom import config

    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = pydicom.dcmread(str(path))
            for elem in ds.iterall():
                _ = elem.value
    finally:
        config.settings.reading_validation_mode = mode
    return ds


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(params=["dcmqi", "sts"])
def real_case(request, shared_data, tmp_path):
    """A real CT series imported, and a multi-class segmentation NIfTI on its grid."""
    if request.param == "dcmqi":
        root = shared_data / "dcmqi-ct-3slice"
        folder, labels = root / "dicom", {1: "liver", 2: "spine", 3: "heart"}
        seg = read_voxels(load_image(root / "liver_spine_seg.nrrd"), "nrrd").astype(np.uint8)
        seg[read_voxels(load_image(root / "heart_seg.nrrd"), "nrrd") > 0] = 3
    else:
        root = shared_data / "sts-001-ct-rtstruct"
        folder, labels = root / "dicom", {1: "gtv", 2: "bone"}
        seg = (np.asanyarray(nib.load(str(root / "mask_reference.nii.gz")).dataobj) > 0).astype(np.uint8)
        seg[(read_voxels(read_dicom_series(folder), "ct") > 300) & (seg == 0)] = 2
    (series,), _ = find_series(folder)
    import_case("c", folder, None, tmp_path / "imported", labels=labels, series_uid=series.uid)
    out = tmp_path / "segmentations" / "c.nii.gz"
    out.parent.mkdir()
    write_segmentation(seg, tmp_path / "imported" / "image.nii.gz", out)
    return {"folder": folder, "series": series, "labels": labels, "seg": out, "data": seg}


def test_dicom_seg_and_rtstruct_round_trip(real_case):
    case, labels = real_case, real_case["labels"]
    paths = dicom_output_paths(case["seg"], dicom_seg=True, rtstruct=True)
    assert paths["seg"].name == "c.dcm" and paths["rtstruct"].name == "c_rtstruct.dcm"
    written = export_dicom(case["seg"], case["folder"], labels=labels, series_uid=case["series"].uid,
                           out_seg=paths["seg"], out_rtstruct=paths["rtstruct"])
    data = case["data"]  # (i, j, k) = (column, row, slice) of the series, slices sorted along the normal
    sources = read_source_series(case["folder"])
    uids = [str(s.SOPInstanceUID) for s in sources]

    # DICOM-SEG read back with highdicom: frames of the source images, voxel for voxel.
    seg = hd.seg.segread(str(paths["seg"]))
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == list(labels.values())
    assert str(seg.FrameOfReferenceUID) == case["series"].frame_of_reference_uid
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == case["series"].uid
    assert str(seg.StudyInstanceUID) == str(sources[0].StudyInstanceUID)
    assert str(seg.SeriesInstanceUID) == written["seg"]["series_instance_uid"]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=True,
                                               assert_missing_frames_are_empty=True)  # (slices, rows, columns)
    lut = np.array([0, *sorted(labels)])
    np.testing.assert_array_equal(lut[pixels], data.transpose(2, 1, 0))
    described = seg.get_segment_description(1)
    assert described.algorithm_identification[0].AlgorithmName == "unet-pipeline"

    # RTSTRUCT rasterised again by our reader.
    rt = pydicom.dcmread(str(paths["rtstruct"]))
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert str(frame.FrameOfReferenceUID) == case["series"].frame_of_reference_uid
    series_ref = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert str(series_ref.SeriesInstanceUID) == case["series"].uid
    assert {str(i.ReferencedSOPInstanceUID) for i in series_ref.ContourImageSequence} == set(uids)
    assert all(str(c.ContourImageSequence[0].ReferencedSOPInstanceUID) in uids
               for rc in rt.ROIContourSequence for c in rc.get("ContourSequence", []))
    assert [r.ROIName for r in rt.StructureSetROISequence] == list(labels.values())
    img = nib.load(str(case["seg"]))
    back = read_dicom_label(paths["rtstruct"], img.affine, img.shape, labels,
                            frame_of_reference_uid=case["series"].frame_of_reference_uid)
    for value, name in labels.items():
        dice = _dice(back.data == value, data == value)
        print(f"{case['folder'].parent.name} {name}: RTSTRUCT round trip Dice {dice:.4f}")
        assert dice >= 0.98

    # Both read by pydicom with no validation warning.
    for path in paths.values():
        _read_strictly(path)
