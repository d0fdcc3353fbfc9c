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
    "NpyReader",
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
        tmp.write_text(text + "\n", encoding="utf-8")


def load_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


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


class NpyReader:
    """Read a C-ordered ``.npy`` file slab by slab along axis 0 with plain file reads.

    A memory map (``np.load(mmap_mode="r")``) keeps every page it has touched resident and
    counted in the process's RSS until it is closed, so one pass over a large array costs the
    whole file. This reader holds only the slab asked for.

    Parameters
    ----------
    path
        ``.npy`` file (format 1.0 or 2.0, C order, no object dtype).

    Attributes
    ----------
    shape, dtype, ndim
        Those of the stored array.

    Examples
    --------
    >>> probs = NpyReader(p)  # doctest: +SKIP
    >>> slab = probs[16:32]   # numpy array (16, *probs.shape[1:])  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
            except ValueError as exc:
                raise CaseError(self.path, f"not a readable .npy file ({_short(exc)})") from exc
            self._offset = fh.tell()
        if fortran or dtype.hasobject:
            raise CaseError(self.path, "only C-ordered .npy files without Python objects can be read in slabs")
        self.shape: tuple[int, ...] = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        if self.ndim == 0:
            raise CaseError(self.path, "a 0-d array has no slabs")
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice) -> np.ndarray:
        """Rows ``key`` (an int or a slice with step 1) as a new array."""
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"index {key} out of range for {self.shape[0]} rows")
            return self.read(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError(f"NpyReader reads contiguous rows only, got step {step}")
            return self.read(start, max(start, stop))
        raise TypeError(f"NpyReader index must be an int or a slice, got {type(key).__name__}")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``0 <= start <= stop <= len``) as an array ``(stop - start, *shape[1:])``."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"rows {start}:{stop} outside 0:{self.shape[0]}")
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        n_bytes = out.nbytes
        if n_bytes:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset + start * self._row_bytes)
                got = fh.readinto(memoryview(out.reshape(-1)).cast("B"))
            if got != n_bytes:
                raise CaseError(self.path, f"truncated .npy file: rows {start}:{stop} need {n_bytes} bytes, got {got}")
        return out


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

    Parameters
    ----------
    image
        3-D scalar ``SimpleITK.Image`` (spacing mm, origin and direction in LPS).

    Returns
    -------
    nibabel.Nifti1Image
        Data ``(i, j, k)`` of the image's pixel type, as a Fortran-ordered array (the one copy
        SimpleITK makes, transposed without a second copy); qform and sform set to the affine
        with code 1 (scanner), units mm. The affine is rounded to float32 like any NIfTI header.

    Raises
    ------
    ValueError
        ``image`` is not 3-D or has more than one component per voxel.
    """
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected one component per voxel, got {image.GetNumberOfComponentsPerPixel()}")
    data = sitk.GetArrayFromImage(image).T  # (k, j, i) C order -> (i, j, k) F order, no copy
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ (direction * spacing[None, :])
    affine[:3, 3] = lps_to_ras @ origin
    out = nib.Nifti1Image(data, affine)
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
        raise CaseError(path, f"truncated or corrupt image data ({_short(exc)})") from exc
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
