"""Enhanced (multi-frame) CT: one file holding every slice, read with pydicom.

Current Siemens and Philips scanners write a CT series as one Enhanced CT Image Storage object
(also Legacy Converted Enhanced CT): the frames' geometry and rescale are in functional groups,
per frame (PerFrameFunctionalGroupsSequence) or shared by all frames
(SharedFunctionalGroupsSequence), not at the top level. SimpleITK/GDCM (2.x) reads such a file
with 1 mm slice spacing and the first frame's position as origin, whatever the frames say, so
this module reads the frames itself:

* position: PlanePositionSequence > ImagePositionPatient (per frame);
* orientation: PlaneOrientationSequence > ImageOrientationPatient (the same for every frame);
* pixel spacing and slice thickness: PixelMeasuresSequence;
* HU: PixelValueTransformationSequence > RescaleSlope/RescaleIntercept, per frame (else the
  top-level values, else 1 and 0).

The frames are then ordered and checked as the slices of a single-frame series
(:func:`unet_pipeline.io.dicom_slices.check_stack`), so both read to the same volume and affine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CaseError

if TYPE_CHECKING:
    import nibabel as nib

__all__ = ["read_multiframe"]


def _group(ds, frame, name: str):
    """The first item of functional group ``name`` for one frame: per-frame first, then shared (None if absent)."""
    for where in (frame, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if where is not None and name in where and len(where[name].value):
            return where[name].value[0]
    return None


def _frame_geometry(path: str, ds):
    """``(positions (n, 3) LPS mm, orientation (6,), pixel spacing (2,) (row, column) mm, thickness mm or None,
    slopes (n,), intercepts (n,))`` of the ``n`` frames of ``ds``."""
    import numpy as np

    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", [])) or [None] * n
    if len(per_frame) != n:
        raise CaseError(path, f"{len(per_frame)} per-frame functional groups for {n} frames")
    positions, orientations, slopes, intercepts = [], [], [], []
    pixel, thickness = None, None
    for k, frame in enumerate(per_frame):
        plane, orient = _group(ds, frame, "PlanePositionSequence"), _group(ds, frame, "PlaneOrientationSequence")
        if plane is None or orient is None or "ImagePositionPatient" not in plane:
            raise CaseError(path, f"frame {k + 1} of {n} lacks a PlanePositionSequence/PlaneOrientationSequence")
        positions.append([float(v) for v in plane.ImagePositionPatient])
        orientations.append([float(v) for v in orient.ImageOrientationPatient])
        measures = _group(ds, frame, "PixelMeasuresSequence")
        if measures is not None and pixel is None:
            pixel = [float(v) for v in measures.PixelSpacing]
            thickness = float(measures.SliceThickness) if measures.get("SliceThickness") else None
        rescale = _group(ds, frame, "PixelValueTransformationSequence") or ds
        slopes.append(float(rescale.get("RescaleSlope", 1) or 1))
        intercepts.append(float(rescale.get("RescaleIntercept", 0) or 0))
    if pixel is None:
        raise CaseError(path, "no PixelMeasuresSequence (pixel spacing) in the functional groups")
    orientations = np.asarray(orientations, dtype=np.float64)
    if not np.allclose(orientations, orientations[0], atol=1e-4):
        raise CaseError(path, "frames with different orientations in one multi-frame image (a localizer mixed in?)")
    return (np.asarray(positions, dtype=np.float64), orientations[0], np.asarray(pixel, dtype=np.float64), thickness,
            np.asarray(slopes), np.asarray(intercepts))


def read_multiframe(path: str) -> nib.Nifti1Image:
    """Read an Enhanced (multi-frame) CT file as a NIfTI image in HU, as
    :func:`~unet_pipeline.io.dicom.read_dicom_series` reads a series of single-frame files.

    Returns
    -------
    nibabel.Nifti1Image
        Voxels ``(i, j, k)`` = (column, row, frame), ``k`` ascending along the slice normal; int16
        HU when the rescaled values are whole and fit, else float32. The affine (RAS+ mm) maps
        voxel ``(0, 0, k)`` to the ImagePositionPatient of the ``k``-th frame in that order; one
        frame gets the SliceThickness (else 1 mm) as its third spacing.

    Raises
    ------
    CaseError
        The file cannot be read or decoded, lacks the frames' geometry, or its frames do not form
        a regular volume (:func:`~unet_pipeline.io.dicom_slices.check_stack`); the message names the file.
    """
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    from .dicom_slices import check_stack
    from .formats import sitk_to_nifti

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds on damaged or undecodable files
        raise CaseError(path, f"cannot read the multi-frame DICOM image ({str(exc).strip()[:150]})") from exc
    positions, orientation, pixel, thickness, slopes, intercepts = _frame_geometry(path, ds)
    pixels = pixels.reshape(len(positions), int(ds.Rows), int(ds.Columns))  # (frames, rows, columns)
    order, spacing = check_stack(path, positions, orientation, pixel, [f"frame {k + 1}" for k in range(len(positions))])
    hu = pixels[order].astype(np.float64) * slopes[order, None, None] + intercepts[order, None, None]
    whole = np.array_equal(hu, np.rint(hu)) and hu.size and -32768 <= hu.min() and hu.max() <= 32767
    image = sitk.GetImageFromArray(hu.astype(np.int16 if whole else np.float32))  # (k, j, i) in numpy order
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    image.SetSpacing((float(pixel[1]), float(pixel[0]), float(spacing or thickness or 1.0)))
    image.SetOrigin(tuple(float(v) for v in positions[order[0]]))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, column, normal]).ravel()))
    return sitk_to_nifti(image)
