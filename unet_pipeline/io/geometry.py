"""Canonical orientation by exact axis permutation and flipping.

The pipeline works on volumes in a *canonical* array order ``(z, y, x)``:

* ``z`` (axis 0) is the slice axis: the stored voxel axis nearest the world axis of the
  dataset's slicing plane (:data:`SLICE_AXES`: ``axial`` = S, ``coronal`` = A, ``sagittal`` =
  R). It is chosen once per dataset, in the plan, never per case from the case's own spacing:
  a thin-slice scan (0.5 mm slices, 0.8 mm pixels) is cut axially like a 5 mm scan, so a
  cohort that mixes slice thicknesses trains and predicts on one plane;
* ``y`` and ``x`` (axes 1, 2) are the two in-plane world axes, in the order S, A, R.

Every canonical axis increases along its RAS+ world direction: an axial scan becomes
``(S, A, R)``, z running inferior to superior, y posterior to anterior and x from the
patient's left to the patient's right. The mapping between the stored
voxel order and the canonical order is a permutation plus flips (no interpolation), so it is
exactly invertible; oblique direction cosines are untouched because the written segmentation
reuses the input's affine and header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from collections.abc import Sequence

from .formats import spacing_from_affine

__all__ = ["Orientation", "canonical_orientation", "SLICE_AXES", "DEFAULT_SLICE_AXIS", "check_slice_axis",
           "orientation_of", "resampled_size"]

# Order of world axes (0 = R, 1 = A, 2 = S) for the two in-plane axes.
_WORLD_PRIORITY = (2, 1, 0)

#: Slicing plane -> world axis (0 = R, 1 = A, 2 = S) the slices are stacked along.
SLICE_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
#: CT is sliced axially unless ``plan.slice_axis`` says otherwise (nnU-Net 2d does the same).
DEFAULT_SLICE_AXIS = "axial"


def check_slice_axis(slice_axis: str | None) -> str:
    """The slicing plane name, checked; ``None`` (plans and models written before the plan
    recorded it) means :data:`DEFAULT_SLICE_AXIS`."""
    if slice_axis is None:
        return DEFAULT_SLICE_AXIS
    if slice_axis not in SLICE_AXES:
        raise ValueError(f"plan.slice_axis must be one of {sorted(SLICE_AXES)}, got {slice_axis!r}")
    return slice_axis


@dataclass(frozen=True)
class Orientation:
    """How a stored volume maps onto the canonical ``(z, y, x)`` order.

    Attributes
    ----------
    stored_ornt
        ``(3, 2)`` nibabel orientation of the stored voxel axes (world axis, flip) w.r.t. RAS+.
    canonical_ornt
        ``(3, 2)`` orientation of the canonical axes: world axes ``(slice, in-plane 1, in-plane 2)``, all +1.
    stored_shape
        Shape of the stored 3-D volume ``(i, j, k)``.
    stored_spacing
        Voxel size along ``(i, j, k)`` in mm.
    """

    stored_ornt: np.ndarray
    canonical_ornt: np.ndarray
    stored_shape: tuple[int, int, int]
    stored_spacing: tuple[float, float, float]

    @property
    def _to_canonical(self) -> np.ndarray:
        return ornt_transform(self.stored_ornt, self.canonical_ornt)

    @property
    def _to_stored(self) -> np.ndarray:
        return ornt_transform(self.canonical_ornt, self.stored_ornt)

    @property
    def axis_order(self) -> tuple[int, int, int]:
        """Stored axis index that becomes canonical axis 0, 1, 2."""
        order = [0, 0, 0]
        for stored_axis, (new_axis, _flip) in enumerate(self._to_canonical):
            order[int(new_axis)] = stored_axis
        return (order[0], order[1], order[2])

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape ``(Z, Y, X)`` of the canonical array."""
        return tuple(self.stored_shape[a] for a in self.axis_order)  # type: ignore[return-value]

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(z, y, x)`` in mm of the canonical array."""
        return tuple(float(self.stored_spacing[a]) for a in self.axis_order)  # type: ignore[return-value]

    @property
    def slice_world_axis(self) -> str:
        """World axis (``"R"``, ``"A"`` or ``"S"``) the slices are stacked along."""
        return "RAS"[int(self.canonical_ornt[0, 0])]

    def to_canonical(self, stored: np.ndarray) -> np.ndarray:
        """Stored ``(i, j, k, ...)`` array -> canonical ``(z, y, x, ...)`` view (no copy, no interpolation)."""
        return apply_orientation(stored, self._to_canonical)

    def to_stored(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical ``(z, y, x, ...)`` array -> stored ``(i, j, k, ...)`` view; inverse of :meth:`to_canonical`."""
        return apply_orientation(canonical, self._to_stored)

    def to_dict(self) -> dict:
        """JSON-serialisable form (for the preprocessing sidecar)."""
        return {
            "stored_ornt": self.stored_ornt.astype(int).tolist(),
            "canonical_ornt": self.canonical_ornt.astype(int).tolist(),
            "stored_shape": list(self.stored_shape),
            "stored_spacing": list(self.stored_spacing),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Orientation:
        return cls(
            stored_ornt=np.asarray(d["stored_ornt"], dtype=np.float64),
            canonical_ornt=np.asarray(d["canonical_ornt"], dtype=np.float64),
            stored_shape=tuple(int(s) for s in d["stored_shape"]),  # type: ignore[arg-type]
            stored_spacing=tuple(float(s) for s in d["stored_spacing"]),  # type: ignore[arg-type]
        )


def canonical_orientation(affine: np.ndarray, shape: tuple[int, ...],
                          slice_axis: str | None = DEFAULT_SLICE_AXIS) -> Orientation:
    """Work out the canonical orientation of a volume from its affine.

    Parameters
    ----------
    affine
        ``(4, 4)`` voxel-to-RAS+ affine (mm), possibly oblique: each stored axis is matched to
        its nearest world axis (:func:`nibabel.orientations.io_orientation`).
    shape
        Stored shape; only the first three entries are used.
    slice_axis
        The dataset's slicing plane, ``"axial"``, ``"coronal"`` or ``"sagittal"`` (the plan's
        ``slice_axis``); the voxel spacing plays no part in the choice.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got {affine!r}")
    stored_ornt = io_orientation(affine)
    if np.any(np.isnan(stored_ornt)):
        raise ValueError("affine is degenerate: a voxel axis has no direction in world space")
    spacing = spacing_from_affine(affine)
    slice_world = SLICE_AXES[check_slice_axis(slice_axis)]
    in_plane = [w for w in _WORLD_PRIORITY if w != slice_world]
    canonical_ornt = np.array([[slice_world, 1], [in_plane[0], 1], [in_plane[1], 1]], dtype=np.float64)
    return Orientation(
        stored_ornt=stored_ornt,
        canonical_ornt=canonical_ornt,
        stored_shape=tuple(int(s) for s in shape[:3]),  # type: ignore[arg-type]
        stored_spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
    )


def orientation_of(path: str | Path, slice_axis: str | None) -> tuple[Orientation, object]:
    """The :func:`canonical_orientation` of the image at ``path`` (header only) and the loaded image.

    ``slice_axis``: the dataset's slicing plane (``None``: :data:`DEFAULT_SLICE_AXIS`). The image
    is nibabel's (voxels not read), so the caller reads them once from it.
    """
    from .images import load_image

    img = load_image(path)
    return canonical_orientation(np.asarray(img.affine), img.shape, slice_axis), img


def resampled_size(size: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int]:
    """In-plane size ``(Y', X')`` after resampling ``size`` at ``spacing`` (mm) to ``target`` (mm)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, target))  # type: ignore[return-value]
