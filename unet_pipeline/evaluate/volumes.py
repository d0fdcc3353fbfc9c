"""Volumetry and quality-control flags of segmentations (no reference needed).

For every segmented case and class: the volume (mL), HU statistics of the CT inside the
structure, the number of connected components and QC flags a reader should look at:

* ``empty``: nothing of this class was segmented;
* ``fragmented``: more than one connected component (voxels touching by a face, an edge or a
  corner are connected: :data:`unet_pipeline.postprocess.CONNECTIVITY`, as in postprocessing);
* ``touches_border``: the structure reaches the edge of the image, so it may be cut off by the
  field of view and its volume underestimated.

Inputs are the segmentation (integer labels) and the CT image (HU) on the same voxel grid, in the
array order of the NIfTI file; spacing in mm per array axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaseError
from ..postprocess import label_components
from .tables import VOLUME_COLUMNS

__all__ = ["VOLUME_COLUMNS", "case_volumes", "volume_rows"]


def _touches_border(box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether a structure with bounding box ``box`` reaches the first or last voxel of any axis."""
    return any(b.start == 0 or b.stop == n for b, n in zip(box, shape))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of a non-empty ``mask``."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def case_volumes(segmentation: np.ndarray, image_hu: np.ndarray, spacing_mm: Sequence[float],
                 labels: Mapping[int, str], case_id: str = "") -> list[dict[str, Any]]:
    """One row per class (``labels`` order) with the columns of :data:`VOLUME_COLUMNS`.

    ``segmentation`` is an integer array, ``image_hu`` a float or integer array of the same shape
    (HU); percentiles are of the voxels inside the structure (NaN when it is empty).
    """
    seg = np.asarray(segmentation)
    if seg.shape != tuple(image_hu.shape):
        raise ValueError(f"segmentation shape {seg.shape} differs from image shape {tuple(image_hu.shape)}")
    voxel_ml = float(np.prod([float(s) for s in spacing_mm])) / 1000.0
    rows = []
    nan = float("nan")
    for value, name in labels.items():
        mask = seg == value
        n = int(np.count_nonzero(mask))
        row: dict[str, Any] = {"case": case_id, "label": str(name), "label_id": int(value), "volume_ml": n * voxel_ml}
        if n:
            hu = np.asarray(image_hu[mask], dtype=np.float32)
            p05, p50, p95 = (float(v) for v in np.percentile(hu, [5, 50, 95]))
            box = _bounding_box(mask)  # from axis projections: no index arrays of every voxel
            _, n_comp = label_components(mask[box])
            border = _touches_border(box, mask.shape)
            row.update(hu_mean=float(hu.mean(dtype=np.float64)), hu_std=float(hu.std(dtype=np.float64)),
                       hu_p05=p05, hu_p50=p50, hu_p95=p95, n_components=int(n_comp), empty=False,
                       touches_border=border)
        else:
            row.update(hu_mean=nan, hu_std=nan, hu_p05=nan, hu_p50=nan, hu_p95=nan, n_components=0, empty=True,
                       touches_border=False)
        flags = [f for f, on in (("empty", row["empty"]), ("fragmented", row["n_components"] > 1),
                                 ("touches_border", row["touches_border"])) if on]
        row["qc_flags"] = ";".join(flags)
        rows.append(row)
    return rows


def volume_rows(case_id: str, seg: str | Path, image: str | Path, labels: Mapping[int, str]) -> list[dict]:
    """:func:`case_volumes` of a segmentation and its CT, both NIfTI files.

    Raises :class:`~unet_pipeline.errors.CaseError` when their voxel grids differ in shape.
    """
    import nibabel as nib

    from ..io.formats import spacing_from_affine
    from ..io.images import read_voxels

    simg, iimg = nib.load(str(seg)), nib.load(str(image))
    if simg.shape[:3] != iimg.shape[:3]:
        raise CaseError(seg, f"segmentation shape {simg.shape} differs from image {image} shape {iimg.shape}")
    return case_volumes(read_voxels(simg, seg), read_voxels(iimg, image), spacing_from_affine(iimg.affine),
                        labels, case_id)
