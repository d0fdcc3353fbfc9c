"""DICOM series to NIfTI, with the checks a CT cohort needs.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
on the cross product of the ``ImageOrientationPatient`` row and column vectors), never by file
name or instance number. A series with gantry tilt, missing slices, irregular spacing or mixed
slice sizes is refused with a message naming the folder and the problem. Rescale slope and
intercept are applied by SimpleITK so values are HU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import CaseError
from .io import sitk_to_nifti

__all__ = ["list_series", "read_dicom_series"]

log = logging.getLogger(__name__)


def list_series(folder: str | Path) -> dict[str, list[str]]:
    """SeriesInstanceUID -> file names (GDCM's order) for every series in ``folder`` (recursively)."""
    import SimpleITK as sitk

    folder = Path(folder)
    series: dict[str, list[str]] = {}
    dirs = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    for d in dirs:
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
    return values if values.size == n else None


def _slice_geometry(folder: Path, files: list[str]) -> list[str]:
    """Check the series' slice geometry; return the file names sorted along the slice normal."""
    import SimpleITK as sitk

    positions, sizes, orientations = [], set(), []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise CaseError(f, f"unreadable DICOM file ({str(exc).splitlines()[0][:150]})") from exc
        pos = _floats(_tag(r, "0020|0032"), 3)
        ori = _floats(_tag(r, "0020|0037"), 6)
        if pos is None or ori is None:
            raise CaseError(f, "DICOM file lacks ImagePositionPatient/ImageOrientationPatient")
        positions.append(pos)
        orientations.append(ori)
        sizes.add((_tag(r, "0028|0010"), _tag(r, "0028|0011")))
    if len(sizes) > 1:
        raise CaseError(folder, f"slices of different sizes in one series (rows, columns): {sorted(sizes)}")
    ori = orientations[0]
    if any(not np.allclose(o, ori, atol=1e-4) for o in orientations):
        raise CaseError(folder, "slices with different orientations in one series")
    normal = np.cross(ori[:3], ori[3:])
    pos = np.asarray(positions)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    files = [files[i] for i in order]
    if len(files) < 2:
        return files
    pos, dist = pos[order], dist[order]
    steps = np.diff(dist)
    if np.any(np.abs(steps) < 1e-4):
        raise CaseError(folder, "two slices at the same position (duplicate slices?)")
    offsets = np.diff(pos, axis=0)
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.any(np.linalg.norm(in_plane, axis=1) > 1e-2 * np.abs(steps).max() + 1e-3):
        raise CaseError(folder, "gantry tilt: slices are shifted within their plane (sheared volume); "
                        "resample the series to an orthogonal grid first")
    median = float(np.median(steps))
    if np.any(np.abs(steps - median) > 0.01 * abs(median) + 1e-3):
        missing = int(np.sum(np.round(steps / median) > 1))
        what = f"{missing} missing slice(s)" if missing else "irregular slice spacing"
        raise CaseError(folder, f"{what}: slice steps range {steps.min():.3f}..{steps.max():.3f} mm "
                        f"(median {median:.3f} mm)")
    return files


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> nib.Nifti1Image:
    """Read one DICOM series from ``folder`` as a NIfTI image with a RAS+ affine (values in HU).

    Parameters
    ----------
    folder
        A folder holding the series' files (sub-folders are searched too).
    series_uid
        Which series to read when the folder holds several; required then.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    series = list_series(folder)
    if not series:
        raise CaseError(folder, "no DICOM series found in this folder")
    if series_uid is None:
        if len(series) > 1:
            raise CaseError(folder, f"{len(series)} DICOM series in one folder; split them into sub-folders "
                            f"or give the SeriesInstanceUID (found: {', '.join(sorted(series))})")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise CaseError(folder, f"series {series_uid} not found")
    files = _slice_geometry(folder, series[series_uid])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CaseError(folder, f"cannot read the DICOM series ({str(exc).splitlines()[0][:150]})") from exc
    return sitk_to_nifti(image)
