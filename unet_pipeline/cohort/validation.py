"""Checks of a cohort's cases (image, label, geometry, DICOM labels) and screening of case ids."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CaseError
from ..io.roi_names import RoiPattern
from .discovery import CaseSpec
from .naming import case_id_problems

__all__ = ["CaseCheck", "check_case", "case_frame_of_reference", "load_case_image", "screen_cases", "rejection_message",
           "rejection_lines"]

log = logging.getLogger(__name__)


@dataclass
class CaseCheck:
    """Result of :func:`check_case`: errors make a case unusable; warnings do not."""

    case_id: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self)


def _geometry_mismatch(image_affine, label_affine, tol_mm: float) -> list[str]:
    import numpy as np

    from ..io.formats import spacing_from_affine

    problems = []
    si, sl = spacing_from_affine(image_affine), spacing_from_affine(label_affine)
    if not np.allclose(si, sl, rtol=0, atol=tol_mm):
        problems.append(f"spacing differs: image {np.round(si, 4).tolist()} mm vs label {np.round(sl, 4).tolist()} mm")
    di, dl = image_affine[:3, :3] / si, label_affine[:3, :3] / sl
    if not np.allclose(di, dl, atol=1e-4):
        problems.append("direction (orientation) differs between image and label")
    if not np.allclose(image_affine[:3, 3], label_affine[:3, 3], atol=tol_mm):
        problems.append(
            f"origin differs: image {np.round(image_affine[:3, 3], 3).tolist()} mm vs label "
            f"{np.round(label_affine[:3, 3], 3).tolist()} mm"
        )
    return problems


def load_case_image(spec: CaseSpec):
    """The image of a case: :func:`unet_pipeline.io.images.load_image`, or for a DICOM case with a
    ``series_uid``, exactly that series of its folder (:func:`unet_pipeline.io.dicom.read_dicom_series`)."""
    from ..io.images import load_image

    if spec.series_uid is None:
        return load_image(spec.image)
    from ..io.dicom import read_dicom_series

    if not Path(spec.image).is_dir():
        raise CaseError(spec.image, f"DICOM folder of series {spec.series_uid} not found")
    return read_dicom_series(spec.image, spec.series_uid)


def _unexpected(path: str, exc: Exception) -> str:
    log.debug("unexpected error while checking %s", path, exc_info=exc)
    return f"{path}: unexpected error while checking it ({type(exc).__name__}: {exc})"


def check_case(spec: CaseSpec, labels: Mapping[int, str], *, min_slices: int = 1,
               geometry_tolerance_mm: float = 1e-2, slice_axis: str | None = None,
               roi_names: Mapping[int, RoiPattern] | None = None) -> CaseCheck:
    """Check one case and list every problem found; never raises.

    Errors: unreadable/truncated/non-image files, not a single 3-D volume, NaN/Inf, a constant
    image, non-positive spacing, fewer slices than ``min_slices``, label shape/geometry differing
    from the image, non-integer label values, label values outside ``labels``; an unexpected
    exception while checking a file (reported as that file's error). An RTSTRUCT/SEG label:
    another FrameOfReferenceUID than the image series', ROIs matching no class, a class matched
    by several ROIs (``roi_names``: :func:`unet_pipeline.io.roi_names.parse_label_names`).
    Warnings: intensities that do not look like HU, spacing above 10 mm, an empty label; for an
    RTSTRUCT/SEG, contours off the slice planes, classes without an ROI, overlapping classes.
    Slices are counted along ``slice_axis``, the dataset's slicing plane (None: axial).
    When the image cannot be read, the label is still checked on its own (everything except
    its shape and geometry against the image).
    """
    from ..io.dicom_labels import is_dicom_label

    result = CaseCheck(spec.case_id)
    image = None
    try:
        image = _check_image(spec, result, min_slices, slice_axis)
    except Exception as exc:  # one odd file must not stop a cohort check
        result.errors.append(_unexpected(spec.image, exc))
    if spec.label is not None:
        try:
            if is_dicom_label(spec.label):
                _check_dicom_label(spec, labels, roi_names, result, image)
            else:
                _check_label(spec.label, labels, result, image, geometry_tolerance_mm)
        except Exception as exc:
            result.errors.append(_unexpected(spec.label, exc))
    return result


def case_frame_of_reference(spec: CaseSpec) -> str | None:
    """FrameOfReferenceUID of a case's image series (None: not a DICOM series, or none in its headers)."""
    from ..io.dicom import series_frame_of_reference

    if not Path(spec.image).is_dir():
        return None
    return series_frame_of_reference(spec.image, spec.series_uid)


def _check_dicom_label(spec: CaseSpec, labels: Mapping[int, str], roi_names: Mapping[int, RoiPattern] | None,
                       result: CaseCheck, image) -> None:
    """RTSTRUCT/SEG label checks of :func:`check_case`: frame of reference, ROI names, and (with the
    image's ``(affine, shape)``) the label made on the image grid."""
    import numpy as np

    from ..io.dicom_labels import read_dicom_label, read_dicom_label_info

    lname = str(spec.label)
    try:
        info = read_dicom_label_info(lname)
    except CaseError as exc:
        result.errors.extend(f"{exc.path}: {p}" for p in exc.problems)
        return
    result.info.update(label_modality=info.modality, label_rois=list(info.rois))
    frame = case_frame_of_reference(spec)
    if frame:
        result.info["frame_of_reference_uid"] = frame
    else:
        result.warnings.append(f"{lname}: the image is not a DICOM series with a FrameOfReferenceUID: the "
                               f"{info.modality} is placed by patient coordinates without checking that it belongs "
                               "to this scan")
    if image is None:
        from ..io.roi_names import match_rois

        what = "ROI" if info.modality == "RTSTRUCT" else "segment"
        result.errors.extend(f"{lname}: {p}" for p in match_rois(info.rois, labels, roi_names, what=what).problems)
        return
    affine, shape = image
    try:
        label = read_dicom_label(lname, affine, shape, labels, roi_names, frame_of_reference_uid=frame)
    except CaseError as exc:
        result.errors.extend(f"{exc.path}: {p}" for p in exc.problems)
        return
    result.warnings.extend(f"{lname}: {w}" for w in label.warnings)
    result.info["label_rois_used"] = {str(k): v for k, v in sorted(label.rois.items())}
    values = np.unique(label.data)
    result.info["label_values"] = [int(v) for v in values]
    if values.size == 1 and values[0] == 0:
        result.warnings.append(f"{lname}: label volume is empty (background only)")


def _check_image(spec: CaseSpec, result: CaseCheck, min_slices: int, slice_axis: str | None = None):
    """Image checks of :func:`check_case`; ``(affine, shape)`` to compare the label with, or None."""
    import nibabel as nib
    import numpy as np

    from ..io.formats import spacing_from_affine
    from ..io.geometry import canonical_orientation
    from ..io.images import read_voxels

    try:
        img = load_case_image(spec)
        data = read_voxels(img, spec.image)
    except CaseError as exc:
        result.errors.extend(f"{exc.path}: {p}" for p in exc.problems)
        return None
    name = spec.image
    result.warnings.extend(f"{name}: {w}" for w in getattr(img, "extra", {}).get("warnings", ()))  # files left out
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = spacing_from_affine(affine)
    result.info = {
        "shape": list(data.shape),
        "spacing_mm": [round(float(s), 4) for s in spacing],
        "orientation": "".join(nib.aff2axcodes(affine)),
        "dtype": str(data.dtype),
    }
    if spec.series_uid:
        result.info["series_uid"] = spec.series_uid
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        result.errors.append(f"{name}: invalid voxel spacing or affine (spacing {spacing.tolist()})")
        return None
    if data.size == 0:
        result.errors.append(f"{name}: image has no voxels (shape {data.shape})")
        return None
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            result.errors.append(f"{name}: {n_bad} NaN/Inf voxels")
            data = np.where(np.isfinite(data), data, 0)
    lo, hi = float(data.min()), float(data.max())
    result.info.update(hu_min=lo, hu_max=hi)
    if lo == hi:
        result.errors.append(f"{name}: image is constant (every voxel = {lo:g})")
    elif lo > -500 or hi < 100 or hi > 40000:
        result.warnings.append(f"{name}: intensities {lo:g}..{hi:g} do not look like CT in HU (air -1000, bone > 300)")
    if np.any(spacing > 10):
        result.warnings.append(f"{name}: unusually large voxel spacing {np.round(spacing, 2).tolist()} mm")
    try:
        orient = canonical_orientation(affine, data.shape, slice_axis)
        n_slices = orient.canonical_shape[0]
        result.info["slices"] = int(n_slices)
        if n_slices < min_slices:
            result.errors.append(f"{name}: {n_slices} slice(s), the model needs at least {min_slices}")
    except ValueError as exc:
        result.errors.append(f"{name}: {exc}")
    return affine, data.shape


def _check_label(lname: str, labels: Mapping[int, str], result: CaseCheck, image, geometry_tolerance_mm: float) -> None:
    """Label checks of :func:`check_case`; shape and geometry only when ``image`` is ``(affine, shape)``."""
    import numpy as np

    from ..io.images import load_image, read_voxels

    try:
        limg = load_image(lname)
        ldata = read_voxels(limg, lname)
    except CaseError as exc:
        result.errors.extend(f"{exc.path}: {p}" for p in exc.problems)
        return
    if image is not None:
        affine, shape = image
        if ldata.shape != shape:
            result.errors.append(f"{lname}: label shape {tuple(ldata.shape)} differs from image shape {tuple(shape)}")
        else:
            result.errors.extend(f"{lname}: {p}" for p in _geometry_mismatch(affine, np.asarray(limg.affine), geometry_tolerance_mm))
    if np.issubdtype(ldata.dtype, np.floating):
        finite = np.isfinite(ldata)
        if not finite.all():
            result.errors.append(f"{lname}: label has {int((~finite).sum())} NaN/Inf voxels")
            ldata = np.where(finite, ldata, 0)
        if np.any(ldata != np.round(ldata)):
            result.errors.append(f"{lname}: label values are not integers (dtype {ldata.dtype})")
            return
    values = np.unique(ldata).astype(np.int64)
    allowed = {0, *labels.keys()} if labels else None
    if allowed is not None:
        extra = sorted(int(v) for v in values if int(v) not in allowed)
        if extra:
            result.errors.append(f"{lname}: label values {extra[:10]} are not declared classes {sorted(allowed)}")
    result.info["label_values"] = [int(v) for v in values]
    if values.size == 1 and values[0] == 0:
        result.warnings.append(f"{lname}: label volume is empty (background only)")


def screen_cases(cases: Sequence[CaseSpec], problems: Mapping[str, Sequence[str]] | None = None
                 ) -> tuple[list[CaseSpec], dict[str, list[str]]]:
    """Set aside the cases whose id cannot be used: ``(usable cases, {case id: problems})``.

    Rejected: ids unsafe as file names; ids given to different sources (every copy: which one is
    meant is unknowable; the same files listed twice are kept once); ids that differ only in
    letter case (every one of them: they would share files on case-insensitive file systems);
    and the ids in ``problems`` (found by discovery, e.g. several matching label files).
    """
    rejected: dict[str, list[str]] = {cid: list(p) for cid, p in (problems or {}).items() if p}
    unique = list(dict.fromkeys(cases))  # the same files listed twice: one case
    groups: dict[str, list[CaseSpec]] = {}
    for spec in unique:
        groups.setdefault(spec.case_id.lower(), []).append(spec)
    for group in groups.values():
        ids = sorted({c.case_id for c in group})
        for cid in ids:
            same = [c for c in group if c.case_id == cid]
            if len(same) > 1:
                sources = "; ".join(c.image + (f" (series {c.series_uid})" if c.series_uid else "") for c in same)
                rejected.setdefault(cid, []).append(f"duplicate case id: {len(same)} different sources ({sources})")
            others = [o for o in ids if o != cid]
            if others:
                rejected.setdefault(cid, []).append(
                    f"case id clashes with {', '.join(repr(o) for o in others)} on case-insensitive file systems")
            rejected.setdefault(cid, []).extend(case_id_problems([cid]).get(cid, []))
            if not rejected[cid]:
                del rejected[cid]
    return [c for c in unique if c.case_id not in rejected], rejected


def rejection_message(rejected: Mapping[str, Sequence[str]]) -> str:
    """The lines that name every rejected case and why (empty when none)."""
    if not rejected:
        return ""
    lines = [f"cohort: {len(rejected)} case(s) left out of this run because of their case id "
             "(rename or remove their files; every other case is processed):"]
    return "\n".join(lines + rejection_lines(rejected))


def rejection_lines(rejected: Mapping[str, Sequence[str]]) -> list[str]:
    return [f"  {cid!r}: {'; '.join(problems)}" for cid, problems in sorted(rejected.items())]
