"""Memory-mappable ``.npy`` slabs: written chunk by chunk, read slice ranges back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaseError, short_error
from .files import atomic_path

__all__ = ["NpyWriter", "NpyReader"]


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
                raise CaseError(self.path, f"not a readable .npy file ({short_error(exc)})") from exc
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
