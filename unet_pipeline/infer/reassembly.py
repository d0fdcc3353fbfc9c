"""Slices -> volume -> the input's own grid, orientation and header.

Probabilities predicted on the preprocessed grid ``(Z, K, Y', X')`` are resized bilinearly to the
canonical in-plane size ``(Y, X)`` chunk by chunk, the argmax is taken (so labels are resampled
as one-hot probabilities, never by interpolating label values), the canonical ``(Z, Y, X)``
label volume is permuted and flipped back to the stored voxel order, and written with a copy of
the input's NIfTI header: same shape, affine, qform/sform and codes; datatype uint8 (uint16
beyond 255 classes) without scaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io.files import atomic_path, load_json
from ..io.formats import label_dtype
from ..io.geometry import Orientation
from ..io.npy import NpyReader
from ..model.tiling import class_argmax, resize_probabilities
from ..preprocess.transform import CHUNK_SLICES

__all__ = ["probabilities_to_labels", "write_segmentation", "reassemble_case"]


def probabilities_to_labels(probs: np.ndarray, canonical_shape: tuple[int, int, int], num_classes: int,
                            label_values: list[int] | None = None) -> np.ndarray:
    """Canonical label volume from preprocessed-grid probabilities.

    Parameters
    ----------
    probs
        ``(Z, K, Y', X')`` probabilities (float16/float32; may be a memory map).
    canonical_shape
        ``(Z, Y, X)`` of the canonical (un-resampled) volume.
    label_values
        Label value of each class index ``1..K-1`` (default: the index itself); the written
        volume holds these values, as the input labels did.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` uint8/uint16 labels.
    """
    n_z, n_y, n_x = canonical_shape
    if probs.shape[0] != n_z:
        raise ValueError(f"probabilities have {probs.shape[0]} slices, the volume has {n_z}")
    values = list(label_values) if label_values else list(range(1, num_classes))
    if len(values) != num_classes - 1:
        raise ValueError(f"{len(values)} label values for {num_classes - 1} classes")
    out = np.empty(canonical_shape, dtype=label_dtype(max(values, default=0) + 1))
    to_value = np.asarray([0, *values], dtype=out.dtype)  # class index -> label value
    for z0 in range(0, n_z, CHUNK_SLICES):
        chunk = resize_probabilities(np.asarray(probs[z0:z0 + CHUNK_SLICES], dtype=np.float32), (n_y, n_x))
        out[z0:z0 + chunk.shape[0]] = to_value[class_argmax(chunk)]
    return out


def write_segmentation(labels_stored: np.ndarray, reference: str | Path, out_path: str | Path) -> None:
    """Write ``labels_stored`` (stored voxel order ``(i, j, k)``) with ``reference``'s header, atomically.

    The header (affine, qform/sform and their codes, units) is copied from the reference NIfTI;
    only the datatype and scaling change.
    """
    ref = nib.load(str(reference))
    if int(np.prod(labels_stored.shape)) != int(np.prod(ref.shape)):
        raise ValueError(f"segmentation shape {labels_stored.shape} does not match {reference} shape {ref.shape}")
    header = ref.header.copy()
    header.set_data_dtype(labels_stored.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0
    img = type(ref)(np.ascontiguousarray(labels_stored).reshape(ref.shape), None, header=header)
    with atomic_path(out_path) as tmp:
        nib.save(img, str(tmp))


def reassemble_case(probs_path: str | Path, meta_path: str | Path, reference: str | Path, out_path: str | Path,
                    *, num_classes: int, postprocess: Mapping | None = None, labels: Mapping[int, str] | None = None) -> np.ndarray:
    """Probabilities ``.npy`` + preprocessing ``meta.json`` -> segmentation NIfTI in the input's geometry.

    Returns the stored-order label volume that was written.
    """
    meta = load_json(meta_path)
    probs = NpyReader(probs_path)  # (Z, K, Y', X') float16, read chunk by chunk: RSS holds one chunk, not the file
    canonical = probabilities_to_labels(probs, tuple(meta["canonical_shape"]), num_classes, meta.get("label_values"))
    if postprocess:
        from ..postprocess import postprocess_labels

        canonical = postprocess_labels(canonical, tuple(meta["canonical_spacing_mm"]), postprocess, labels or {})
    orient = Orientation.from_dict(meta["orientation"])
    stored = orient.to_stored(canonical)
    write_segmentation(stored, reference, out_path)
    return stored
