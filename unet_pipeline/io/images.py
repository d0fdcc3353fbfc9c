"""Reading images with their geometry (atomic writes: :mod:`unet_pipeline.io.files`).

Conventions
-----------
* A volume read from disk is returned in its *stored* voxel order ``(i, j, k)``, the order of
  the NIfTI data block, together with a :class:`nibabel.Nifti1Image` header whose 4 x 4
  ``affine`` maps voxel indices to RAS+ world coordinates in mm.
* Non-NIfTI formats (NRRD, MHA/MHD, DICOM series) are read with SimpleITK and converted to an
  in-memory NIfTI image (ITK's LPS direction cosines turned into a RAS+ affine) so the rest of
  the pipeline sees one kind of geometry.
* Every file is written to a temporary name in its destination folder and renamed into place
  (:func:`unet_pipeline.io.files.atomic_path`), so an interrupted job never leaves a half-written output.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import CaseError, short_error
from .formats import sitk_to_nifti

__all__ = ["load_image", "read_voxels"]


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
        raise CaseError(path, f"cannot read as an image ({short_error(exc)})") from exc


def read_voxels(img: nib.Nifti1Image, path: str | Path) -> np.ndarray:
    """Read all voxels of ``img`` in stored order ``(i, j, k)``.

    Integer data without scaling keeps its dtype (int16 CT stays int16: no float64 copy);
    scaled data (``scl_slope``/``scl_inter``) is returned as float32, and so is float64 data.
    Big-endian data is returned in native byte order, bool as uint8. A 4-D or 5-D image
    holding a single volume (trailing dimensions of size 1) is squeezed to 3-D.

    Parameters
    ----------
    img
        Image from :func:`load_image`.
    path
        The image's source, named in errors.

    Returns
    -------
    numpy.ndarray
        Shape ``(I, J, K)``, stored voxel order (values in the image's units, HU for CT). An
        unscaled uncompressed ``.nii`` may come back as a read-only memory map.

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
            raw = _read_compressed(proxy)
            if raw is None:
                raw = np.asarray(proxy.get_unscaled())
            slope, inter = _scaling(proxy)
            if slope != 1.0 or inter != 0.0:
                data = raw.astype(np.float32)
                data *= np.float32(slope)
                data += np.float32(inter)
                raw = data
        else:
            raw = np.asarray(proxy)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise CaseError(path, f"truncated or corrupt image data ({short_error(exc)})") from exc
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4:
        raw = raw.astype(np.float32)
    elif not raw.dtype.isnative:  # big-endian files: torch needs native byte order
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8)
    return raw.reshape(shape)


#: Bytes decompressed per read when streaming a compressed image into its array.
_READ_CHUNK = 16 * 2**20


def _open_compressed(path: str | os.PathLike) -> Any:
    """A binary reader of a compressed file: gzip through ISA-L (``isal``, about 3x faster than
    Python's gzip module) when it is installed, else nibabel's opener (gzip, bz2, zstd)."""
    from nibabel.openers import Opener

    if str(path).lower().endswith(".gz"):
        try:
            from isal import igzip
        except ImportError:
            pass
        else:
            return igzip.open(path, "rb")
    return Opener(path, "rb")


def _read_compressed(proxy: Any) -> np.ndarray | None:
    """Unscaled voxels of a compressed (``.gz``/``.bz2``/``.zst``) file-backed proxy, or None.

    nibabel reads a compressed file with one ``read`` of the whole data block, which holds the
    decompressed bytes twice at its peak (Python's gzip returns a new bytes object that is then
    copied). Here the bytes are decompressed straight into one preallocated array, in slabs of
    :data:`_READ_CHUNK`, so the peak is the array itself.
    """
    file_like = getattr(proxy, "file_like", None)
    if not isinstance(file_like, (str, os.PathLike)):
        return None
    if not str(file_like).lower().endswith((".gz", ".bz2", ".zst")):
        return None  # uncompressed: nibabel memory-maps it without a copy
    dtype = np.dtype(proxy.dtype)
    shape = tuple(int(n) for n in proxy.shape)
    order = getattr(proxy, "order", "F")
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(n_bytes, np.uint8)
    view = memoryview(buf)
    with _open_compressed(file_like) as fh:
        fh.seek(int(proxy.offset))
        pos = 0
        while pos < n_bytes:
            got = fh.readinto(view[pos:pos + _READ_CHUNK])
            if not got:
                raise EOFError(f"expected {n_bytes} bytes of voxel data, the file ends after {pos}")
            pos += got
    return buf.view(dtype).reshape(shape, order=order)


def _scaling(proxy: Any) -> tuple[float, float]:
    """``(slope, inter)`` of a nibabel array proxy.

    The proxy holds the file's ``scl_slope``/``scl_inter``; a loaded image's header does not
    (nibabel resets them to NaN there), so the header must not be asked.
    """
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter
