"""DICOM series to NIfTI, with the checks a CT cohort needs.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
on the cross product of the ``ImageOrientationPatient`` row and column vectors), never by file
name or instance number. A series with gantry tilt, missing slices, irregular spacing, duplicate
positions, mixed orientations or mixed slice sizes is refused with a message naming the folder
and the problem. Rescale slope and intercept are applied by SimpleITK so values are HU; integer
results that fit are returned as int16 (ITK widens rescaled CT to int32), float results as
float32.

Tolerances (position rounding in real headers, e.g. to 0.01 mm, must not trip them):

* spacing: every slice lies within :data:`SPACING_TOLERANCE` x the slice spacing of the uniform
  grid through the first and last slice;
* gantry tilt: no slice is shifted within its plane, relative to the first slice, by more than
  :data:`TILT_TOLERANCE` x the smallest pixel spacing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import CaseError
from .io import sitk_to_nifti

__all__ = ["list_series", "read_dicom_series", "SPACING_TOLERANCE", "TILT_TOLERANCE"]

log = logging.getLogger(__name__)

#: Largest allowed distance of a slice from the uniform slice grid, as a fraction of the slice spacing.
SPACING_TOLERANCE = 0.05
#: Largest allowed in-plane shift of a slice relative to the first one, as a fraction of the pixel spacing.
TILT_TOLERANCE = 0.1


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


def _tag(reader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def _floats(text: str | None, n: int) -> np.ndarray | None:
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.size == n and np.all(np.isfinite(values)) else None


def _read_headers(files: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], np.ndarray, float | None]:
    """Per-file ``(positions (n, 3) mm LPS, orientations (n, 6), sizes (columns, rows), pixel spacing (2,) mm, thickness)``."""
    import SimpleITK as sitk

    positions, orientations, sizes = [], [], []
    pixel, thickness = np.ones(2), None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise CaseError(f, f"unreadable DICOM file ({str(exc).strip().splitlines()[0][:150]})") from exc
        pos = _floats(_tag(r, "0020|0032"), 3)
        ori = _floats(_tag(r, "0020|0037"), 6)
        if pos is None or ori is None:
            raise CaseError(f, "DICOM file lacks a valid ImagePositionPatient/ImageOrientationPatient")
        positions.append(pos)
        orientations.append(ori)
        sizes.append((int(r.GetSize()[0]), int(r.GetSize()[1])))
        pixel = np.asarray(r.GetSpacing()[:2], dtype=np.float64)
        if thickness is None:
            for key in ("0018|0050", "0018|0088"):  # SliceThickness, SpacingBetweenSlices
                value = _floats(_tag(r, key), 1)
                if value is not None and value[0] > 0:
                    thickness = float(value[0])
                    break
    return np.asarray(positions), np.asarray(orientations), sizes, pixel, thickness


def _slice_geometry(folder: Path, files: list[str]) -> tuple[list[str], float | None]:
    """Check the series' slice geometry.

    Returns
    -------
    tuple
        The file names sorted along the slice normal (ascending), and the slice thickness (mm)
        from the header (used for a single-slice series only), or None.
    """
    pos, orientations, sizes, pixel, thickness = _read_headers(files)
    if len(set(sizes)) > 1:
        found = ", ".join(f"{c}x{r}" for c, r in sorted(set(sizes)))
        raise CaseError(folder, f"slices of different sizes in one series (columns x rows: {found})")
    ori = orientations[0]
    if any(not np.allclose(o, ori, atol=1e-4) for o in orientations):
        raise CaseError(folder, "slices with different orientations in one series (a localizer mixed in?)")
    normal = np.cross(ori[:3], ori[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        raise CaseError(folder, f"degenerate ImageOrientationPatient {ori.tolist()}")
    normal /= norm
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    files = [files[i] for i in order]
    if len(files) < 2:
        return files, thickness
    pos, dist = pos[order], dist[order]
    steps = np.diff(dist)
    if np.any(steps < 1e-4):
        n_dup = int(np.sum(steps < 1e-4))
        raise CaseError(folder, f"{n_dup} slice(s) at the same position as another (duplicate slices?)")
    offsets = pos - pos[0]
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if in_plane.max() > TILT_TOLERANCE * float(pixel.min()):
        angle = float(np.degrees(np.arctan2(in_plane[-1], dist[-1] - dist[0])))
        raise CaseError(folder, f"gantry tilt of about {angle:.1f} degrees: slices are shifted within their plane "
                        f"by up to {in_plane.max():.2f} mm (sheared volume); resample the series to an "
                        "orthogonal grid first")
    spacing = (dist[-1] - dist[0]) / (len(dist) - 1)
    off_grid = np.abs(dist - (dist[0] + spacing * np.arange(len(dist))))
    if off_grid.max() > SPACING_TOLERANCE * spacing:
        median = float(np.median(steps))
        gaps = np.round(steps / median).astype(int)
        missing = int(np.sum(gaps[gaps > 1] - 1))
        what = f"{missing} missing slice(s)" if missing else "irregular slice spacing"
        raise CaseError(folder, f"{what}: slice steps range {steps.min():.3f}..{steps.max():.3f} mm "
                        f"(median {median:.3f} mm)")
    return files, thickness


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
        No series, several series and no ``series_uid``, an unknown ``series_uid``, or a series
        whose slices do not form a regular volume; the message names the folder.
    TypeError
        ``series_uid`` is not a string or None.
    """
    import SimpleITK as sitk

    if series_uid is not None and not isinstance(series_uid, str):
        raise TypeError(f"series_uid must be a str or None, got {type(series_uid).__name__}")
    folder = Path(folder)
    series = list_series(folder)
    if not series:
        raise CaseError(folder, "no DICOM series found in this folder")
    if series_uid is None:
        if len(series) > 1:
            found = ", ".join(f"{uid} ({len(files)} files)" for uid, files in sorted(series.items()))
            raise CaseError(folder, f"{len(series)} DICOM series in one folder; split them into sub-folders "
                            f"or give the SeriesInstanceUID (found: {found})")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise CaseError(folder, f"series {series_uid} not found (found: {', '.join(sorted(series))})")
    files, thickness = _slice_geometry(folder, series[series_uid])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
        if image.GetDimension() == 3 and image.GetSize()[2] == 1 and thickness is not None:
            image.SetSpacing((*image.GetSpacing()[:2], thickness))
        image = _narrow_pixel_type(image)
        return sitk_to_nifti(image)
    except (RuntimeError, ValueError) as exc:
        raise CaseError(folder, f"cannot read the DICOM series ({str(exc).strip().splitlines()[0][:150]})") from exc
