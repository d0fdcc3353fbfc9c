"""Resource sizing for cluster jobs from the NIfTI header (no voxel data read)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

from unet_pipeline.resources import nifti_voxel_count, training_runtime_min, volume_mem_mb


def _nifti(path, shape):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))
    return path


def test_voxel_count_from_the_header_only(tmp_path):
    path = _nifti(tmp_path / "a.nii.gz", (30, 20, 10))
    assert nifti_voxel_count(path) == 6000
    # Only the first 348 bytes are needed: a file cut right after the header still answers.
    raw = gzip.decompress(path.read_bytes())[:352]
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw)
    assert nifti_voxel_count(cut) == 6000
    (tmp_path / "junk.nii").write_bytes(b"not a nifti")
    assert nifti_voxel_count(tmp_path / "junk.nii") is None
    assert nifti_voxel_count(tmp_path / "missing.nii.gz") is None


def test_memory_grows_with_voxels_and_attempts(tmp_path):
    small = volume_mem_mb(_nifti(tmp_path / "s.nii.gz", (64, 64, 10)))
    big = volume_mem_mb(_nifti(tmp_path / "b.nii.gz", (256, 256, 40)))
    assert 1000 <= small < big
    assert abs(volume_mem_mb(tmp_path / "b.nii.gz", attempt=2) - 2 * big) <= 2  # rounding
    assert volume_mem_mb(None) > big  # unknown size: a 512 x 512 x 300 default


def test_training_runtime_from_epochs_and_iterations():
    short = training_runtime_min({"epochs": 2, "iterations_per_epoch": 10})
    long = training_runtime_min({"epochs": 100, "iterations_per_epoch": 250})
    assert 10 <= short < long
    assert abs(training_runtime_min({"epochs": 2, "iterations_per_epoch": 10}, attempt=3) - 3 * short) <= 3
