"""Which files of a DICOM series make the volume, and in which order: the export habits of real CT.

Hospital exports (PACS, planning systems, USB copies) put more in a series folder than the
slices of one volume. This module decides, from the per-file headers, what is read:

* a localizer (scout) is left out, with a warning naming it: a file whose ImageType holds
  ``LOCALIZER``, or the files of another orientation or size than the others when the others are
  the majority (more files than all the odd ones together); without a majority the series is refused;
* an exact copy of a file (the same SOPInstanceUID at the same position, e.g. ``IM0004 (copy).dcm``)
  is read once, with a warning; two *different* instances at one position are refused, naming both;
* the slices are ordered along the slice normal and refused, naming the reason, when they are
  tilted (gantry tilt), irregularly spaced or have a gap; a gap names the unreadable files of the
  folder, which are most likely the missing slices.

Positions and orientations are DICOM's LPS patient coordinates in mm. Files are named relative
to the series folder in messages, so that a :class:`~unet_pipeline.errors.CaseError` names the
folder once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CaseError

if TYPE_CHECKING:  # numpy is imported where used: dicom.py takes this module's constants without it
    import numpy as np

__all__ = ["SliceHeader", "leave_out_localizers", "leave_out_copies", "check_stack", "unreadable_reason",
           "SPACING_TOLERANCE", "TILT_TOLERANCE", "SAME_POSITION_MM"]

#: Largest allowed distance of a slice from the uniform slice grid, as a fraction of the slice spacing.
SPACING_TOLERANCE = 0.05
#: Largest allowed in-plane shift of a slice relative to the first one, as a fraction of the pixel spacing.
TILT_TOLERANCE = 0.1
#: Two slices closer than this along the slice normal (mm) lie at the same position.
SAME_POSITION_MM = 1e-4


@dataclass(frozen=True)
class SliceHeader:
    """The header fields of one single-frame image file that decide whether and where it is read."""

    path: str
    position: np.ndarray  # ImagePositionPatient, (3,) float64, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient, (6,) float64: row direction, then column direction
    size: tuple[int, int]  # (columns, rows) in pixels
    sop_uid: str | None = None  # SOPInstanceUID (0008,0018)
    image_type: str = ""  # ImageType (0008,0008), upper case, values joined by "\"
    pixel_spacing: tuple[float, float] = (1.0, 1.0)  # (column, row) spacing in mm

    @property
    def localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper().split("\\")

    def layout(self) -> tuple:
        """Orientation (rounded to 1e-4) and size: slices of one volume share it."""
        import numpy as np

        return (*np.round(self.orientation, 4).tolist(), *self.size)


def _name(folder: str, path: str) -> str:
    """``path`` relative to the series folder (the folder itself is named once, by the error)."""
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive (Windows)
        return path


def _names(folder: str, paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(_name(folder, p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def leave_out_localizers(folder: str, slices: Sequence[SliceHeader]) -> tuple[list[SliceHeader], list[str]]:
    """The slices of the volume, without localizers; and a warning naming each group left out.

    Raises
    ------
    CaseError
        Only localizers; or slices of several orientations or sizes none of which is the majority
        (more files than the others together): two volumes mixed in one series.
    """
    folder = str(folder)
    warnings: list[str] = []
    scouts = [s for s in slices if s.localizer]
    kept = [s for s in slices if not s.localizer]
    if scouts and not kept:
        raise CaseError(folder, "only localizer (scout) images in this series: "
                        f"{_names(folder, [s.path for s in scouts])}")
    if scouts:
        warnings.append(f"{len(scouts)} localizer (scout) image(s) left out (ImageType LOCALIZER): "
                        f"{_names(folder, [s.path for s in scouts])}")
    groups: dict[tuple, list[SliceHeader]] = {}
    for s in kept:
        groups.setdefault(s.layout(), []).append(s)
    if len(groups) == 1:
        return kept, warnings
    ranked = sorted(groups.values(), key=len, reverse=True)
    main, odd = ranked[0], [s for group in ranked[1:] for s in group]
    if len(main) <= len(odd):
        sizes = sorted({s.size for s in kept})
        what = (f"slices of different sizes in one series (columns x rows: {', '.join(f'{c}x{r}' for c, r in sizes)})"
                if len(sizes) > 1 else "slices with different orientations in one series")
        raise CaseError(folder, f"{what}, none of them the majority: {len(groups)} groups of "
                        f"{', '.join(str(len(g)) for g in ranked)} files (two volumes in one series?)")
    c, r = main[0].size
    warnings.append(f"{len(odd)} image(s) of another orientation or size than the other {len(main)} "
                    f"({c}x{r} pixels) left out as localizer(s): {_names(folder, [s.path for s in odd])}")
    return main, warnings


def leave_out_copies(folder: str, slices: Sequence[SliceHeader]) -> tuple[list[SliceHeader], list[str]]:
    """The slices with each exact copy (same SOPInstanceUID, same position) read once; a warning naming the copies.

    Of the copies, the file with the shortest path (then the first in name order) is kept.

    Raises
    ------
    CaseError
        One SOPInstanceUID in files at different positions.
    """
    import numpy as np

    folder = str(folder)
    by_uid: dict[str, list[SliceHeader]] = {}
    for s in slices:
        if s.sop_uid:
            by_uid.setdefault(s.sop_uid, []).append(s)
    dropped: dict[str, str] = {}  # path of a copy -> path of the file read
    for uid, same in by_uid.items():
        if len(same) < 2:
            continue
        same = sorted(same, key=lambda s: (len(s.path), s.path))
        if any(np.abs(s.position - same[0].position).max() > SAME_POSITION_MM for s in same[1:]):
            raise CaseError(folder, f"one SOPInstanceUID ({uid}) at different positions: "
                            f"{_names(folder, [s.path for s in same])}")
        dropped.update((s.path, same[0].path) for s in same[1:])
    if not dropped:
        return list(slices), []
    named = [f"{_name(folder, copy)} (copy of {_name(folder, kept)})" for copy, kept in dropped.items()]
    more = f" and {len(named) - 5} more" if len(named) > 5 else ""
    return ([s for s in slices if s.path not in dropped],
            [f"{len(named)} exact copy/copies of a file (same SOPInstanceUID) read once: {', '.join(named[:5])}{more}"])


def check_stack(folder: str, positions: np.ndarray, orientation: np.ndarray, pixel_spacing: np.ndarray,
                names: Sequence[str], unreadable: Sequence[tuple[str, str]] = ()) -> tuple[np.ndarray, float | None]:
    """Order slices along their normal and check that they form a regular volume.

    Parameters
    ----------
    folder
        The series folder (or multi-frame file), named by errors.
    positions
        ``(n, 3)`` float64, ImagePositionPatient of each slice (LPS mm).
    orientation
        ``(6,)`` ImageOrientationPatient shared by the slices.
    pixel_spacing
        ``(2,)`` in-plane pixel spacing (mm); the tilt tolerance is relative to its smaller value.
    names
        What each slice is called in errors (a file path, or ``frame 12``).
    unreadable
        ``(path, reason)`` of files in the folder that could not be read: a gap names them.

    Returns
    -------
    tuple
        The slice order (``(n,)`` int indices, ascending along the normal) and the slice spacing in
        mm (``(last - first) / (n - 1)`` along the normal; None for one slice).

    Raises
    ------
    CaseError
        A degenerate orientation, two slices at one position (naming both), gantry tilt, a gap
        (naming unreadable files) or irregular spacing.
    """
    import numpy as np

    folder = str(folder)
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        raise CaseError(folder, f"degenerate ImageOrientationPatient {np.asarray(orientation).tolist()}")
    normal = normal / norm
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    if len(order) < 2:
        return order, None
    pos, dist = positions[order], dist[order]
    steps = np.diff(dist)
    if np.any(steps < SAME_POSITION_MM):
        i = int(np.argmax(steps < SAME_POSITION_MM))
        pair = " and ".join(_name(folder, names[k]) for k in order[i:i + 2])
        raise CaseError(folder, f"{int(np.sum(steps < SAME_POSITION_MM))} slice(s) at the same position as another: "
                        f"{pair} are different images at {dist[i]:.2f} mm along the slice normal (remove one)")
    offsets = pos - pos[0]
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if in_plane.max() > TILT_TOLERANCE * float(np.min(pixel_spacing)):
        angle = float(np.degrees(np.arctan2(in_plane[-1], dist[-1] - dist[0])))
        raise CaseError(folder, f"gantry tilt of about {angle:.1f} degrees: slices are shifted within their plane "
                        f"by up to {in_plane.max():.2f} mm (sheared volume); resample the series to an "
                        "orthogonal grid first")
    spacing = float((dist[-1] - dist[0]) / (len(dist) - 1))
    off_grid = np.abs(dist - (dist[0] + spacing * np.arange(len(dist))))
    if off_grid.max() > SPACING_TOLERANCE * spacing:
        _refuse_gap(folder, steps, unreadable)
    return order, spacing


def _refuse_gap(folder: str, steps: np.ndarray, unreadable: Sequence[tuple[str, str]]) -> None:
    """Refuse a series whose slices are off the uniform grid: missing slices (naming the unreadable files)
    or irregular spacing."""
    import numpy as np

    median = float(np.median(steps))
    gaps = np.round(steps / median).astype(int)
    missing = int(np.sum(gaps[gaps > 1] - 1))
    what = f"{missing} missing slice(s)" if missing else "irregular slice spacing"
    why = f"{what}: slice steps range {steps.min():.3f}..{steps.max():.3f} mm (median {median:.3f} mm)"
    if unreadable:
        why += "; unreadable file(s) here, the missing slice(s)?: " + "; ".join(
            f"{_name(folder, p)} ({reason})" for p, reason in unreadable[:5])
    raise CaseError(folder, why)


def unreadable_reason(path: str) -> str:
    """Why a DICOM file cannot be read, in a few words (truncated, damaged, undecodable pixels)."""
    import pydicom

    size = os.path.getsize(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many kinds on damaged files
        return f"truncated or damaged, {size} bytes: {str(exc).strip()[:120]}"
    if "PixelData" not in ds:
        return f"no pixel data ({size} bytes: truncated?)"
    if not ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian).is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated) // 8 * int(ds.get("SamplesPerPixel", 1))
        if len(ds.PixelData) < need:
            return f"truncated: {len(ds.PixelData)} of {need} bytes of pixel data ({size} bytes in all, half-copied?)"
    try:
        ds.pixel_array
    except Exception as exc:
        return f"its pixels cannot be decoded: {str(exc).strip()[:120]}"
    return "GDCM cannot read it"
