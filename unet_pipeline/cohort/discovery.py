"""Discover the cases of a cohort (checks: :mod:`unet_pipeline.cohort.validation`).

A cohort is given as one of

* a folder of images (and optionally a folder of labels), matched by case id = file name
  without its image extension;
* an nnU-Net v2 / Medical Segmentation Decathlon ``dataset.json`` (``imagesTr``/``labelsTr``/
  ``imagesTs``, ``_0000`` channel suffix);
* a CSV manifest with columns ``case_id,image[,label]`` (paths relative to the manifest);
* the built-in synthetic demo (:mod:`unet_pipeline.demo`).

DICOM in a folder of images: every DICOM image series under a sub-folder ``images/<name>/``
(at any depth: ``<name>/<study>/<series>/``), or loose in ``images/`` itself, is one case,
grouped by SeriesInstanceUID from the file headers (:func:`unet_pipeline.io.dicom.find_series`),
never by folder alone. Case ids:

* ``<name>`` when ``<name>`` holds a single series (wherever its files lie below it);
* otherwise the path of the series' folder below ``images/``, joined with ``_``
  (``<name>_<study>_<series>``, sub-folder names made safe by
  :func:`~unet_pipeline.cohort.naming.safe_name_part`), plus ``_<SeriesNumber>`` when that folder holds
  several series (``_1``, ``_2``, ... by SeriesNumber, then UID, when a SeriesNumber is missing
  or repeated; :func:`~unet_pipeline.cohort.naming.series_suffixes`). Loose series in ``images/`` take
  the name of ``images/`` itself.

The case's :attr:`CaseSpec.series_uid` names its series, so reading it never picks up another
series of the same folder. An RTSTRUCT or DICOM-SEG file found with a series (in the same case
folder) that shares its FrameOfReferenceUID is that case's label, unless a label folder has one
too (then the case is refused, naming both); a manifest's ``label`` may name one as well. Their
ROI (segment) names map to classes through ``cohort.label_names`` (:mod:`unet_pipeline.io.roi_names`).
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..io.formats import is_image_file
from ..io.roi_names import RoiPattern, parse_label_names
from .naming import case_id_from_path

__all__ = ["CaseSpec", "Cohort", "COHORT_SOURCES", "cohort_source", "discover_cohort", "cohort_from_folders", "cohort_from_dataset_json", "cohort_from_manifest", "read_label_names"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseSpec:
    """One case: an image file (or DICOM folder) and optionally its label file.

    ``series_uid`` is the SeriesInstanceUID of a DICOM case: the one series read from the
    ``image`` folder (None: the folder's only series). ``patient_id`` is the patient as a CSV
    manifest names it; ``dicom_patient_id`` the PatientID of a DICOM case's headers. Both serve
    to keep a patient's cases on one side of every split (:mod:`unet_pipeline.cohort.splits`).
    """

    case_id: str
    image: str
    label: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None
    dicom_patient_id: str | None = None

    @property
    def is_dicom_series(self) -> bool:
        """Whether the image is a DICOM series (a folder, or one series of it): such a case can
        get DICOM-SEG/RTSTRUCT results referencing it. The one test used by the workflow and the CLI."""
        return bool(self.series_uid) or Path(self.image).is_dir()


@dataclass
class Cohort:
    """Cases plus the label names (value -> name, background excluded).

    ``problems``: case id -> problems found by discovery that make the case unusable (several
    label files match it); ``notes``: what discovery passed over, one line each, naming it;
    ``roi_names``: label value -> the RTSTRUCT ROI (DICOM-SEG segment) names or regex of that
    class (:func:`unet_pipeline.io.roi_names.parse_label_names`; a class left out matches its name).
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
    from ..io.dicom import find_series
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


#: The keys of the ``cohort`` section that name a cohort; exactly one may be set.
COHORT_SOURCES = ("images", "dataset_json", "manifest")


def cohort_source(cohort_cfg: Mapping) -> str:
    """Which source the ``cohort`` section names: ``demo`` or one of :data:`COHORT_SOURCES`.

    Raises
    ------
    ConfigError
        No source, several at once (the demo included), ``labels`` without ``images``, or a named
        file or folder that does not exist; one line naming the keys and paths.
    """
    named = [key for key in COHORT_SOURCES if cohort_cfg.get(key)]
    demo = bool((cohort_cfg.get("demo") or {}).get("enabled"))
    if demo and named:
        raise ConfigError(f"cohort: the demo is enabled and cohort.{named[0]} is set ({cohort_cfg[named[0]]}); "
                          "name one cohort: drop cohort.demo.enabled to run your own")
    if len(named) > 1:
        raise ConfigError("cohort: " + " and ".join(f"cohort.{k} ({cohort_cfg[k]})" for k in named)
                          + " are both set; name one cohort")
    if cohort_cfg.get("labels") and not cohort_cfg.get("images"):
        raise ConfigError(f"cohort.labels ({cohort_cfg['labels']}) needs cohort.images")
    if demo:
        return "demo"
    if not named:
        raise ConfigError("cohort: no cohort named: set cohort.images (and cohort.labels), cohort.dataset_json or "
                          "cohort.manifest in your config (config/config.yaml is the template), or run the built-in "
                          "demo with --configfile config/demo.yaml")
    for key in ("images", "labels", "dataset_json", "manifest"):
        if cohort_cfg.get(key) and not Path(cohort_cfg[key]).exists():
            raise ConfigError(f"cohort.{key}: {cohort_cfg[key]} does not exist")
    return named[0]


def discover_cohort(cohort_cfg: Mapping, label_names: Mapping[int, str] | None = None, *, warn: bool = True) -> Cohort:
    """Build the cohort from the config's ``cohort`` section (see ``config/README.md``).

    The one source that :func:`cohort_source` finds is used (the demo is expanded by the
    workflow before this is called). ``label_names`` (or else the config's ``cohort.label_names``,
    any form of :func:`unet_pipeline.io.roi_names.parse_label_names`) override names from the dataset.
    """
    source = cohort_source(cohort_cfg)
    if source == "dataset_json":
        cohort = cohort_from_dataset_json(cohort_cfg["dataset_json"])
    elif source == "manifest":
        cohort = cohort_from_manifest(cohort_cfg["manifest"])
    elif source == "images":
        cohort = cohort_from_folders(cohort_cfg["images"], cohort_cfg.get("labels"), warn=warn)
    else:
        raise ConfigError("cohort: the demo cohort is written by the workflow; discover it as its dataset.json")
    if label_names or cohort_cfg.get("label_names"):
        cohort.labels, cohort.roi_names = parse_label_names(label_names or cohort_cfg["label_names"])
    return cohort
