"""Atomic writes, the chunked .npy writer, voxel reading and non-NIfTI formats."""

from __future__ import annotations

import gzip
import math
import struct

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unet_pipeline.errors import CaseError
from unet_pipeline.io.npy import NpyWriter
from unet_pipeline.io.files import atomic_path, load_json, save_json
from unet_pipeline.io.images import load_image, read_voxels
from unet_pipeline.io.formats import sitk_to_nifti, spacing_from_affine
from unet_pipeline.stages import import_case

from ...conftest import make_ct, save_nifti

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# atomic_path and JSON


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz") and tmp != target
        tmp.write_bytes(b"done")
        assert not target.exists()
    assert target.read_bytes() == b"done"
    assert _leftovers(target.parent) == ["out.nii.gz"]


def test_atomic_path_failure_leaves_nothing_and_keeps_old_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []
    target.write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new", encoding="utf-8")
        raise KeyboardInterrupt
    assert target.read_text(encoding="utf-8") == "old" and _leftovers(tmp_path) == ["out.json"]


def test_save_json_writes_nan_as_null(tmp_path):
    save_json({"a": math.nan, "b": [np.float32(1.5), np.int64(2)], "c": tmp_path}, tmp_path / "x.json")
    assert load_json(tmp_path / "x.json") == {"a": None, "b": [1.5, 2], "c": str(tmp_path)}


# ---------------------------------------------------------------------------------------------
# NpyWriter


def test_npy_writer_writes_valid_npy_in_chunks(tmp_path):
    full = np.arange(5 * 3 * 2, dtype=np.float64).reshape(5, 3, 2) / 4
    path = tmp_path / "a.npy"
    with NpyWriter(path, (5, 3, 2), np.float16) as writer:
        writer.write(full[:2])
        writer.write(full[2:3])
        writer.write(full[3:])
    loaded = np.load(path)
    assert loaded.dtype == np.float16 and loaded.shape == (5, 3, 2)
    np.testing.assert_array_equal(loaded, full.astype(np.float16))
    mapped = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(mapped[3], full[3].astype(np.float16))
    assert _leftovers(tmp_path) == ["a.npy"]


def test_npy_writer_too_few_rows_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="wrote 2 of 4 rows"), NpyWriter(tmp_path / "b.npy", (4, 3), np.uint8) as w:
        w.write(np.zeros((2, 3), np.uint8))
    assert _leftovers(tmp_path) == []


def test_npy_writer_too_many_rows_or_wrong_shape_raise_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="too many rows for c.npy: 5 > 4"), \
            NpyWriter(tmp_path / "c.npy", (4, 3), np.uint8) as w:
        w.write(np.zeros((3, 3), np.uint8))
        w.write(np.zeros((2, 3), np.uint8))
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match=r"chunk shape \(2, 4\) does not fit array shape \(4, 3\)"), \
            NpyWriter(tmp_path / "d.npy", (4, 3), np.uint8) as w:
        w.write(np.zeros((2, 4), np.uint8))
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# read_voxels


def _scaled_nifti(path, raw: np.ndarray, slope: float, inter: float):
    """Write ``raw`` with ``scl_slope``/``scl_inter`` patched into the header (nibabel would rescale on save)."""
    plain = path.with_name("plain.nii")
    nib.save(nib.Nifti1Image(raw, np.diag([0.5, 0.5, 2.0, 1.0])), str(plain))
    data = bytearray(plain.read_bytes())
    data[112:120] = struct.pack("<ff", slope, inter)  # scl_slope, scl_inter of a NIfTI-1 header
    plain.unlink()
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))
    return path


@pytest.mark.parametrize("name", ["scaled.nii", "scaled.nii.gz"])
def test_read_voxels_applies_scaling_as_float32(tmp_path, name):
    raw = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 100
    path = _scaled_nifti(tmp_path / name, raw, 2.0, -1024.0)
    img = nib.load(str(path))
    data = read_voxels(img, path)
    assert data.dtype == np.float32 and data.shape == (2, 3, 4)
    np.testing.assert_array_equal(data, raw.astype(np.float32) * 2 - 1024)
    assert data[1, 2, 3] == 23 * 100 * 2 - 1024


def test_read_voxels_keeps_int16_and_squeezes_singleton_dims(tmp_path):
    image, _, affine = make_ct(shape=(7, 5, 3))
    for name in ("i.nii", "i.nii.gz"):
        data = read_voxels(nib.load(str(save_nifti(tmp_path / name, image, affine))), name)
        assert data.dtype == np.int16
        np.testing.assert_array_equal(data, image)
    five = save_nifti(tmp_path / "five.nii.gz", image[..., None, None], affine)
    assert nib.load(str(five)).shape == (7, 5, 3, 1, 1)
    np.testing.assert_array_equal(read_voxels(nib.load(str(five)), five), image)
    for shape in [(7, 5, 3, 2), (7, 5, 3, 1, 2), (7, 5)]:
        path = save_nifti(tmp_path / "bad.nii.gz", np.zeros(shape, np.int16), affine)
        with pytest.raises(CaseError, match=rf"expected a 3-D volume, got shape {tuple(shape)}".replace("(", r"\(")
                           .replace(")", r"\)")) as info:
            read_voxels(nib.load(str(path)), path)
        assert str(path) in str(info.value)


def test_read_voxels_float64_and_big_endian(tmp_path):
    affine = np.eye(4)
    f64 = save_nifti(tmp_path / "f.nii.gz", np.linspace(-1, 1, 24).reshape(2, 3, 4), affine)
    data = read_voxels(nib.load(str(f64)), f64)
    assert data.dtype == np.float32
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(">i2")
    big = np.arange(24, dtype=">i2").reshape(2, 3, 4) - 12
    nib.save(nib.Nifti1Image(big, affine, header=header), str(tmp_path / "be.nii"))
    data = read_voxels(nib.load(str(tmp_path / "be.nii")), "be.nii")
    assert data.dtype == np.dtype("=i2") and data.dtype.isnative
    np.testing.assert_array_equal(data, big)


def test_truncated_file_is_a_case_error(tmp_path):
    image, _, affine = make_ct(shape=(30, 30, 10))
    good = save_nifti(tmp_path / "g.nii.gz", image, affine)
    bad = tmp_path / "t.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CaseError, match="truncated or corrupt|cannot read") as info:
        read_voxels(load_image(bad), bad)
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------------------------------
# SimpleITK images and non-NIfTI formats


def _sitk_volume(pixel=sitk.sitkInt16):
    """A 5 x 4 x 3 (x, y, z) image with oblique direction, anisotropic spacing, LPS origin; voxel = 100 z + 10 y + x."""
    z, y, x = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    img = sitk.GetImageFromArray((100 * z + 10 * y + x - 200).astype(np.int16))
    img.SetSpacing((0.6, 0.8, 2.5))
    img.SetOrigin((12.5, -30.0, 41.0))
    a = np.deg2rad(20.0)
    img.SetDirection(tuple(np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]]).ravel()))
    return sitk.Cast(img, pixel)


def test_sitk_to_nifti_geometry_matches_itk_physical_points():
    img = _sitk_volume()
    out = sitk_to_nifti(img)
    data = read_voxels(out, "mem")
    assert data.shape == (5, 4, 3) and data.dtype == np.int16
    assert data[4, 1, 2] == 100 * 2 + 10 * 1 + 4 - 200  # (i, j, k) = ITK index (x, y, z)
    for index in [(0, 0, 0), (4, 0, 0), (0, 3, 0), (1, 2, 2), (4, 3, 2)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose((out.affine @ [*index, 1])[:3], LPS_TO_RAS @ lps, atol=1e-4)
    np.testing.assert_allclose(spacing_from_affine(out.affine), [0.6, 0.8, 2.5], atol=1e-6)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    with pytest.raises(ValueError, match="expected a 3-D image, got 2-D"):
        sitk_to_nifti(img[:, :, 0])
    with pytest.raises(ValueError, match="one component per voxel, got 3"):
        sitk_to_nifti(sitk.Compose(img, img, img))


@pytest.mark.parametrize("name", ["ct.nrrd", "ct.mha", "ct.mhd", "ct.nii", "ct.nii.gz"])
def test_other_formats_match_the_nifti_written_by_simpleitk(tmp_path, name):
    img = _sitk_volume()
    sitk.WriteImage(img, str(tmp_path / "ref.nii.gz"))
    ref = nib.load(str(tmp_path / "ref.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / name))
    if name.endswith(".mhd"):
        assert (tmp_path / "ct.raw").exists()

    loaded = load_image(tmp_path / name)
    data = read_voxels(loaded, name)
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, np.asarray(ref.dataobj))
    np.testing.assert_allclose(loaded.affine, ref.affine, atol=1e-5)

    record = import_case("ct", tmp_path / name, None, tmp_path / "imported", labels={})
    assert record["shape"] == [5, 4, 3]
    imported = nib.load(str(tmp_path / "imported" / "image.nii.gz"))
    assert imported.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(imported.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(imported.affine, ref.affine, atol=1e-5)
    assert int(imported.header["sform_code"]) > 0


def test_scaled_uncompressed_nifti_imports_as_hu(tmp_path):
    raw = (np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3) * 30)
    path = _scaled_nifti(tmp_path / "s.nii", raw, 1.0, -1024.0)
    import_case("s", path, None, tmp_path / "imp", labels={})
    imported = read_voxels(nib.load(str(tmp_path / "imp" / "image.nii.gz")), "imp")
    np.testing.assert_array_equal(imported, raw.astype(np.float32) - 1024)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(CaseError, match="file not found"):
        load_image(tmp_path / "absent.nrrd")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"NRRD0004\nthis is not a valid header\n")
    with pytest.raises(CaseError, match="cannot read as an image") as info:
        load_image(junk)
    assert str(junk) in str(info.value)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkInt16), str(flat))
    with pytest.raises(CaseError, match="expected a 3-D image, got 2-D"):
        load_image(flat)
