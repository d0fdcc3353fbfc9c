"""Discover the cases of a cohort and validate them.

A cohort is given as one of

* a folder of images (and optionally a folder of labels), matched by case id = file name
  without its image extension;
* an nnU-Net v2 / Medical Segmentation Decathlon ``dataset.json`` (``imagesTr``/``labelsTr``/
  ``imagesTs``, ``_0000`` channel suffix);
* a CSV manifest with columns ``case_id,image[,label]`` (paths relative to the manifest);
* the built-in synthetic demo (:mod:`unet_pipeline.demo`).

DICOM in a folder of images: every DICOM image series under a sub-folder ``images/<name>/``
(at any depth: ``<name>/<study>/<series>/``), or loose in ``images/`` itself, is one case,
grouped by SeriesInstanceUID from the file headers (:func:`unet_pipeline.dicom.find_series`),
never by folder alone. Case ids:

* ``<name>`` when ``<name>`` holds a single series (wherever its files lie below it);
* otherwise the path of the series' folder below ``images/``, joined with ``_``
  (``<name>_<study>_<series>``, sub-folder names made safe by
  :func:`~unet_pipeline.naming.safe_name_part`), plus ``_<SeriesNumber>`` when that folder holds
  several series (``_1``, ``_2``, ... by SeriesNumber, then UID, when a SeriesNumber is missing
  or repeated; :func:`~unet_pipeline.naming.series_suffixes`). Loose series in ``images/`` take
  the name of ``images/`` itself.

The case's :attr:`CaseSpec.series_uid` names its series, so reading it never picks up another
series of the same folder. An RTSTRUCT or DICOM-SEG file found with a series (in the same case
folder) that shares its FrameOfReferenceUID is that case's label, unless a label folder has one
too (then the case is refused, naming both); a manifest's ``label`` may name one as well. Their
ROI (segment) names map to classes through ``cohort.label_names`` (:mod:`unet_pipeline.roi_names`).
Whatever discovery passes over (files that are neither images nor DICOM, DICOM objects without
pixels, empty folders, labels without an image) is listed in :attr:`Cohort.notes` and logged as
a warning.

:func:`check_case` lists *every* problem of a case (errors make it unusable, warnings do not),
so ``unet-pipeline check-cohort`` can report a whole cohort in one pass. :func:`screen_cases`
sets aside cases whose id cannot be used (unsafe, duplicated, clashing in letter case): the
workflow leaves them out and fails at the end, naming them, while every other case runs.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import CaseError, ConfigError
from .naming import case_id_from_path, case_id_problems, is_image_file
from .roi_names import RoiPattern, parse_label_names
from .splits import assign_folds, fixed_splits, patient_of_cases, split_cases

__all__ = [
    "CaseSpec",
    "CaseCheck",
    "Cohort",
    "discover_cohort",
    "cohort_from_folders",
    "cohort_from_dataset_json",
    "cohort_from_manifest",
    "check_case",
    "case_frame_of_reference",
    "load_case_image",
    "case_id_problems",
    "screen_cases",
    "rejection_message",
    "split_cases",
    "read_label_names",
    "assign_folds",
    "WorkflowCases",
    "workflow_cases",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CaseSpec:
    """One case: an image file (or DICOM folder) and optionally its label file.

    ``series_uid`` is the SeriesInstanceUID of a DICOM case: the one series read from the
    ``image`` folder (None: the folder's only series). ``patient_id`` is the patient as a CSV
    manifest names it; ``dicom_patient_id`` the PatientID of a DICOM case's headers. Both serve
    to keep a patient's cases on one side of every split (:mod:`unet_pipeline.splits`).
    """

    case_id: str
    image: str
    label: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None
    dicom_patient_id: str | None = None


@dataclass
class Cohort:
    """Cases plus the label names (value -> name, background excluded).

    ``problems``: case id -> problems found by discovery that make the case unusable (several
    label files match it); ``notes``: what discovery passed over, one line each, naming it;
    ``roi_names``: label value -> the RTSTRUCT ROI (DICOM-SEG segment) names or regex of that
    class (:func:`unet_pipeline.roi_names.parse_label_names`; a class left out matches its name).
    """

    cases: list[CaseSpec]
    labels: dict[int, str] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    roi_names: dict[int, RoiPattern] = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def by_id(self) -> dict[str, CaseSpec]:
        return {c.case_id: c for c in self.cases}


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


def _parse_labels(raw: Mapping) -> dict[int, str]:
    """Accept ``{"1": "liver"}`` (MSD) or ``{"liver": 1}`` (nnU-Net v2); drop background 0."""
    labels: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) or (isinstance(v, str) and v.isdigit() and not str(k).isdigit()):
            value, name = int(v), str(k)
        else:
            value, name = int(k), str(v)
        if value != 0:
            labels[value] = name
    return dict(sorted(labels.items()))


def read_label_names(path: str | Path) -> dict[int, str]:
    """Label names from a JSON file with a ``labels`` mapping: a dataset.json (nnU-Net v2
    ``{"liver": 1}`` or MSD ``{"1": "liver"}``) or a segmentation's sidecar ``.json``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read label names ({exc})") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: no 'labels' mapping of label values to names")
    try:
        return _parse_labels(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: 'labels' must map label values to names ({exc})") from exc


def _dicom_cases(top: Path, name: str, *, recursive: bool = True) -> tuple[list[tuple], list[str]]:
    """``(case id, folder, SeriesInstanceUID, PatientID, RTSTRUCT/SEG files)`` of every DICOM image
    series in ``top`` (the id rule is in the module docstring), and notes on what was passed over."""
    from .dicom import find_series
    from .naming import safe_name_part, series_suffixes

    series, notes = find_series(top, recursive=recursive, skip_image_files=not recursive)
    if not series:
        if recursive and not notes:
            notes.append(f"{top}: no DICOM image series found, skipped")
        return [], notes
    if len(series) == 1:
        return [(name, top, series[0].uid, series[0].patient_id, series[0].labels)], notes
    by_folder: dict[str, list] = {}
    for s in series:
        by_folder.setdefault(s.folder, []).append(s)
    cases = []
    for folder, group in by_folder.items():
        base = "_".join([name, *(safe_name_part(part) for part in Path(folder).relative_to(top).parts)])
        suffixes = series_suffixes([s.number for s in group]) if len(group) > 1 else [None]
        for s, suffix in zip(group, suffixes):
            cases.append((f"{base}_{suffix}" if suffix else base, Path(folder), s.uid, s.patient_id, s.labels))
    return cases, notes


def _list_images(folder: Path, *, dicom: bool = True) -> tuple[list[tuple], list[str]]:
    """``(case id, path, SeriesInstanceUID, PatientID, RTSTRUCT/SEG files)`` (None, None, () for image files)
    for the image files directly in ``folder``
    and, with ``dicom``, for every DICOM image series in it and below it (without ``dicom``, as
    for labels: each sub-folder holding files is one entry); and notes naming what was passed over.

    Ids may repeat (``a.nii`` next to ``a.nii.gz``); :func:`screen_cases` rejects them then.
    """
    if not folder.is_dir():
        raise ConfigError(f"cohort folder not found: {folder}")
    found: list[tuple] = []
    notes: list[str] = []
    loose: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and is_image_file(entry):
            found.append((case_id_from_path(entry), entry, None, None, ()))
        elif entry.is_file():
            loose.append(entry)
        elif entry.is_dir() and dicom:
            cases, more = _dicom_cases(entry, entry.name)
            found += cases
            notes += more
        elif entry.is_dir() and any(p.is_file() for p in entry.iterdir()):
            found.append((entry.name, entry, None, None, ()))
        elif entry.is_dir():
            notes.append(f"{entry}: empty folder, skipped")
    sidecars = {str(folder / f"{found_case[0]}.json") for found_case in found}  # <case>.json beside <case>.nii.gz
    if loose and dicom and any(str(p) not in sidecars for p in loose):
        cases, more = _dicom_cases(folder, folder.name, recursive=False)
        found += cases
        notes += more
    elif loose:
        notes += [f"{p}: not an image file, skipped" for p in loose]
    return found, [n for n in notes if n.split(": ", 1)[0] not in sidecars]


def cohort_from_folders(images: str | Path, labels: str | Path | None = None,
                        label_names: Mapping[int, str] | None = None, *, warn: bool = True) -> Cohort:
    """Cases from a folder of images and an optional folder of labels (matched by case id).

    A DICOM series' label may also be an RTSTRUCT/SEG file found with it (module docstring).
    With ``warn``, each of :attr:`Cohort.notes` is also logged as a warning.
    """
    notes: list[str] = []
    label_files: dict[str, list[Path]] = {}
    if labels:
        found, notes = _list_images(Path(labels), dicom=False)
        for cid, path, *_ in found:
            label_files.setdefault(cid, []).append(path)
    found, more = _list_images(Path(images))
    notes += more
    cases, problems = [], {}
    for cid, path, uid, patient, dicom_labels in found:
        matches = [*label_files.get(cid, []), *dicom_labels]
        if len(matches) > 1:
            problems[cid] = [f"several label files match this case: {', '.join(str(m) for m in matches)}"]
        label = matches[0] if len(matches) == 1 else None
        cases.append(CaseSpec(cid, str(path), str(label) if label else None, uid, dicom_patient_id=patient))
    image_ids = {c.case_id for c in cases}
    notes += [f"{p}: label without an image of the same name, not used"
              for cid, paths in label_files.items() if cid not in image_ids for p in paths]
    if warn:
        for note in notes:
            log.warning("cohort: %s", note)
    return Cohort(cases, dict(label_names or {}), problems, notes)


def cohort_from_dataset_json(path: str | Path, *, include_test: bool = True) -> Cohort:
    """Cases from an nnU-Net v2 or MSD ``dataset.json``."""
    path = Path(path)
    root = path.parent
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read dataset.json ({exc})") from exc
    labels = _parse_labels(meta.get("labels", {}))
    cases: list[CaseSpec] = []
    if isinstance(meta.get("training"), list):  # MSD style: explicit pairs
        for item in meta["training"]:
            image = root / item["image"]
            label = root / item["label"] if item.get("label") else None
            cases.append(CaseSpec(case_id_from_path(image, channel_suffix=True), str(image), str(label) if label else None))
        if include_test:
            for item in meta.get("test", []):
                image = root / (item if isinstance(item, str) else item["image"])
                cases.append(CaseSpec(case_id_from_path(image, channel_suffix=True), str(image), None))
        return Cohort(cases, labels)
    ending = meta.get("file_ending", ".nii.gz")
    for sub, with_labels in (("imagesTr", True), ("imagesTs", False)):
        folder = root / sub
        if not folder.is_dir() or (sub == "imagesTs" and not include_test):
            continue
        for image in sorted(folder.glob(f"*_0000{ending}")):
            cid = case_id_from_path(image, channel_suffix=True)
            label = root / "labelsTr" / f"{cid}{ending}" if with_labels else None
            cases.append(CaseSpec(cid, str(image), str(label) if label and label.exists() else None))
    if not cases and (root / "images").is_dir():  # the demo layout: images/ + labels/ + dataset.json
        return cohort_from_folders(root / "images", root / "labels", labels)
    return Cohort(cases, labels)


def cohort_from_manifest(path: str | Path) -> Cohort:
    """Cases from a CSV manifest ``case_id,image[,label][,series_uid][,patient_id]``; paths
    relative to the manifest.

    ``series_uid`` picks one DICOM series from an ``image`` folder that holds several;
    ``patient_id`` names the patient, so that a patient's scans share a side of every split.
    """
    path = Path(path)
    root = path.parent
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read manifest ({exc})") from exc
    if not rows or "case_id" not in rows[0] or "image" not in rows[0]:
        raise ConfigError(f"{path}: manifest needs the columns case_id,image[,label]")
    cases = []
    for row in rows:
        label = (row.get("label") or "").strip()
        cases.append(CaseSpec(row["case_id"].strip(), str(root / row["image"].strip()), str(root / label) if label else None,
                              (row.get("series_uid") or "").strip() or None, (row.get("patient_id") or "").strip() or None))
    return Cohort(cases, {})


def discover_cohort(cohort_cfg: Mapping, label_names: Mapping[int, str] | None = None, *, warn: bool = True) -> Cohort:
    """Build the cohort from the config's ``cohort`` section (see ``config/README.md``).

    Exactly one of ``images``, ``dataset_json`` or ``manifest`` is used (the demo is expanded by
    the workflow before this is called, as a ``dataset_json``). ``label_names`` (or else the
    config's ``cohort.label_names``, any form of :func:`unet_pipeline.roi_names.parse_label_names`)
    override names from the dataset.
    """
    if cohort_cfg.get("dataset_json"):
        cohort = cohort_from_dataset_json(cohort_cfg["dataset_json"])
    elif cohort_cfg.get("manifest"):
        cohort = cohort_from_manifest(cohort_cfg["manifest"])
    elif cohort_cfg.get("images"):
        cohort = cohort_from_folders(cohort_cfg["images"], cohort_cfg.get("labels"), warn=warn)
    else:
        raise ConfigError("cohort: set one of cohort.demo, cohort.images, cohort.dataset_json or cohort.manifest")
    if label_names or cohort_cfg.get("label_names"):
        cohort.labels, cohort.roi_names = parse_label_names(label_names or cohort_cfg["label_names"])
    return cohort


def _geometry_mismatch(image_affine, label_affine, tol_mm: float) -> list[str]:
    import numpy as np

    from .io import spacing_from_affine

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
    """The image of a case: :func:`unet_pipeline.io.load_image`, or for a DICOM case with a
    ``series_uid``, exactly that series of its folder (:func:`unet_pipeline.dicom.read_dicom_series`)."""
    from .io import load_image

    if spec.series_uid is None:
        return load_image(spec.image)
    from .dicom import read_dicom_series

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
    by several ROIs (``roi_names``: :func:`unet_pipeline.roi_names.parse_label_names`).
    Warnings: intensities that do not look like HU, spacing above 10 mm, an empty label; for an
    RTSTRUCT/SEG, contours off the slice planes, classes without an ROI, overlapping classes.
    Slices are counted along ``slice_axis``, the dataset's slicing plane (None: axial).
    When the image cannot be read, the label is still checked on its own (everything except
    its shape and geometry against the image).
    """
    from .dicom_labels import is_dicom_label

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
    from .dicom import series_frame_of_reference

    if not Path(spec.image).is_dir():
        return None
    return series_frame_of_reference(spec.image, spec.series_uid)


def _check_dicom_label(spec: CaseSpec, labels: Mapping[int, str], roi_names: Mapping[int, RoiPattern] | None,
                       result: CaseCheck, image) -> None:
    """RTSTRUCT/SEG label checks of :func:`check_case`: frame of reference, ROI names, and (with the
    image's ``(affine, shape)``) the label made on the image grid."""
    import numpy as np

    from .dicom_labels import read_dicom_label, read_dicom_label_info

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
        from .roi_names import match_rois

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

    from .geometry import canonical_orientation
    from .io import read_voxels, spacing_from_affine

    try:
        img = load_case_image(spec)
        data = read_voxels(img, spec.image)
    except CaseError as exc:
        result.errors.extend(f"{exc.path}: {p}" for p in exc.problems)
        return None
    name = spec.image
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

    from .io import load_image, read_voxels

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


@dataclass
class WorkflowCases:
    """Everything the Snakefile needs to know about the cases, worked out at parse time.

    Attributes
    ----------
    cases
        Case id -> spec (paths of the *source* files).
    labels
        Label value -> name.
    train, val, test
        Labelled case ids used for training, validation during training, and evaluation.
    unlabelled
        Case ids without labels: segmented, never evaluated.
    rejected
        Case id -> why the case was left out of the run (:func:`screen_cases`); the workflow
        processes every other case, then fails, naming these.
    folds
        Cross-validation: the case ids of each fold (empty without cross-validation). Fold ``f``
        validates on ``folds[f]`` and trains on the other folds; ``train`` then holds all of them
        and ``val`` is empty.
    patients
        Labelled case id -> patient, by which the splits were made (:mod:`unet_pipeline.splits`).
    roi_names
        Label value -> RTSTRUCT ROI (DICOM-SEG segment) names or regex (:attr:`Cohort.roi_names`).
    """

    cases: dict[str, CaseSpec]
    labels: dict[int, str]
    train: list[str]
    val: list[str]
    test: list[str]
    unlabelled: list[str]
    folds: list[list[str]] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    roi_names: dict[int, RoiPattern] = field(default_factory=dict)

    def fold_split(self, fold: int | None) -> tuple[list[str], list[str]]:
        """``(train ids, validation ids)`` of a cross-validation fold, or of the single model (None)."""
        if fold is None:
            return self.train, self.val
        if not 0 <= fold < len(self.folds):
            raise ValueError(f"fold {fold} does not exist ({len(self.folds)} folds)")
        return sorted(c for i, f in enumerate(self.folds) if i != fold for c in f), sorted(self.folds[fold])

    @property
    def labelled(self) -> list[str]:
        return sorted(self.train + self.val + self.test)

    @property
    def to_segment(self) -> list[str]:
        return sorted(self.test + self.unlabelled)


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
    return "\n".join(lines + _rejection_lines(rejected))


def _rejection_lines(rejected: Mapping[str, Sequence[str]]) -> list[str]:
    return [f"  {cid!r}: {'; '.join(problems)}" for cid, problems in sorted(rejected.items())]


def workflow_cases(config: Mapping, results: str | Path | None) -> WorkflowCases:
    """Discover the cohort named by ``config`` and split it by patient.

    With ``predict.model`` set, every case is only segmented (no training, no split). Cases
    with unsafe, duplicate or case-clashing ids are left out (:func:`screen_cases`) and listed in
    :attr:`WorkflowCases.rejected`; the split is made from the other cases, once, and kept in
    ``<results>/splits.json`` for every later run (:func:`unet_pipeline.splits.fixed_splits`;
    ``results=None``: made afresh and not written).
    """
    from .naming import DEMO_LABELS, demo_case_ids

    cohort_cfg = config.get("cohort", {}) or {}
    demo = cohort_cfg.get("demo", {}) or {}
    if demo.get("enabled"):
        root = Path(results) / "demo_cohort"
        cases = [CaseSpec(c, str(root / "images" / f"{c}.nii.gz"), str(root / "labels" / f"{c}.nii.gz"))
                 for c in demo_case_ids(int(demo.get("n_cases", 12)))]
        cohort = Cohort(cases, dict(DEMO_LABELS))
    else:
        cohort = discover_cohort(cohort_cfg)
    if cohort_cfg.get("label_names"):
        cohort.labels, cohort.roi_names = parse_label_names(cohort_cfg["label_names"])
    cohort.cases, rejected = screen_cases(cohort.cases, cohort.problems)
    if not cohort.cases:
        raise ConfigError("cohort: no cases found" if not rejected else "cohort: no usable cases: every case id "
                          "cannot be used (rename the files):\n" + "\n".join(_rejection_lines(rejected)))
    if not cohort.labels and any(c.label for c in cohort.cases):
        raise ConfigError("cohort.label_names: the cohort has labels but no label names; set cohort.label_names")
    specs = cohort.by_id()
    labelled = [c.case_id for c in cohort.cases if c.label]
    unlabelled = sorted(c.case_id for c in cohort.cases if not c.label)
    predict_model = (config.get("predict", {}) or {}).get("model")
    if predict_model:
        return WorkflowCases(specs, cohort.labels, [], [], [], sorted(specs), rejected=rejected,
                             roi_names=cohort.roi_names)
    split = config.get("split", {}) or {}
    n_folds = int(split.get("folds", 1))
    patients = patient_of_cases([specs[c] for c in labelled], split.get("group_pattern"))
    splits_path = Path(results) / "splits.json" if results is not None else None
    splits = fixed_splits(labelled, patients, split, splits_path)
    if n_folds > 1:
        return WorkflowCases(specs, cohort.labels, splits.train, [], splits.test, unlabelled, splits.folds, rejected,
                             patients=splits.patients, roi_names=cohort.roi_names)
    if not splits.train:
        raise ConfigError("cohort: no labelled cases to train on (set predict.model to segment with a trained model)"
                          + (f"\n{rejection_message(rejected)}" if rejected else ""))
    return WorkflowCases(specs, cohort.labels, splits.train, splits.val, splits.test, unlabelled, rejected=rejected,
                         patients=splits.patients, roi_names=cohort.roi_names)

