"""The nnU-Net side of bench_realdata without nnU-Net: the reorientation that gives it one storage
order and brings its predictions back, the skipped column, and the headline's comparison."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bench import bench_realdata, realdata_nnunet
from tests.conftest import make_ct, save_nifti


def _lps_scan():
    """The tiny CT stored L-P-S with its first and third axes swapped (an oblique-free, odd order):
    (image, label, affine) with the voxel axes (k, j, i) of make_ct."""
    image, label, affine = make_ct(shape=(9, 7, 5), spacing=(0.8, 0.9, 3.0))
    image, label = image.transpose(2, 1, 0), label.transpose(2, 1, 0)
    turned = np.zeros((4, 4))
    # voxel axis 0 runs towards S (3 mm), axis 1 towards P (0.9 mm), axis 2 towards L (0.8 mm)
    turned[2, 0], turned[1, 1], turned[0, 2], turned[3, 3] = 3.0, -0.9, -0.8, 1.0
    turned[:3, 3] = (10.0, 20.0, -30.0)
    return image, label, turned


def test_to_orientation_keeps_every_voxel_at_its_position_in_mm(tmp_path):
    image, _, affine = _lps_scan()
    img = nib.load(str(save_nifti(tmp_path / "ct.nii.gz", image, affine)))
    ras = realdata_nnunet.to_orientation(img, ("R", "A", "S"))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert ras.shape == (image.shape[2], image.shape[1], image.shape[0])
    assert ras.get_data_dtype() == np.int16
    out = np.asarray(ras.dataobj)
    # Every voxel of the source lands on the voxel of the result at the same world position.
    inverse = np.linalg.inv(ras.affine)
    for index in [(0, 0, 0), (4, 6, 8), (2, 3, 1), (1, 5, 7)]:
        world = affine @ np.array([*index, 1.0])
        target = np.rint(inverse @ world)[:3].astype(int)
        assert out[tuple(target)] == image[index]


def test_onto_grid_brings_a_reoriented_segmentation_back_onto_its_reference(tmp_path):
    _, label, affine = _lps_scan()
    ref = save_nifti(tmp_path / "ref.nii.gz", label, affine)
    pred = tmp_path / "pred_ras.nii.gz"
    nib.save(realdata_nnunet.to_orientation(nib.load(str(ref))), str(pred))
    back = realdata_nnunet.onto_grid(pred, ref, tmp_path / "back.nii.gz")
    assert bench_realdata.score(back, ref, {1: "a", 2: "b"}) == {"a": {"dice": 1.0, "hd95_mm": 0.0},
                                                                 "b": {"dice": 1.0, "hd95_mm": 0.0}}
    np.testing.assert_array_equal(np.asarray(nib.load(str(back)).dataobj), label)


def test_onto_grid_refuses_a_segmentation_of_another_scan(tmp_path):
    _, label, affine = _lps_scan()
    ref = save_nifti(tmp_path / "ref.nii.gz", label, affine)
    moved = affine.copy()
    moved[:3, 3] += 3.0
    other = save_nifti(tmp_path / "other.nii.gz", label, moved)
    with pytest.raises(AssertionError, match="not on the grid"):
        realdata_nnunet.onto_grid(other, ref, tmp_path / "back.nii.gz")


def test_to_orientation_rejects_codes_that_are_not_three_axes(tmp_path):
    image, _, affine = make_ct()
    img = nib.load(str(save_nifti(tmp_path / "ct.nii.gz", image, affine)))
    for codes in [("R", "L", "S"), ("R", "A"), ("X", "A", "S")]:
        with pytest.raises(ValueError, match="codes"):
            realdata_nnunet.to_orientation(img, codes)


def test_nnunet_column_is_skipped_without_its_python(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_BENCH_NNUNET_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    assert realdata_nnunet.default_python() == tmp_path / "no-venv" / "bin" / "python"
    result = bench_realdata._nnunet(tmp_path, {}, 0.1)
    assert set(result) == {"skipped"} and "setup_nnunet.sh" in result["skipped"]


def _side(dcmqi: float, venous: list[float], kidney_ml: float = 0.0) -> dict:
    names = ["liver", "spleen", "kidney_right", "kidney_left"]
    return {"dcmqi_liver": {"liver": {"dice": dcmqi, "hd95_mm": 1.0}},
            "ts_venous": {n: {"dice": d, "hd95_mm": 1.0} for n, d in zip(names, venous)},
            "absent_fp_ml": {"ts_cropped": {"kidney_right": kidney_ml, "kidney_left": 0.0},
                             "sts_extremity": {n: 1.0 for n in names}}}


def test_headline_compares_ours_with_each_recipe_that_ran():
    result = {"ours": _side(0.9, [0.9, 0.8, 0.7, 0.6], 2.5), "monai": _side(0.95, [0.8, 0.8, 0.8, 0.5]),
              "nnunet": _side(0.5, [0.95, 0.5, 0.5, 0.7])}
    result["ours"].update(absent_flagged="3/4", present_flagged="0/7")  # the review list's calls (ours only)
    head = bench_realdata._headline(result)
    assert head["absent_fp_ml"] == 6.5 and head["absent_fp_ml_nnunet"] == 4.0
    assert (head["absent_flagged"], head["present_flagged"]) == ("3/4", "0/7")
    assert head["classes_behind_monai"] == ["dcmqi_liver:liver", "ts_venous:kidney_right"]
    assert head["classes_behind_nnunet"] == ["ts_venous:liver", "ts_venous:kidney_left"]
    assert head["liver_dice_dcmqi_nnunet"] == 0.5 and head["liver_dice_venous_nnunet"] == 0.95
    assert head["mean_dice_venous"] == 0.75 and head["mean_dice_venous_nnunet"] == pytest.approx(0.6625)
    result["nnunet"] = {"skipped": "no venv"}
    head = bench_realdata._headline(result)
    assert "classes_behind_nnunet" not in head and head["classes_behind_monai"]
