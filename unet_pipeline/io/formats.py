"""Image file formats: which files are images, SimpleITK -> NIfTI, spacing of an affine, label dtypes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


__all__ = ["sitk_to_nifti", "spacing_from_affine", "IMAGE_SUFFIXES", "is_image_file", "label_dtype"]


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

#: File endings accepted as images or labels, longest first so ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: str | Path) -> bool:
    """True when ``path`` ends in one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)

def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 256 classes (incl. background), else uint16."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)
