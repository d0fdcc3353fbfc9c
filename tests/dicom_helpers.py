"""Tiny synthetic DICOM objects for tests: a CT series, an RTSTRUCT with given contours, a DICOM-SEG.

Everything is written with pydicom (and highdicom for the SEG) from values the tests choose, so
the expected labels are known exactly. Coordinates are DICOM's LPS in mm. For an axial series
from :func:`write_ct_series`, voxel ``(i, j, k)`` of the image read by
:func:`unet_pipeline.io.dicom.read_dicom_series` (column, row, slice) lies at
``origin + (i * column spacing, j * row spacing, k * slice spacing)`` (LPS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _new_dataset(sop_class: str, uid: str):
    """An empty pydicom data set of ``sop_class`` with instance ``uid`` and its file meta (explicit VR LE)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    return ds


def write_ct_series(folder: Path, hu: np.ndarray, *, spacing=(0.8, 0.8, 2.5), origin=(-20.0, -10.0, 50.0),
                    frame_uid: str | None = None, series_uid: str | None = None, study_uid: str | None = None,
                    patient_id: str = "P001", series_number: int = 3) -> dict:
    """Write ``hu`` ``(slices, rows, columns)`` (int16 HU) as an axial CT series, one file per slice.

    ``spacing`` is ``(column spacing, row spacing, slice spacing)`` in mm (x, y, z); slice ``s`` lies
    at ``origin + s * slice spacing`` along z. Returns the UIDs (``study``, ``series``, ``frame``,
    ``instances``) and the file paths.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    instances, paths = [], []
    for s in range(hu.shape[0]):
        uid = generate_uid()
        ds = _new_dataset(CT_IMAGE_STORAGE, uid)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.Manufacturer = "CT", "synthetic"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", patient_id, "", "O"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = (
            "20240101", "120000", "", "1", "")
        ds.SeriesNumber, ds.InstanceNumber = series_number, s + 1
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + s * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (row spacing, column spacing)
        ds.SliceThickness = float(spacing[2])
        ds.PositionReferenceIndicator = ""
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(hu[s], dtype="<i2").tobytes()
        path = folder / f"ct_{s:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        instances.append(uid)
        paths.append(path)
    return {"study": study_uid, "series": series_uid, "frame": frame_uid, "instances": instances, "paths": paths}


def write_rtstruct(path: Path, ct: Mapping, rois: Mapping[str, Sequence], *, frame_uid: str | None = None,
                   top_level_frame: bool = False) -> Path:
    """An RTSTRUCT over the series ``ct`` (from :func:`write_ct_series`) with the given contours.

    ``rois``: ROI name -> contours, each an ``(n, 3)`` LPS array (CLOSED_PLANAR), or a pair
    ``(geometric type, points)``. ``frame_uid`` overrides the series' frame of reference.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    uid, frame = generate_uid(), frame_uid or ct["frame"]
    ds = _new_dataset(RT_STRUCTURE_SET_STORAGE, uid)
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", ct["study"], generate_uid()
    ds.PatientName, ds.PatientID = "Test^Patient", "P001"
    ds.StructureSetLabel = "test"
    if top_level_frame:
        ds.FrameOfReferenceUID = frame
    series = Dataset()
    series.SeriesInstanceUID = ct["series"]
    study = Dataset()
    study.RTReferencedSeriesSequence = DicomSequence([series])
    ref = Dataset()
    ref.FrameOfReferenceUID = frame
    ref.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref])
    structures, contours = [], []
    for number, (name, items) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        structures.append(roi)
        sequence = []
        for contour in items:
            kind, points = contour if isinstance(contour, tuple) else ("CLOSED_PLANAR", contour)
            points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
            item = Dataset()
            item.ContourGeometricType = kind
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.4f}" for v in points.ravel()]
            sequence.append(item)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = number, [255, 0, 0]
        if sequence:
            rc.ContourSequence = DicomSequence(sequence)
        contours.append(rc)
    ds.StructureSetROISequence = DicomSequence(structures)
    ds.ROIContourSequence = DicomSequence(contours)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def square(x0: float, y0: float, x1: float, y1: float, z: float) -> np.ndarray:
    """A closed rectangle ``(4, 3)`` in the plane ``z`` (LPS mm), corners ``(x0, y0)`` and ``(x1, y1)``."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)


def write_seg(path: Path, ct_folder: Path, masks: Mapping[str, np.ndarray], *, fractional: bool = False) -> Path:
    """A DICOM-SEG over the CT series in ``ct_folder``: segment name -> ``(slices, rows, columns)``
    mask (bool; for ``fractional``, values in 0..1) in the series' slice order."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = sorted((pydicom.dcmread(str(p)) for p in sorted(ct_folder.glob("*.dcm"))),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    stack = np.stack([np.asarray(m, dtype=np.float32 if fractional else bool) for m in masks.values()], axis=-1)
    descriptions = [hd.seg.SegmentDescription(n, name, codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL")
                    for n, name in enumerate(masks, start=1)]
    seg = hd.seg.Segmentation(sources, stack, "FRACTIONAL" if fractional else "BINARY", descriptions, hd.UID(), 5,
                              hd.UID(), 1, "test", "test", "1", "1", max_fractional_value=100)
    seg.save_as(str(path))
    return path
