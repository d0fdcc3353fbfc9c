"""Labels from DICOM: RTSTRUCT contours and DICOM-SEG segments as a label volume on a CT grid.

A structure set (RTSTRUCT) or segmentation (SEG) belongs to a CT series when both share the
FrameOfReferenceUID; the UIDs of the series or images it names are not used (clinical exports
often name the original, uncropped series). It is placed by patient coordinates alone.

Coordinates and arrays:

* patient coordinates are DICOM's LPS, in mm (``ContourData``, ``ImagePositionPatient``);
* a *grid* is a 3-D volume of shape ``(I, J, K)`` in stored voxel order with a NIfTI-style
  RAS+ affine (4 x 4, voxel ``(i, j, k)`` -> RAS mm), as :func:`unet_pipeline.io.dicom.read_dicom_series`
  and :func:`unet_pipeline.io.images.load_image` return it (for a DICOM series: ``i`` = column, ``j`` =
  row, ``k`` = slice along the normal).

RTSTRUCT: each CLOSED_PLANAR contour must lie in one plane of the grid (all its points within
:data:`PLANE_TOLERANCE` voxels of the same slice). The contours of one ROI on one slice are filled
together by the even-odd rule (a contour inside another is a hole, one inside that an island),
and a voxel is inside when its centre is. Contours off the slice planes (between slices, outside
the scanned range, or not parallel to the slices), open contours and points are left out, each
ROI's count reported as a warning.

DICOM-SEG (read with highdicom): BINARY segments as they are, FRACTIONAL ones thresholded at
:data:`FRACTIONAL_THRESHOLD` of the maximum value. Segment frames are placed on the grid by their
positions (voxel for voxel when the grids coincide, else nearest neighbour, with a warning).

Both: ROI or segment names map to classes through ``cohort.label_names``
(:mod:`unet_pipeline.io.roi_names`); voxels claimed by two classes go to the higher label value,
reported as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CaseError
from .roi_names import RoiPattern, match_rois

__all__ = [
    "LABEL_MODALITIES",
    "PLANE_TOLERANCE",
    "FRACTIONAL_THRESHOLD",
    "DicomLabelInfo",
    "DicomLabel",
    "is_dicom_label",
    "read_dicom_label_info",
    "read_dicom_label",
    "rtstruct_masks",
    "seg_masks",
    "fill_polygons",
    "patient_to_voxel",
    "voxel_to_patient",
]

log = logging.getLogger(__name__)

#: Modalities of the DICOM objects read as labels.
LABEL_MODALITIES = ("RTSTRUCT", "SEG")
#: Largest distance (voxels) of a contour point from its slice plane, and spread within a contour.
PLANE_TOLERANCE = 0.1
#: A FRACTIONAL segment covers a voxel from this share of MaximumFractionalValue on.
FRACTIONAL_THRESHOLD = 0.5
_ALIGN_TOLERANCE = 1e-2  # voxels: grids coincide when every index maps within this of an integer
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def patient_to_voxel(points_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous voxel indices ``(n, 3)`` of patient points ``(n, 3)`` (LPS mm) on a grid with RAS+ ``affine``."""
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ _LPS_RAS
    return np.asarray(points_lps, dtype=np.float64) @ to_voxel[:3, :3].T + to_voxel[:3, 3]


def voxel_to_patient(indices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Patient points ``(n, 3)`` (LPS mm) of voxel indices ``(n, 3)`` on a grid with RAS+ ``affine``."""
    to_lps = _LPS_RAS @ np.asarray(affine, dtype=np.float64)
    return np.asarray(indices, dtype=np.float64) @ to_lps[:3, :3].T + to_lps[:3, 3]


def is_dicom_label(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM RTSTRUCT or SEG file (read from its header, standard library only)."""
    from .dicom import read_dicom_header

    path = Path(path)
    if not path.is_file():
        return False
    try:
        header = read_dicom_header(path)
    except (ValueError, OSError):
        return False
    return header is not None and (header.modality or "").upper() in LABEL_MODALITIES


@dataclass(frozen=True)
class DicomLabelInfo:
    """What a label object says about itself (its header; no contours or pixels decoded).

    ``rois``: ROI names (RTSTRUCT, StructureSetROISequence order) or segment labels (SEG,
    segment number order); ``referenced_series``: the SeriesInstanceUIDs it names (informative
    only: matching is by ``frame_of_reference_uid``).
    """

    path: str
    modality: str
    frame_of_reference_uid: str | None
    rois: tuple[str, ...]
    referenced_series: tuple[str, ...] = ()


def _dcmread(path: str | Path, **kwargs):
    import pydicom

    try:
        return pydicom.dcmread(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for broken files
        raise CaseError(path, f"cannot read the DICOM file ({type(exc).__name__}: {exc})") from exc


def read_dicom_label_info(path: str | Path) -> DicomLabelInfo:
    """Modality, frame of reference and ROI/segment names of an RTSTRUCT or SEG file.

    Raises
    ------
    CaseError
        The file cannot be read, or is neither an RTSTRUCT nor a SEG.
    """
    ds = _dcmread(path, stop_before_pixels=True)
    modality = str(ds.get("Modality", "")).upper()
    if modality == "RTSTRUCT":
        rois = tuple(str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", []))
        frames = ds.get("ReferencedFrameOfReferenceSequence", [])
        uid = str(frames[0].FrameOfReferenceUID) if frames and "FrameOfReferenceUID" in frames[0] else None
        uid = uid or (str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None)
        series = tuple(str(s.SeriesInstanceUID) for f in frames for st in f.get("RTReferencedStudySequence", [])
                       for s in st.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in s)
    elif modality == "SEG":
        segments = sorted(ds.get("SegmentSequence", []), key=lambda s: int(s.SegmentNumber))
        rois = tuple(str(s.get("SegmentLabel", "")) for s in segments)
        uid = str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None
        series = tuple(str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])
                       if "SeriesInstanceUID" in s)
    else:
        raise CaseError(path, f"not an RTSTRUCT or DICOM-SEG label (Modality {modality or 'missing'})")
    return DicomLabelInfo(str(path), modality, uid, rois, series)


# ---------------------------------------------------------------------------------------------
# RTSTRUCT


def fill_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of closed polygons on a 2-D pixel grid.

    Parameters
    ----------
    polygons
        Each an ``(n, 2)`` array of vertices in continuous pixel indices ``(a, b)`` (pixel
        ``[a, b]`` has its centre at ``(a, b)``); closed implicitly (last vertex to first).
    shape
        ``(n_a, n_b)`` of the grid.

    Returns
    -------
    numpy.ndarray
        bool ``(n_a, n_b)``: True where a pixel centre lies inside an odd number of polygons (a
        polygon inside another is a hole). A centre exactly on an edge counts as inside on the
        edge's left (lower ``b``) side only, so two polygons sharing an edge do not both take it.
    """
    n_a, n_b = int(shape[0]), int(shape[1])
    rows, cols = [], []
    for poly in polygons:
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(p) < 3:
            continue
        a, b = p, np.roll(p, -1, axis=0)
        # Row r crosses edge (a, b) when min <= r < max (half-open: a vertex is counted once).
        start = np.clip(np.ceil(np.minimum(a[:, 0], b[:, 0])), 0, n_a).astype(np.int64)
        stop = np.clip(np.ceil(np.maximum(a[:, 0], b[:, 0])), 0, n_a).astype(np.int64)
        counts = stop - start
        keep = counts > 0
        if not keep.any():
            continue
        a, b, start, counts = a[keep], b[keep], start[keep], counts[keep]
        edge = np.repeat(np.arange(len(counts)), counts)
        row = start[edge] + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        t = (row - a[edge, 0]) / (b[edge, 0] - a[edge, 0])
        x = a[edge, 1] + t * (b[edge, 1] - a[edge, 1])
        rows.append(row)
        cols.append(np.clip(np.ceil(x), 0, n_b).astype(np.int64))  # pixels b >= x have this crossing on their left
    if not rows:
        return np.zeros((n_a, n_b), dtype=bool)
    flat = np.concatenate(rows) * (n_b + 1) + np.concatenate(cols)
    crossings = np.bincount(flat, minlength=n_a * (n_b + 1)).reshape(n_a, n_b + 1)
    return (np.cumsum(crossings, axis=1)[:, :n_b] & 1).astype(bool)


def _contour_points(item) -> np.ndarray:
    """``(n, 3)`` LPS points of a ContourSequence item, parsed from the raw bytes when possible (fast)."""
    from pydicom.dataelem import RawDataElement

    raw = item.get_item(0x30060050)
    if raw is None:
        return np.zeros((0, 3))
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        text = raw.value.decode("ascii", "replace").strip(" \x00")
        values = np.array(text.split("\\"), dtype=np.float64) if text else np.zeros(0)
    else:
        values = np.asarray(item.ContourData, dtype=np.float64)
    if values.size % 3:
        raise ValueError(f"ContourData holds {values.size} values, not a multiple of 3")
    return values.reshape(-1, 3)


@dataclass
class _Skipped:
    """Contours of one ROI left out, by reason (for one warning line per ROI)."""

    between: list[float] = field(default_factory=list)  # slice coordinate of contours between slices
    outside: int = 0
    oblique: int = 0
    not_closed: int = 0

    def message(self, roi: str, total: int) -> str | None:
        parts = []
        if self.between:
            where = ", ".join(f"{c:.2f}" for c in sorted(set(np.round(self.between, 2)))[:5])
            parts.append(f"{len(self.between)} between slice planes (at slice index {where}"
                         f"{', ...' if len(set(np.round(self.between, 2))) > 5 else ''})")
        if self.outside:
            parts.append(f"{self.outside} outside the scanned slices")
        if self.oblique:
            parts.append(f"{self.oblique} not parallel to the slices")
        if self.not_closed:
            parts.append(f"{self.not_closed} not CLOSED_PLANAR (open contours or points)")
        if not parts:
            return None
        return (f"ROI {roi!r}: {sum([len(self.between), self.outside, self.oblique, self.not_closed])} of {total} "
                f"contour(s) left out: {'; '.join(parts)}")


def rtstruct_masks(path: str | Path, affine: np.ndarray, shape: Sequence[int], rois: Sequence[int] | None = None,
                   ds=None) -> tuple[dict[int, np.ndarray], list[str]]:
    """Rasterise the ROIs of an RTSTRUCT on a grid.

    Parameters
    ----------
    path
        The RTSTRUCT file (named in messages).
    affine, shape
        The grid: RAS+ affine and ``(I, J, K)``.
    rois
        Indices into the StructureSetROISequence of the ROIs wanted (None: all).
    ds
        The file already read with pydicom (None: read here).

    Returns
    -------
    tuple
        ROI index -> bool mask ``(I, J, K)``, and warnings (contours left out, ROIs without
        contours or reaching beyond the grid).
    """
    ds = ds if ds is not None else _dcmread(path)
    shape = tuple(int(s) for s in shape)
    structures = list(ds.get("StructureSetROISequence", []))
    contours_of = {int(rc.ReferencedROINumber): rc for rc in ds.get("ROIContourSequence", [])
                   if "ReferencedROINumber" in rc}
    wanted = range(len(structures)) if rois is None else rois
    masks: dict[int, np.ndarray] = {}
    warnings: list[str] = []
    for index in wanted:
        roi = structures[index]
        name = str(roi.get("ROIName", ""))
        mask = np.zeros(shape, dtype=bool)
        masks[index] = mask
        rc = contours_of.get(int(roi.ROINumber)) if "ROINumber" in roi else None
        items = list(rc.get("ContourSequence", [])) if rc is not None else []
        if not items:
            warnings.append(f"ROI {name!r} has no contours")
            continue
        skipped, beyond = _Skipped(), False
        planes: dict[tuple[int, int], list[np.ndarray]] = {}
        for item in items:
            try:
                points = _contour_points(item)
            except ValueError as exc:
                raise CaseError(path, f"ROI {name!r}: {exc}") from exc
            if str(item.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR" or len(points) < 3:
                skipped.not_closed += 1
                continue
            vox = patient_to_voxel(points, affine)
            spread = np.ptp(vox, axis=0)
            axis = 2 if spread[2] <= PLANE_TOLERANCE else int(np.argmin(spread))
            if spread[axis] > PLANE_TOLERANCE:
                skipped.oblique += 1
                continue
            coord = float(vox[:, axis].mean())
            plane = int(np.rint(coord))
            if abs(coord - plane) > PLANE_TOLERANCE:
                skipped.between.append(coord)
                continue
            if not 0 <= plane < shape[axis]:
                skipped.outside += 1
                continue
            in_plane = [a for a in range(3) if a != axis]
            uv = vox[:, in_plane]
            if np.any(uv < -0.5) or np.any(uv > np.array([shape[a] for a in in_plane]) - 0.5):
                beyond = True
            planes.setdefault((axis, plane), []).append(uv)
        for (axis, plane), polygons in planes.items():
            in_plane = [a for a in range(3) if a != axis]
            index_ = [slice(None)] * 3
            index_[axis] = plane
            mask[tuple(index_)] ^= fill_polygons(polygons, (shape[in_plane[0]], shape[in_plane[1]]))
        message = skipped.message(name, len(items))
        if message:
            warnings.append(message)
        if beyond:
            warnings.append(f"ROI {name!r} reaches beyond the image (cut at its border)")
    return masks, warnings


# ---------------------------------------------------------------------------------------------
# DICOM-SEG


def _resample_nearest(src: np.ndarray, src_affine_lps: np.ndarray, dst_affine: np.ndarray,
                      dst_shape: Sequence[int]) -> tuple[np.ndarray, bool]:
    """Nearest-neighbour ``src`` (highdicom's ``(slice, row, column)`` volume, affine to LPS mm) on a grid.

    Returns the ``(I, J, K)`` volume (zero outside ``src``) and whether the grids coincide
    (every grid voxel centre maps within 0.01 voxel of a ``src`` voxel centre, or of its lattice).
    """
    to_src = np.linalg.inv(np.asarray(src_affine_lps, dtype=np.float64)) @ _LPS_RAS @ np.asarray(dst_affine, np.float64)
    ni, nj, nk = (int(s) for s in dst_shape)
    out = np.zeros((ni, nj, nk), dtype=src.dtype)
    ii, jj = np.meshgrid(np.arange(ni, dtype=np.float64), np.arange(nj, dtype=np.float64), indexing="ij")
    aligned = True
    for k in range(nk):
        idx = ii[..., None] * to_src[:3, 0] + jj[..., None] * to_src[:3, 1] + (k * to_src[:3, 2] + to_src[:3, 3])
        near = np.rint(idx)
        aligned = aligned and bool(np.abs(idx - near).max() <= _ALIGN_TOLERANCE)
        near = near.astype(np.int64)
        inside = np.all((near >= 0) & (near < np.array(src.shape[:3])), axis=-1)
        if inside.any():
            s, r, c = near[inside].T
            out[:, :, k][inside] = src[s, r, c]
    return out, aligned


def seg_masks(path: str | Path, affine: np.ndarray, shape: Sequence[int], segments: Sequence[int] | None = None
              ) -> tuple[dict[int, np.ndarray], list[str]]:
    """Place the segments of a DICOM-SEG on a grid.

    Parameters
    ----------
    path
        The SEG file.
    affine, shape
        The grid: RAS+ affine and ``(I, J, K)``.
    segments
        Indices into the segments in segment-number order (None: all).

    Returns
    -------
    tuple
        Segment index -> bool mask ``(I, J, K)``; warnings (grids that differ, voxels outside the grid).
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
        numbers = sorted(int(n) for n in seg.get_segment_numbers())
    except Exception as exc:  # noqa: BLE001 - highdicom raises many kinds for broken files
        raise CaseError(path, f"cannot read the DICOM-SEG ({type(exc).__name__}: {exc})") from exc
    fractional = str(seg.SegmentationType).upper() == "FRACTIONAL"
    threshold = FRACTIONAL_THRESHOLD * float(seg.get("MaximumFractionalValue", 255)) if fractional else 0.5
    shape = tuple(int(s) for s in shape)
    masks: dict[int, np.ndarray] = {}
    warnings: list[str] = []
    regridded = False
    for index in (range(len(numbers)) if segments is None else segments):
        number = numbers[index]
        name = seg.get_segment_description(number).segment_label
        try:
            volume = seg.get_volume(segment_numbers=[number], combine_segments=False, rescale_fractional=False)
        except Exception as exc:  # noqa: BLE001
            raise CaseError(path, f"segment {number} ({name!r}): its frames do not form a volume "
                            f"({type(exc).__name__}: {exc})") from exc
        src = np.asarray(volume.array)[..., 0] >= threshold  # (slices, rows, columns)
        mask, aligned = _resample_nearest(src, volume.affine, affine, shape)
        masks[index] = mask
        regridded |= not aligned
        lost = int(src.sum()) - int(mask.sum())
        if aligned and lost > 0:
            warnings.append(f"segment {name!r}: {lost} voxel(s) lie outside the image, left out")
    if regridded:
        warnings.append("the DICOM-SEG grid differs from the image's: placed on it by nearest neighbour")
    return masks, warnings


# ---------------------------------------------------------------------------------------------
# Either, as a label volume


@dataclass
class DicomLabel:
    """A label volume made from an RTSTRUCT or SEG (:func:`read_dicom_label`).

    Attributes
    ----------
    data
        ``(I, J, K)`` label values on the grid (uint8; uint16 beyond 255), 0 = background.
    rois
        Label value -> the ROI (segment) name that made the class.
    unmatched
        ROI names matching no class (not used).
    warnings
        Contours left out, classes without an ROI, overlaps, grids that differ.
    info
        The object's :class:`DicomLabelInfo`.
    """

    data: np.ndarray
    rois: dict[int, str]
    unmatched: list[str]
    warnings: list[str]
    info: DicomLabelInfo


def read_dicom_label(path: str | Path, affine: np.ndarray, shape: Sequence[int], labels: Mapping[int, str],
                     roi_names: Mapping[int, RoiPattern] | None = None, *,
                     frame_of_reference_uid: str | None = None) -> DicomLabel:
    """An RTSTRUCT or DICOM-SEG as label values on a grid.

    Parameters
    ----------
    path
        The RTSTRUCT or SEG file.
    affine, shape
        The grid (the CT's): RAS+ affine and ``(I, J, K)``.
    labels
        Label value -> class name.
    roi_names
        Label value -> ROI names or regex (:func:`unet_pipeline.io.roi_names.parse_label_names`);
        classes left out match ROIs named like the class.
    frame_of_reference_uid
        The CT series' FrameOfReferenceUID; None: not checked.

    Raises
    ------
    CaseError
        Unreadable; not an RTSTRUCT/SEG; another frame of reference; no ROI matching a class,
        several ROIs matching one class, or an ROI matching several; every problem listed.
    """
    from .formats import label_dtype

    info = read_dicom_label_info(path)
    what = "ROI" if info.modality == "RTSTRUCT" else "segment"
    errors = []
    if frame_of_reference_uid and info.frame_of_reference_uid and info.frame_of_reference_uid != frame_of_reference_uid:
        errors.append(f"{info.modality} belongs to another scan: FrameOfReferenceUID {info.frame_of_reference_uid} "
                      f"differs from the image series' {frame_of_reference_uid}")
    match = match_rois(info.rois, labels, roi_names, what=what)
    errors += match.problems
    if errors:
        raise CaseError(path, errors)
    assignment = match.assignment()  # ROI index -> label value
    if info.modality == "RTSTRUCT":
        masks, warnings = rtstruct_masks(path, affine, shape, sorted(assignment))
    else:
        masks, warnings = seg_masks(path, affine, shape, sorted(assignment))
    names = dict(labels)
    warnings += [f"no {what} for class {names[v]!r} ({what}s: {', '.join(repr(r) for r in info.rois)}): "
                 "background in this case" for v in match.missing]
    data = np.zeros(tuple(int(s) for s in shape), dtype=label_dtype(max(names, default=0) + 1))
    for index, value in sorted(assignment.items(), key=lambda kv: kv[1]):  # higher values written last: they win
        mask = masks[index]
        overlap = mask & (data != 0)
        if overlap.any():
            others = ", ".join(repr(names[int(v)]) for v in np.unique(data[overlap]))
            warnings.append(f"{int(overlap.sum())} voxel(s) of class {names[value]!r} ({what} {info.rois[index]!r}) "
                            f"also belong to {others}: given to {names[value]!r} (the higher label value)")
        data[mask] = value
    rois = {value: info.rois[index] for index, value in assignment.items()}
    for value in sorted(rois):
        if not np.any(data == value):
            warnings.append(f"class {names[value]!r} ({what} {rois[value]!r}) has no voxel on the image grid")
    return DicomLabel(data, rois, match.unmatched, warnings, info)
