"""Segmentations back to DICOM: a DICOM-SEG (highdicom) and an RTSTRUCT (pydicom) per case.

Both reference the CT series the case was read from (its StudyInstanceUID, SeriesInstanceUID,
FrameOfReferenceUID and, per frame or contour, the SOP instance of the source image), so a PACS
viewer or planning system shows them over that series. Patient and study attributes are copied
from the source images.

Arrays and coordinates:

* the segmentation is a label volume ``(I, J, K)`` (0 = background, label values as in
  ``labels``) on a grid with a NIfTI-style RAS+ affine (voxel -> RAS mm), the grid of the
  imported CT (:func:`unet_pipeline.io.dicom.read_dicom_series`);
* each source image is a ``(Rows, Columns)`` frame; its pixel ``(r, c)`` lies at
  ``ImagePositionPatient + c * PixelSpacing[1] * row_direction + r * PixelSpacing[0] * column_direction``
  (LPS mm). Every source pixel must fall on a voxel centre of the grid (to 0.01 voxel), else the
  segmentation is not on this series' grid and nothing is written.

DICOM-SEG: BINARY, one segment per class in label order (segment numbers 1..N), labelled with the
class name, coded with its SNOMED CT anatomical structure where :func:`segment_codes` knows one,
the algorithm named as this software; empty frames are left out.
RTSTRUCT: one ROI per class (ROINumber = label value, ROIName = class name), CLOSED_PLANAR
contours per source image traced along the mask's border at half-way between pixel centres
(marching squares with contourpy), holes as further contours on the same image: a reader filling
them by the even-odd rule (:func:`unet_pipeline.io.dicom_labels.fill_polygons`) gets the mask back.
"""

from __future__ import annotations

import datetime
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import CaseError
from .files import atomic_path

__all__ = [
    "SEG_SERIES_NUMBER",
    "RTSTRUCT_SERIES_NUMBER",
    "read_source_series",
    "frames_from_volume",
    "segment_codes",
    "mask_contours",
    "write_dicom_seg",
    "write_rtstruct",
]

log = logging.getLogger(__name__)

#: SeriesNumber of the DICOM-SEG and RTSTRUCT series written.
SEG_SERIES_NUMBER = 901
RTSTRUCT_SERIES_NUMBER = 902
_MANUFACTURER = "unet-pipeline"
_MODEL_NAME = "unet-pipeline 2D U-Net"
_ALIGN_TOLERANCE = 1e-2  # voxels
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # what RT structure sets name their study with
_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]
_LATERALITY = {"left", "right", "l", "r", "lt", "rt"}


def _colour(n: int) -> tuple[int, int, int]:
    """sRGB display colour (0..255 each) of the ``n``-th class (0-based, ascending label value): an RTSTRUCT's
    ROIDisplayColor, and as CIELab a DICOM-SEG's RecommendedDisplayCIELabValue, so both show a class alike."""
    return _COLOURS[n % len(_COLOURS)]


def _version() -> str:
    from .. import __version__

    return __version__


def read_source_series(folder: str | Path, series_uid: str | None = None) -> list:
    """The headers (pydicom datasets, no pixel data) of one CT series of ``folder``, sorted along the slice normal.

    The files are those :func:`unet_pipeline.io.dicom.read_dicom_series` reads (localizers left out,
    each exact copy once).

    ``series_uid`` None: the folder's only image series.

    Raises
    ------
    CaseError
        No such series, several and none chosen, or unreadable files; the message names the folder.
    """
    import pydicom
    from pydicom import config

    from .dicom import find_series, series_files

    folder = Path(folder)
    if series_uid is None:
        series, _ = find_series(folder)
        if len(series) != 1:
            raise CaseError(folder, f"{len(series)} DICOM image series in this folder: name the one the "
                            "segmentation was made from (series_uid)")
        series_uid = series[0].uid
    files, _ = series_files(folder, series_uid)  # the slices read: no localizers, each copy once
    datasets = []
    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE  # the source's own flaws: _conform reports what matters
    try:
        for f in files:
            try:
                datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
            except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
                raise CaseError(f, f"cannot read the DICOM file ({type(exc).__name__}: {exc})") from exc
        for n, ds in enumerate(datasets):
            if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
                del ds.SpecificCharacterSet  # empty = the default repertoire; highdicom refuses the empty value
            _conform(ds, logging.WARNING if n == 0 else logging.DEBUG)  # what the outputs copy must be valid
    finally:
        config.settings.reading_validation_mode = mode
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda d: float(np.asarray(d.ImagePositionPatient, dtype=np.float64) @ normal))


def _frame_indices(ds, affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices ``(i, j, k)``, each ``(Rows, Columns)``, of the pixels of source image ``ds`` on the grid."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    ipp = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ _LPS_RAS
    m, t = to_voxel[:3, :3], to_voxel[:3, 3]
    origin, step_c, step_r = m @ ipp + t, m @ (iop[:3] * dc), m @ (iop[3:] * dr)
    r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    idx = origin + r[..., None] * step_r + c[..., None] * step_c  # (Rows, Columns, 3)
    near = np.rint(idx)
    if np.abs(idx - near).max() > _ALIGN_TOLERANCE or near.min() < 0 or np.any(near.max(axis=(0, 1)) >= shape):
        raise CaseError(str(ds.get("SOPInstanceUID", "?")), "the segmentation's grid is not this series' grid: the "
                        "source image's pixels do not fall on its voxels (was it made from another series?)")
    near = near.astype(np.int64)
    return near[..., 0], near[..., 1], near[..., 2]


def frames_from_volume(volume: np.ndarray, affine: np.ndarray, sources: Sequence) -> np.ndarray:
    """The ``(n, Rows, Columns)`` frames of ``volume`` ``(I, J, K)`` (RAS+ ``affine``) at the ``n`` source images."""
    frames = []
    for ds in sources:
        i, j, k = _frame_indices(ds, affine, volume.shape)
        frames.append(volume[i, j, k])
    return np.stack(frames)


def segment_codes(name: str):
    """``(category, property type)`` codes of a class name for a DICOM-SEG segment.

    The SNOMED CT code named like the class (``liver`` -> Liver, ``kidney_left`` -> Kidney: words
    joined, laterality dropped) in pydicom's code dictionary, with the category "Anatomical
    Structure"; a name it does not know gets "Tissue" for both.
    """
    from pydicom.sr.codedict import codes

    words = [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]
    for candidate in (words, [w for w in words if w not in _LATERALITY]):
        key = "".join(w.capitalize() for w in candidate)
        if key and key[0].isalpha():
            try:
                return codes.SCT.AnatomicalStructure, getattr(codes.SCT, key)
            except AttributeError:
                continue
    return codes.SCT.Tissue, codes.SCT.Tissue


def _conform(ds, level: int = logging.WARNING) -> None:
    """Cut text values longer than their VR allows (copied from source images that break the limit,
    e.g. a 17-character StudyID), so that the file reads without validation warnings."""
    from pydicom.multival import MultiValue

    limits = {"AE": 16, "CS": 16, "SH": 16, "LO": 64}
    for elem in ds.iterall():
        limit = limits.get(elem.VR)
        if limit is None or elem.value is None:
            continue
        values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
        if any(isinstance(v, str) and len(v) > limit for v in values):
            cut = [v[:limit] if isinstance(v, str) else v for v in values]
            log.log(level, "%s %r is longer than DICOM allows (%s, %d characters): written as %r",
                    elem.keyword or elem.tag, elem.value, elem.VR, limit, cut if len(cut) > 1 else cut[0])
            elem.value = cut if len(cut) > 1 else cut[0]


def _class_values(labels: Mapping[int, str]) -> list[int]:
    """The foreground label values of ``labels``, ascending; ``ValueError`` when there is none."""
    values = sorted(int(v) for v in labels if int(v) != 0)
    if not values:
        raise ValueError("labels: no class to write")
    return values


def _write_dataset(ds, out_path: str | Path) -> None:
    _conform(ds)
    with atomic_path(out_path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)


def write_dicom_seg(volume: np.ndarray, affine: np.ndarray, sources: Sequence, labels: Mapping[int, str],
                    out_path: str | Path, *, series_description: str = "U-Net segmentation") -> dict:
    """Write ``volume`` as a DICOM-SEG over the ``sources`` (headers of the series, :func:`read_source_series`).

    Parameters
    ----------
    volume
        ``(I, J, K)`` label values on the grid of ``affine`` (RAS+).
    labels
        Label value -> class name; one segment each, in ascending value order (segment numbers 1..N).

    Returns
    -------
    dict
        ``series_instance_uid``, ``sop_instance_uid`` and ``segments`` (segment number -> class name).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = _class_values(labels)
    frames = frames_from_volume(np.asarray(volume), affine, sources)
    lut = np.zeros(int(max(values, default=0)) + 1, dtype=np.uint16)
    lut[values] = np.arange(1, len(values) + 1)
    numbers = np.where(frames <= lut.size - 1, lut[np.clip(frames, 0, lut.size - 1)], 0)
    dtype = np.uint8 if len(values) < 256 else np.uint16
    algorithm = hd.AlgorithmIdentificationSequence(name=_MANUFACTURER, version=_version(),
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(values, start=1):
        category, kind = segment_codes(labels[value])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(labels[value])[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*_colour(number - 1))))
    series_uid, sop_uid = hd.UID(), hd.UID()
    with warnings.catch_warnings(record=True) as caught:  # highdicom's remarks on the source's own values
        warnings.simplefilter("always")
        seg = hd.seg.Segmentation(
            source_images=list(sources), pixel_array=numbers.astype(dtype, copy=False),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=series_uid, series_number=SEG_SERIES_NUMBER, sop_instance_uid=sop_uid,
            instance_number=1, manufacturer=_MANUFACTURER, manufacturer_model_name=_MODEL_NAME,
            software_versions=_version(), device_serial_number="0", series_description=series_description,
            content_description="Segmentation by unet-pipeline", content_label="SEGMENTATION")
    for w in caught:
        log.debug("highdicom: %s", w.message)
    _write_dataset(seg, out_path)
    return {"series_instance_uid": str(series_uid), "sop_instance_uid": str(sop_uid),
            "segments": {number: labels[value] for number, value in enumerate(values, start=1)}}


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon ``(n, 2)`` without the vertices lying on a straight line between their neighbours."""
    if len(points) <= 4:
        return points
    prev, nxt = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    d1, d2 = points - prev, nxt - points
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``(n, 2)`` in pixel indices ``(row, column)`` around the True pixels of a 2-D mask.

    Traced by marching squares at level 0.5 (contourpy) on the mask padded with background, so
    every contour is closed and runs half-way between a pixel inside and one outside; holes are
    contours of their own. Vertices on straight runs are dropped. Filling them by the even-odd
    rule (pixel centre inside) gives the mask back.
    """
    import contourpy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])  # traced on the bounding box only
    padded = np.pad(mask[r0:rows[-1] + 1, c0:cols[-1] + 1], 1).astype(np.float64)
    lines = contourpy.contour_generator(z=padded, name="serial", line_type="Separate").lines(0.5)
    out = []
    offset = np.array([r0 - 1.0, c0 - 1.0])  # padded box -> mask indices
    for line in lines:
        xy = np.asarray(line, dtype=np.float64)
        if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]
        if len(xy) >= 3:
            out.append(_drop_collinear(xy[:, ::-1] + offset))  # (x, y) = (column, row) -> (row, column)
    return out


def _ds_text(values: np.ndarray) -> list[str]:
    """Decimal strings (at most 16 characters: DICOM's DS) of coordinates in mm, to 0.1 micrometre."""
    out = []
    for v in np.round(values, 4).ravel():
        text = f"{v:.4f}".rstrip("0").rstrip(".")
        out.append("0" if text in ("-0", "") else text)
    return out


def _copy(target, source, keywords: Sequence[str]) -> None:
    """Copy the ``keywords`` from ``source`` (type 2: empty when ``source`` has none)."""
    for keyword in keywords:
        setattr(target, keyword, source.get(keyword, ""))


def write_rtstruct(volume: np.ndarray, affine: np.ndarray, sources: Sequence, labels: Mapping[int, str],
                   out_path: str | Path, *, series_description: str = "U-Net segmentation") -> dict:
    """Write ``volume`` as an RTSTRUCT over the ``sources``, as :func:`write_dicom_seg` writes a DICOM-SEG.

    ``volume`` holds ``(I, J, K)`` label values on the grid of ``affine`` (RAS+); ``labels`` maps
    each label value to a class name, one ROI each (ROINumber = the label value), also when empty.

    Returns
    -------
    dict
        ``series_instance_uid``, ``sop_instance_uid`` and ``contours`` (class name -> number of contours).
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    values = _class_values(labels)
    frames = frames_from_volume(np.asarray(volume), affine, sources)
    first = sources[0]
    frame_uid = str(first.FrameOfReferenceUID)
    series_uid, sop_uid = generate_uid(), generate_uid()
    ds = _rtstruct_header(first, series_uid, sop_uid, series_description)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(sources, frame_uid)])
    rois, roi_contours, observations, counts = [], [], [], {}
    for n, value in enumerate(values):
        name = str(labels[value])
        rois.append(_structure_set_roi(value, name, frame_uid))
        contours = _roi_contours(value, sources, frames)
        counts[name] = len(contours)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(_colour(n))
        roi_contour.ReferencedROINumber = value
        if contours:
            roi_contour.ContourSequence = DicomSequence(contours)
        roi_contours.append(roi_contour)
        observations.append(_roi_observation(value, name))
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    _write_dataset(ds, out_path)
    return {"series_instance_uid": str(series_uid), "sop_instance_uid": str(sop_uid), "contours": counts}


def _rtstruct_header(first, series_uid: str, sop_uid: str, series_description: str):
    """The RTSTRUCT dataset: file meta, patient and study (copied from ``first``), series, structure set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = _RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if first.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    ds.SOPClassUID = _RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _copy(ds, first, ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                      "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"])
    if "StudyDescription" in first:
        ds.StudyDescription = first.StudyDescription
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = RTSTRUCT_SERIES_NUMBER
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = _MODEL_NAME
    ds.SoftwareVersions = _version()
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "unet-pipeline"
    ds.StructureSetName = "U-Net segmentation"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    return ds


def _referenced_frame(sources: Sequence, frame_uid: str):
    """The ReferencedFrameOfReferenceSequence item: frame of reference -> study -> series -> every source image."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    first = sources[0]
    images = []
    for src in sources:
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        images.append(item)
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = DicomSequence(images)
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _DETACHED_STUDY_MANAGEMENT
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_uid
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    return frame_ref


def _structure_set_roi(value: int, name: str, frame_uid: str):
    """The StructureSetROISequence item of one class (ROINumber = the label value)."""
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = value
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = name[:64]
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"unet-pipeline {_version()} 2D U-Net"
    return roi


def _roi_contours(value: int, sources: Sequence, frames: Sequence[np.ndarray]) -> list:
    """ContourSequence items of one class: closed planar contours (LPS mm) of ``frame == value`` per source image."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    contours = []
    for src, frame in zip(sources, frames):
        ipp = np.asarray(src.ImagePositionPatient, dtype=np.float64)
        iop = np.asarray(src.ImageOrientationPatient, dtype=np.float64)
        dr, dc = (float(v) for v in src.PixelSpacing)
        for rc in mask_contours(frame == value):
            points = ipp + rc[:, 1:2] * dc * iop[:3] + rc[:, 0:1] * dr * iop[3:]  # (n, 3) LPS mm
            ref = Dataset()
            ref.ReferencedSOPClassUID = src.SOPClassUID
            ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
            item = Dataset()
            item.ContourImageSequence = DicomSequence([ref])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = _ds_text(points)
            contours.append(item)
    return contours


def _roi_observation(value: int, name: str):
    """The RTROIObservationsSequence item of one class (ORGAN when its code is an anatomical structure)."""
    from pydicom.dataset import Dataset

    observation = Dataset()
    observation.ObservationNumber = value
    observation.ReferencedROINumber = value
    category, _code = segment_codes(name)
    observation.RTROIInterpretedType = "ORGAN" if category.meaning == "Anatomical Structure" else ""
    observation.ROIInterpreter = ""
    return observation
