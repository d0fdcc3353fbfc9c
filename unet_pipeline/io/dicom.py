"""DICOM series to NIfTI, with the checks a CT cohort needs.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
on the cross product of the ``ImageOrientationPatient`` row and column vectors), never by file
name or instance number. Localizers are left out and exact copies of a file read once, with a
warning (:mod:`unet_pipeline.io.dicom_slices`); an Enhanced (multi-frame) CT file is read frame by
frame (:mod:`unet_pipeline.io.dicom_multiframe`). A series with gantry tilt, missing slices,
irregular spacing, two different images at one position, two volumes of different orientation or
size, or an unreadable file is refused with a message naming the folder (or file) and the problem. Rescale slope and intercept are applied by SimpleITK so values are HU; integer
results that fit are returned as int16 (ITK widens rescaled CT to int32), float results as
float32.

Tolerances (position rounding in real headers, e.g. to 0.01 mm, must not trip them):

* spacing: every slice lies within :data:`SPACING_TOLERANCE` x the slice spacing of the uniform
  grid through the first and last slice;
* gantry tilt: no slice is shifted within its plane, relative to the first slice, by more than
  :data:`TILT_TOLERANCE` x the smallest pixel spacing.

Discovery (:func:`find_series`) groups the files of a folder tree into series by the
SeriesInstanceUID of their headers (and gives each series the RTSTRUCT/SEG files that share its
FrameOfReferenceUID), read by :func:`read_dicom_header` without SimpleITK (a few KB
per file, so a cohort of many thousand files is listed in seconds; files it cannot parse are left
to GDCM). This part imports only the standard library, so the Snakefile can use it.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CaseError
from .dicom_slices import SPACING_TOLERANCE, TILT_TOLERANCE
from .formats import is_image_file

if TYPE_CHECKING:  # numpy, nibabel and SimpleITK are imported where used: discovery runs without them
    import nibabel as nib
    import numpy as np

__all__ = ["list_series", "read_dicom_series", "series_files", "read_dicom_header", "find_series", "series_frame_of_reference",
           "DicomHeader", "SeriesInfo", "NON_IMAGE_MODALITIES", "LABEL_OBJECT_MODALITIES", "SPACING_TOLERANCE",
           "TILT_TOLERANCE"]

log = logging.getLogger(__name__)



def list_series(folder: str | Path) -> dict[str, list[str]]:
    """Every DICOM series in ``folder`` and its sub-folders.

    Parameters
    ----------
    folder
        Folder to search (recursively).

    Returns
    -------
    dict
        SeriesInstanceUID -> file paths (GDCM's order; :func:`read_dicom_series` re-sorts them
        by position). Empty when no DICOM file is found.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(folder, "DICOM folder not found")
    series: dict[str, list[str]] = {}
    dirs = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    for d in dirs:
        if not any(p.is_file() for p in d.iterdir()):
            continue  # GDCM warns on every folder without files
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ():
            series.setdefault(uid, []).extend(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid))
    return series


#: Modalities whose objects hold no CT volume: structure sets, plans, doses, reports, key objects,
#: presentation states, segmentations, registrations. Discovery skips them, naming each file.
NON_IMAGE_MODALITIES = frozenset({"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "KO", "PR", "SEG", "REG",
                                  "DOC", "AU", "ECG", "HD", "FID", "RWV", "PLAN"})

_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_WANTED = {(0x0008, 0x0008): "image_type", (0x0008, 0x0060): "modality", (0x0010, 0x0020): "patient_id",
           (0x0020, 0x000E): "uid",
           (0x0020, 0x0011): "number", (0x0020, 0x0052): "frame_of_reference", (0x0028, 0x0010): "rows"}
_LAST_WANTED = (0x0028, 0x0010)
_RT_FRAMES = (0x3006, 0x0010)  # ReferencedFrameOfReferenceSequence: where an RTSTRUCT names its frame of reference
#: Modalities of the label objects (structure sets, segmentations) that discovery matches to a series.
LABEL_OBJECT_MODALITIES = frozenset({"RTSTRUCT", "SEG"})
_MAX_HEADER = 16 << 20  # a header this long is left to GDCM


@dataclass(frozen=True)
class DicomHeader:
    """The few header fields discovery needs (``None`` where the file has none)."""

    uid: str | None  # SeriesInstanceUID (0020,000E)
    number: str | None  # SeriesNumber (0020,0011)
    modality: str | None  # Modality (0008,0060)
    rows: int | None  # Rows (0028,0010): present in every image object
    patient_id: str | None = None  # PatientID (0010,0020)
    frame_of_reference_uid: str | None = None  # FrameOfReferenceUID (0020,0052); an RTSTRUCT's from (3006,0010)
    image_type: str | None = None  # ImageType (0008,0008), values joined by "\\"

    @property
    def is_localizer(self) -> bool:
        """A localizer (scout): ImageType holds LOCALIZER. Never read as (part of) a volume."""
        return "LOCALIZER" in (self.image_type or "").upper().split("\\")

    @property
    def is_image(self) -> bool:
        return bool(self.uid) and self.rows is not None and (self.modality or "").upper() not in NON_IMAGE_MODALITIES

    @property
    def is_label_object(self) -> bool:
        """An RTSTRUCT or DICOM-SEG: a label that discovery matches to an image series."""
        return (self.modality or "").upper() in LABEL_OBJECT_MODALITIES


class _Unparsed(Exception):
    """The file may be DICOM, but this reader cannot tell (GDCM decides)."""


class _Header:
    """Sequential reader of a DICOM data set's element headers (values read only where wanted)."""

    def __init__(self, fh, pos: int, explicit: bool, endian: str) -> None:
        self.fh, self.pos, self.explicit, self.endian = fh, pos, explicit, endian
        self.fields: dict[str, object] = {}

    def _read(self, n: int) -> bytes:
        if self.pos + n > _MAX_HEADER:
            raise _Unparsed("header too long")
        self.fh.seek(self.pos)
        data = self.fh.read(n)
        if len(data) < n:
            raise _Unparsed("truncated header")
        self.pos += n
        return data

    def _tag(self) -> tuple[int, int]:
        return struct.unpack(self.endian + "HH", self._read(4))

    def _element(self, explicit: bool) -> tuple[bytes | None, int]:
        """VR (None when implicit) and value length of the element whose tag was just read."""
        if not explicit:
            return None, struct.unpack(self.endian + "I", self._read(4))[0]
        vr = self._read(2)
        if not (vr.isalpha() and vr.isupper()):
            raise _Unparsed(f"not a value representation: {vr!r}")
        if vr in _LONG_VRS:
            self._read(2)
            return vr, struct.unpack(self.endian + "I", self._read(4))[0]
        return vr, struct.unpack(self.endian + "H", self._read(2))[0]

    def _skip_sequence(self, explicit: bool) -> None:
        """Skip a sequence (or encapsulated data) of undefined length, items and all."""
        while True:
            tag, length = self._tag(), struct.unpack(self.endian + "I", self._read(4))[0]
            if tag == (0xFFFE, 0xE0DD):
                return
            if tag != (0xFFFE, 0xE000):
                raise _Unparsed(f"unexpected tag {tag} in a sequence")
            if length != _UNDEFINED:
                self.pos += length
                continue
            while True:  # an item of undefined length: elements up to the item delimiter
                tag = self._tag()
                if tag == (0xFFFE, 0xE00D):
                    self._read(4)
                    break
                vr, length = self._element(explicit)
                if length == _UNDEFINED:
                    self._skip_sequence(explicit and vr != b"UN")
                else:
                    self.pos += length

    def _first_item_value(self, explicit: bool, length: int, wanted: tuple[int, int]) -> str | None:
        """The value of element ``wanted`` in the first item of the sequence starting here (None if absent)."""
        end = None if length == _UNDEFINED else self.pos + length
        tag, item_length = self._tag(), struct.unpack(self.endian + "I", self._read(4))[0]
        if tag != (0xFFFE, 0xE000):
            return None
        item_end = None if item_length == _UNDEFINED else self.pos + item_length
        while (item_end is None or self.pos < item_end) and (end is None or self.pos < end):
            tag = self._tag()
            if tag == (0xFFFE, 0xE00D):
                return None
            vr, n = self._element(explicit)
            if tag == wanted and n != _UNDEFINED:
                return self._read(n).decode("ascii", "replace").strip("\x00 ") or None
            if n == _UNDEFINED:
                self._skip_sequence(explicit and vr != b"UN")
            else:
                self.pos += n
        return None

    def read(self) -> None:
        """Read the top-level elements up to Rows (0028,0010), keeping :data:`_WANTED`; for an
        RTSTRUCT, on to the frame of reference in its ReferencedFrameOfReferenceSequence."""
        previous = (0, 0)
        while True:
            try:
                tag = self._tag()
            except _Unparsed:
                if self.fields:
                    return  # a data set that ends before Rows: an object without pixels
                raise
            if tag < previous:
                raise _Unparsed("element tags out of order")
            previous = tag
            if tag[0] == 0x0004 or tag > _LAST_WANTED and not self._wants_rt_frame(tag):
                return  # past what is needed, or a DICOMDIR
            vr, length = self._element(self.explicit)
            if tag == _RT_FRAMES:
                try:
                    uid = self._first_item_value(self.explicit and vr != b"UN", length, (0x0020, 0x0052))
                except (_Unparsed, struct.error):
                    uid = None  # the header fields read so far still tell what the file is
                self.fields["frame_of_reference"] = uid or self.fields.get("frame_of_reference")
                return
            if length == _UNDEFINED:
                self._skip_sequence(self.explicit and vr != b"UN")
                continue
            name = _WANTED.get(tag)
            if name is None:
                self.pos += length
                continue
            value = self._read(length)
            if name == "rows":
                self.fields[name] = struct.unpack(self.endian + "H", value[:2])[0] if length >= 2 else None
            else:
                self.fields[name] = value.decode("ascii", "replace").strip("\x00 ") or None

    def _wants_rt_frame(self, tag: tuple[int, int]) -> bool:
        """Whether to read on past Rows: an RTSTRUCT, before its ReferencedFrameOfReferenceSequence."""
        return tag <= _RT_FRAMES and str(self.fields.get("modality", "")).upper() == "RTSTRUCT"


def read_dicom_header(path: str | Path) -> DicomHeader | None:
    """SeriesInstanceUID, SeriesNumber, Modality and Rows of a DICOM file, read without SimpleITK.

    Reads only the element headers up to Rows (0028,0010) (a few KB), in implicit or explicit
    VR little endian or explicit big endian, so discovery stays quick on cohorts of many files.

    Returns
    -------
    DicomHeader or None
        None when the file is not DICOM (no ``DICM`` marker and no plausible data set at its start).

    Raises
    ------
    ValueError
        The file looks like DICOM but this reader cannot parse it (deflated transfer syntax,
        malformed header): ask GDCM (:func:`find_series` does).
    OSError
        The file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
        if len(head) == 132 and head[128:] == b"DICM":
            meta = _Header(fh, 132, explicit=True, endian="<")
            syntax = None
            while True:
                start = meta.pos
                try:
                    group, element = meta._tag()
                except _Unparsed:
                    break  # the file ends after its meta information
                if group != 0x0002:
                    meta.pos = start
                    break
                try:
                    _, length = meta._element(True)
                    value = meta._read(length)
                except _Unparsed as exc:
                    raise ValueError(f"{path}: malformed DICOM file meta information ({exc})") from exc
                if element == 0x0010:
                    syntax = value.decode("ascii", "replace").strip("\x00 ")
            if syntax == _DEFLATED:
                raise ValueError(f"{path}: deflated DICOM data set")
            reader = _Header(fh, meta.pos, explicit=syntax != _IMPLICIT_LE, endian=">" if syntax == _EXPLICIT_BE else "<")
        else:  # no preamble (ACR-NEMA style): a data set from byte 0, groups 0002 or 0008 first
            if len(head) < 8 or struct.unpack("<H", head[:2])[0] not in (0x0002, 0x0008):
                return None
            vr = head[4:6]
            reader = _Header(fh, 0, explicit=vr.isalpha() and vr.isupper(), endian="<")
        try:
            reader.read()
        except (_Unparsed, struct.error) as exc:
            if reader.fields or head[128:] == b"DICM":
                raise ValueError(f"{path}: cannot parse the DICOM header ({exc})") from exc
            return None
    f = reader.fields
    return DicomHeader(f.get("uid"), f.get("number"), f.get("modality"), f.get("rows"),  # type: ignore[arg-type]
                       f.get("patient_id"), f.get("frame_of_reference"), f.get("image_type"))


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM image series found by :func:`find_series`."""

    uid: str  # SeriesInstanceUID
    folder: str  # the deepest folder holding all of its files
    n_files: int
    number: str | None = None  # SeriesNumber, as written
    modality: str | None = None
    patient_id: str | None = None  # PatientID (0010,0020) of its first file
    frame_of_reference_uid: str | None = None  # FrameOfReferenceUID of its first file
    labels: tuple[str, ...] = ()  # RTSTRUCT/SEG files found with it that share its frame of reference


def _gdcm_headers(folder: str, files: list[str]) -> tuple[dict[str, DicomHeader], list[str]]:
    """Headers of ``files`` (in ``folder``) that :func:`read_dicom_header` could not parse, by GDCM."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return {}, [f"{f}: cannot tell whether this is a DICOM image (SimpleITK is not installed), skipped"
                    for f in files]
    wanted, found, notes = set(files), {}, []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or ():
        for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid):
            if f in wanted and f not in found:
                r = sitk.ImageFileReader()
                r.SetFileName(f)
                try:
                    r.ReadImageInformation()
                except RuntimeError:
                    continue
                found[f] = DicomHeader(uid, _tag(r, "0020|0011") or None, _tag(r, "0008|0060") or None,
                                       int(r.GetSize()[1]), _tag(r, "0010|0020") or None, _tag(r, "0020|0052") or None,
                                       _tag(r, "0008|0008") or None)
    notes += [f"{f}: not a DICOM image that GDCM can read, skipped" for f in files if f not in found]
    return found, notes


def find_series(folder: str | Path, *, recursive: bool = True,
                skip_image_files: bool = False) -> tuple[list[SeriesInfo], list[str]]:
    """Every DICOM image series in ``folder`` (and its sub-folders), from the file headers.

    Files are grouped by SeriesInstanceUID, whichever folders they lie in. An RTSTRUCT or
    DICOM-SEG found among them becomes a label of the one series sharing its
    FrameOfReferenceUID (:attr:`SeriesInfo.labels`). Hidden files and folders (``.*``) are
    ignored; everything else that is not used gets a note naming it: files that are not DICOM,
    DICOM objects without an image (reports, plans, DICOMDIR, ...), RTSTRUCT/SEG files that
    match no series or several, image files (``.nii.gz`` ...) inside a DICOM folder, empty folders.

    Parameters
    ----------
    folder
        Folder to search.
    recursive
        Also search the sub-folders.
    skip_image_files
        Pass over image files (``.nii.gz`` ...) silently (the caller uses them).

    Returns
    -------
    tuple
        The series, sorted by folder, then SeriesNumber, then UID; and the notes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(folder, "DICOM folder not found")
    groups: dict[str, dict] = {}
    notes: list[str] = []
    label_objects: list[tuple[str, DicomHeader]] = []
    seen = {os.path.realpath(folder)}
    for here, subdirs, files in os.walk(folder, followlinks=True):  # linked folders too, each once
        subdirs[:] = [d for d in sorted(subdirs) if not d.startswith(".") and recursive
                      and os.path.realpath(os.path.join(here, d)) not in seen]
        seen.update(os.path.realpath(os.path.join(here, d)) for d in subdirs)
        names = sorted(f for f in files if not f.startswith("."))
        if not names and not subdirs:
            notes.append(f"{here}: empty folder, skipped")
            continue
        unparsed = []
        for name in names:
            path = os.path.join(here, name)
            if is_image_file(name):
                if not skip_image_files:
                    notes.append(f"{path}: image file inside a DICOM folder, not used (image files belong "
                                 "directly in the images folder)")
                continue
            try:
                header = read_dicom_header(path)
            except ValueError:
                unparsed.append(path)
                continue
            except OSError as exc:
                notes.append(f"{path}: unreadable ({exc.strerror or exc}), skipped")
                continue
            _add_file(groups, notes, path, here, header, label_objects)
        if unparsed:
            headers, more = _gdcm_headers(here, unparsed)
            notes += more
            for path, header in headers.items():
                _add_file(groups, notes, path, here, header, label_objects)
    labels = _match_label_objects(groups, label_objects, notes)
    series = [SeriesInfo(uid, os.path.commonpath(sorted(g["dirs"])), g["n"], g["number"], g["modality"], g["patient"],
                         g["frame"], tuple(labels.get(uid, ()))) for uid, g in groups.items()]
    return sorted(series, key=lambda s: (s.folder, *_number_key(s.number), s.uid)), notes


def _match_label_objects(groups: dict, label_objects: list[tuple[str, DicomHeader]], notes: list[str]
                         ) -> dict[str, list[str]]:
    """SeriesInstanceUID -> the RTSTRUCT/SEG files sharing its FrameOfReferenceUID (each file to one series)."""
    matched: dict[str, list[str]] = {}
    for path, header in label_objects:
        what = f"{path}: DICOM {header.modality}"
        uids = sorted(uid for uid, g in groups.items()
                      if header.frame_of_reference_uid and g["frame"] == header.frame_of_reference_uid)
        if not header.frame_of_reference_uid:
            notes.append(f"{what} without a FrameOfReferenceUID, not used as a label")
        elif not uids:
            notes.append(f"{what} shares its FrameOfReferenceUID with no image series here, not used as a label")
        elif len(uids) > 1:
            notes.append(f"{what} shares its FrameOfReferenceUID with {len(uids)} series ({', '.join(uids)}), "
                         "not used as a label: name it in a manifest's label column")
        else:
            matched.setdefault(uids[0], []).append(path)
    return matched


def _add_file(groups: dict, notes: list[str], path: str, here: str, header: DicomHeader | None,
              label_objects: list[tuple[str, DicomHeader]] | None = None) -> None:
    if header is None:
        notes.append(f"{path}: not an image or DICOM file, skipped")
    elif not header.uid:
        notes.append(f"{path}: DICOM file without a SeriesInstanceUID (a DICOMDIR?), skipped")
    elif header.is_label_object and label_objects is not None:
        label_objects.append((path, header))
    elif not header.is_image:
        notes.append(f"{path}: DICOM {header.modality or 'object'} without an image, skipped")
    elif header.is_localizer:
        notes.append(f"{path}: localizer (scout) image (ImageType LOCALIZER), left out")
    else:
        g = groups.setdefault(header.uid, {"dirs": set(), "n": 0, "number": header.number, "modality": header.modality,
                                           "patient": header.patient_id, "frame": header.frame_of_reference_uid})
        g["dirs"].add(here)
        g["n"] += 1


def series_frame_of_reference(folder: str | Path, series_uid: str | None = None) -> str | None:
    """FrameOfReferenceUID of a series of ``folder`` (``series_uid`` None: its only or first series), from
    the headers (:func:`find_series`); None when the series or the tag is not found."""
    series, _ = find_series(folder)
    for s in series:
        if series_uid is None or s.uid == series_uid:
            return s.frame_of_reference_uid
    return None


def _number_key(number: str | None) -> tuple[int, float, str]:
    """Sort key of a SeriesNumber: numbers first, in numeric order; then missing or odd ones."""
    try:
        return (0, float(number), "") if number is not None else (2, 0.0, "")
    except ValueError:
        return (1, 0.0, number)


def _tag(reader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def _floats(text: str | None, n: int) -> np.ndarray | None:
    import numpy as np

    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.size == n and np.all(np.isfinite(values)) else None


def _read_headers(files: list[str]) -> tuple[list, float | None, list[str]]:
    """Per-file :class:`~unet_pipeline.io.dicom_slices.SliceHeader`, the slice thickness (mm, or None) and the
    files holding several frames (enhanced CT)."""
    import SimpleITK as sitk

    from .dicom_slices import SliceHeader

    slices, multiframe = [], []
    thickness = None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise CaseError(f, f"unreadable DICOM file ({str(exc).strip().splitlines()[0][:150]})") from exc
        frames = _floats(_tag(r, "0028|0008"), 1)
        if frames is not None and frames[0] > 1:
            multiframe.append(f)
            continue
        pos = _floats(_tag(r, "0020|0032"), 3)
        ori = _floats(_tag(r, "0020|0037"), 6)
        if pos is None or ori is None:
            raise CaseError(f, "DICOM file lacks a valid ImagePositionPatient/ImageOrientationPatient")
        slices.append(SliceHeader(f, pos, ori, (int(r.GetSize()[0]), int(r.GetSize()[1])), _tag(r, "0008|0018"),
                                  _tag(r, "0008|0008") or "", tuple(r.GetSpacing()[:2])))
        if thickness is None:
            for key in ("0018|0050", "0018|0088"):  # SliceThickness, SpacingBetweenSlices
                value = _floats(_tag(r, key), 1)
                if value is not None and value[0] > 0:
                    thickness = float(value[0])
                    break
    return slices, thickness, multiframe


def _slice_geometry(folder: Path, files: list[str], unreadable: list[tuple[str, str]] = ()
                    ) -> tuple[list[str], float | None, list[str]]:
    """Pick the series' slices (no localizers, each exact copy once) and check their geometry.

    Returns
    -------
    tuple
        The file names sorted along the slice normal (ascending); the slice thickness (mm) from
        the header (used for a single-slice series only), or None; and warnings naming the files
        left out. A series that is one multi-frame file (plus localizers) gives ``[that file]``.
    """
    import numpy as np

    from .dicom_slices import check_stack, leave_out_copies, leave_out_localizers

    slices, thickness, multiframe = _read_headers(files)
    if multiframe:
        if len(multiframe) > 1 or any(not s.localizer for s in slices):
            raise CaseError(folder, f"{len(multiframe)} multi-frame image(s) and {len(slices)} single-frame image(s) "
                            "in one series: a series is one multi-frame file or single-frame slices")
        return multiframe, None, [f"{len(slices)} localizer (scout) image(s) left out beside the multi-frame image"
                                  ] if slices else []
    slices, warnings = leave_out_localizers(str(folder), slices)
    slices, copies = leave_out_copies(str(folder), slices)
    warnings += copies
    ori = slices[0].orientation
    names = [s.path for s in slices]
    order, _ = check_stack(str(folder), np.asarray([s.position for s in slices]), ori,
                           np.asarray(slices[0].pixel_spacing), names, unreadable)
    return [names[i] for i in order], thickness, warnings


def _narrow_pixel_type(image):
    """int16 when an integer image's values fit (ITK returns rescaled CT as int32); float32 for float64."""
    import SimpleITK as sitk

    pid = image.GetPixelID()
    if pid == sitk.sitkFloat64:
        return sitk.Cast(image, sitk.sitkFloat32)
    if pid in (sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64, sitk.sitkUInt16):
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if -32768 <= stats.GetMinimum() and stats.GetMaximum() <= 32767:
            return sitk.Cast(image, sitk.sitkInt16)
    return image


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> nib.Nifti1Image:
    """Read one DICOM series from ``folder`` as a NIfTI image with a RAS+ affine (values in HU).

    What is read as hospitals export it: localizers (scouts) are left out, exact copies of a file
    (same SOPInstanceUID) read once (:mod:`unet_pipeline.io.dicom_slices`), and an Enhanced
    (multi-frame) CT file is read frame by frame (:mod:`unet_pipeline.io.dicom_multiframe`). What
    was left out is listed, one warning per line naming the files, in the image's
    ``extra["warnings"]``.

    Parameters
    ----------
    folder
        A folder holding the series' files (sub-folders are searched too).
    series_uid
        Which series to read when the folder holds several; required then (see :func:`list_series`).

    Returns
    -------
    nibabel.Nifti1Image
        In-memory image, voxels ``(i, j, k)`` = (column, row, slice) with ``k`` increasing along
        the slice normal; int16 HU when the values fit (else the type SimpleITK returns; float64
        becomes float32). The affine maps voxel ``(0, 0, k)`` to the ``ImagePositionPatient`` of
        the ``k``-th slice in RAS+ mm. A single-slice series gets the header's SliceThickness (else
        SpacingBetweenSlices, else 1 mm) as its third spacing.

    Raises
    ------
    CaseError
        No series, several series and no ``series_uid``, an unknown ``series_uid``, a file of the
        series that cannot be read (naming it and why), or a series whose slices do not form a
        regular volume; the message names the folder (or the file) once.
    TypeError
        ``series_uid`` is not a string or None.
    """
    import SimpleITK as sitk

    from .formats import sitk_to_nifti

    if series_uid is not None and not isinstance(series_uid, str):
        raise TypeError(f"series_uid must be a str or None, got {type(series_uid).__name__}")
    folder = Path(folder)
    files, thickness, warnings = _series_files(folder, series_uid)
    if len(files) == 1 and _is_multiframe(files[0]):
        from .dicom_multiframe import read_multiframe

        img = read_multiframe(files[0])
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            image = reader.Execute()
            if image.GetDimension() == 3 and image.GetSize()[2] == 1 and thickness is not None:
                image.SetSpacing((*image.GetSpacing()[:2], thickness))
            img = sitk_to_nifti(_narrow_pixel_type(image))
        except (RuntimeError, ValueError) as exc:
            _name_the_unreadable_file(files)
            raise CaseError(folder, f"cannot read the DICOM series ({str(exc).strip().splitlines()[0][:150]})") from exc
    img.extra["warnings"] = warnings
    return img


def series_files(folder: str | Path, series_uid: str | None = None) -> tuple[list[str], list[str]]:
    """The files :func:`read_dicom_series` reads for a series, sorted along the slice normal (one file for
    a multi-frame image), and warnings naming the files left out (localizers, exact copies).

    Raises
    ------
    CaseError
        As :func:`read_dicom_series`, for anything found in the headers.
    """
    files, _, warnings = _series_files(Path(folder), series_uid)
    return files, warnings


def _series_files(folder: Path, series_uid: str | None) -> tuple[list[str], float | None, list[str]]:
    """:func:`series_files`, and the slice thickness of :func:`_slice_geometry`."""
    series = list_series(folder)
    series_uid = _pick_series(folder, series, series_uid)
    unreadable = _unreadable_files(folder, series_uid, series)
    return _slice_geometry(folder, series[series_uid], unreadable)


def _pick_series(folder: Path, series: dict[str, list[str]], series_uid: str | None) -> str:
    """The SeriesInstanceUID to read: ``series_uid``, or the folder's only series (a series of localizers
    beside it does not count)."""
    if not series:
        raise CaseError(folder, "no DICOM series found in this folder")
    if series_uid is None and len(series) > 1:
        images = [s.uid for s in find_series(folder)[0]]  # series of localizers only are no image series
        series_uid = images[0] if len(images) == 1 else None
    if series_uid is None:
        if len(series) > 1:
            found = ", ".join(f"{uid} ({len(files)} files)" for uid, files in sorted(series.items()))
            raise CaseError(folder, f"{len(series)} DICOM series in one folder; split them into sub-folders "
                            f"or give the SeriesInstanceUID (a manifest's series_uid column) (found: {found})")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise CaseError(folder, f"series {series_uid} not found (found: {', '.join(sorted(series))})")
    return series_uid


def _is_multiframe(path: str) -> bool:
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(path)
    r.ReadImageInformation()
    frames = _floats(_tag(r, "0028|0008"), 1)
    return frames is not None and frames[0] > 1


def _unreadable_files(folder: Path, series_uid: str, series: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``(path, reason)`` of the DICOM-looking files in ``folder`` that GDCM lists in no series.

    Raises
    ------
    CaseError
        A file whose header names ``series_uid`` is unreadable (truncated, half-copied): the
        message names that file and why.
    """
    from .dicom_slices import unreadable_reason

    listed = {os.path.normpath(f) for files in series.values() for f in files}
    found = []
    for here, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".") and not is_image_file(n)):
            path = os.path.join(here, name)
            if os.path.normpath(path) in listed:
                continue
            try:
                header = read_dicom_header(path)
            except (ValueError, OSError):  # looks like DICOM, but cannot be parsed: which series is unknown
                found.append((path, unreadable_reason(path)))
                continue
            if header is not None and header.uid == series_uid:
                raise CaseError(path, f"unreadable DICOM file of this series ({unreadable_reason(path)})")
    return found


def _name_the_unreadable_file(files: list[str]) -> None:
    """Raise a :class:`CaseError` naming the first of ``files`` whose pixels cannot be read (if one is found)."""
    import SimpleITK as sitk

    from .dicom_slices import unreadable_reason

    for f in files:
        try:
            sitk.ReadImage(f)
        except RuntimeError as exc:
            raise CaseError(f, f"unreadable DICOM file of this series ({unreadable_reason(f)})") from exc
