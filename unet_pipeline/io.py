"""Reading and writing images with their geometry, and atomic writes.

Conventions
-----------
* A volume read from disk is returned in its *stored* voxel order ``(i, j, k)``, the order of
  the NIfTI data block, together with a :class:`nibabel.Nifti1Image` header whose 4 x 4
  ``affine`` maps voxel indices to RAS+ world coordinates in mm.
* Non-NIfTI formats (NRRD, MHA/MHD, DICOM series) are read with SimpleITK and converted to an
  in-memory NIfTI image (ITK's LPS direction cosines turned into a RAS+ affine) so the rest of
  the pipeline sees one kind of geometry.
* Every file is written to a temporary name in its destination folder and renamed into place
  (:func:`atomic_path`), so an interrupted job never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import CaseError
from .naming import IMAGE_SUFFIXES, case_id_from_path, is_image_file

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_path",
    "case_id_from_path",
    "is_image_file",
    "load_image",
    "read_voxels",
    "save_json",
    "load_json",
    "NpyWriter",
    "sitk_to_nifti",
    "spacing_from_affine",
]

log = logging.getLogger(__name__)

@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the final suffix (``.nii.gz`` etc.) so writers that choose the
    format from the name still work. On any exception the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def save_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN is written as ``null``."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def load_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _nan_to_none(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


class NpyWriter:
    """Write a ``.npy`` file chunk by chunk along axis 0, atomically, without a memory map.

    Parameters
    ----------
    path
        Destination ``.npy`` file.
    shape
        Full array shape; chunks must be C-contiguous slabs ``arr[a:b]`` written in order.
    dtype
        Array dtype.

    Examples
    --------
    >>> with NpyWriter(p, (4, 2, 2), np.float32) as w:  # doctest: +SKIP
    ...     w.write(np.zeros((2, 2, 2), np.float32)); w.write(np.ones((2, 2, 2), np.float32))
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._rows = 0
        self._ctx = atomic_path(self.path)
        self._file: Any = None

    def __enter__(self) -> NpyWriter:
        tmp = self._ctx.__enter__()
        self._file = open(tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._file, header)
        return self

    def write(self, chunk: np.ndarray) -> None:
        """Append ``chunk`` (shape ``(n, *shape[1:])``) after the rows already written."""
        if tuple(chunk.shape[1:]) != self.shape[1:]:
            raise ValueError(f"chunk shape {chunk.shape} does not fit array shape {self.shape}")
        if self._rows + chunk.shape[0] > self.shape[0]:
            raise ValueError(f"too many rows for {self.path.name}: {self._rows + chunk.shape[0]} > {self.shape[0]}")
        self._file.write(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())
        self._rows += chunk.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self._rows != self.shape[0]:
            exc = ValueError(f"{self.path.name}: wrote {self._rows} of {self.shape[0]} rows")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        self._ctx.__exit__(exc_type, exc, tb)


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each stored voxel axis: the norms of the affine's first 3 columns.

    Returns
    -------
    numpy.ndarray
        Shape ``(3,)``, float64, mm, in stored axis order ``(i, j, k)``. Correct for oblique
        affines too (unlike the header's pixdim, which may disagree with the sform).
    """
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def sitk_to_nifti(image: Any) -> nib.Nifti1Image:
    """Convert a 3-D ``SimpleITK.Image`` into an in-memory NIfTI image with a RAS+ affine.

    ITK stores voxels as ``(k, j, i)`` in numpy order and geometry in LPS; the returned image
    holds the data as ``(i, j, k)`` and an affine ``diag(-1, -1, 1) @ [D * s | o]``.
    """
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected one component per voxel, got {image.GetNumberOfComponentsPerPixel()}")
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ (direction * spacing[None, :])
    affine[:3, 3] = lps_to_ras @ origin
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def load_image(path: str | Path) -> nib.Nifti1Image:
    """Open an image or label file (header now, voxels on demand) as a NIfTI image.

    NIfTI files are opened lazily with nibabel; NRRD/MHA/MHD files and DICOM series folders are
    read with SimpleITK and converted (:func:`sitk_to_nifti`).

    Raises
    ------
    CaseError
        The file is missing, unreadable, truncated or not an image; the message names it.
    """
    path = Path(path)
    if not path.exists():
        raise CaseError(path, "file not found")
    if path.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))
            if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
                raise CaseError(path, f"not a NIfTI-1/2 image ({type(img).__name__})")
            return img
        import SimpleITK as sitk

        return sitk_to_nifti(sitk.ReadImage(str(path)))
    except CaseError:
        raise
    except Exception as exc:  # nibabel/ITK raise many kinds; the user needs the file and the reason
        raise CaseError(path, f"cannot read as an image ({_short(exc)})") from exc


def read_voxels(img: nib.Nifti1Image, path: str | Path) -> np.ndarray:
    """Read all voxels of ``img`` in stored order ``(i, j, k)``.

    Integer data without scaling keeps its dtype (int16 CT stays int16: no float64 copy);
    scaled data (``scl_slope``/``scl_inter``) is returned as float32. A 4-D image with a single
    volume is squeezed to 3-D.

    Raises
    ------
    CaseError
        Truncated or corrupt data, or a shape that is not a single 3-D volume.
    """
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 5 and shape[3] == 1 and shape[4] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise CaseError(path, f"expected a 3-D volume, got shape {tuple(img.shape)} ({len(img.shape)}-D)")
    try:
        proxy = img.dataobj
        if hasattr(proxy, "get_unscaled"):
            raw = np.asarray(proxy.get_unscaled())
            slope, inter = _scaling(img)
            if slope != 1.0 or inter != 0.0:
                data = raw.astype(np.float32)
                data *= np.float32(slope)
                data += np.float32(inter)
                raw = data
        else:
            raw = np.asarray(proxy)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise CaseError(path, f"truncated or corrupt image data ({_short(exc)})") from exc
    if raw.dtype == np.float64:
        raw = raw.astype(np.float32)
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8)
    return raw.reshape(shape)


def _scaling(img: nib.Nifti1Image) -> tuple[float, float]:
    slope, inter = img.header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
