"""Volumetry and QC flags of segmentations with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_pipeline.evaluate.volumes import VOLUME_COLUMNS, case_volumes


def test_volumes_hu_and_flags():
    seg = np.zeros((10, 12, 14), np.uint8)
    seg[2:6, 2:6, 2:6] = 1          # 64 voxels, inside
    seg[0:2, 8:10, 8:10] = 2        # touches the first slice
    seg[5:7, 8:10, 8:10] = 2        # a second component of class 2
    image = np.full(seg.shape, -100.0, np.float32)
    image[seg == 1] = 60.0
    rows = case_volumes(seg, image, (2.0, 1.0, 0.5), {1: "liver", 2: "spleen", 3: "kidney"}, case_id="c1")
    liver, spleen, kidney = rows
    assert set(liver) == set(VOLUME_COLUMNS)
    assert liver["volume_ml"] == pytest.approx(64 * 1.0 / 1000)
    assert liver["hu_mean"] == pytest.approx(60.0) and liver["hu_std"] == pytest.approx(0.0)
    assert liver["n_components"] == 1 and liver["qc_flags"] == ""
    assert spleen["n_components"] == 2 and spleen["touches_border"]
    assert spleen["qc_flags"] == "fragmented;touches_border" and spleen["hu_p50"] == pytest.approx(-100.0)
    assert kidney["empty"] and kidney["qc_flags"] == "empty" and math.isnan(kidney["hu_mean"])
    assert kidney["case"] == "c1" and kidney["volume_ml"] == 0.0


def test_diagonal_neighbours_are_one_component():
    seg = np.zeros((5, 5, 5), np.uint8)
    seg[1, 1, 1] = seg[2, 2, 2] = 1
    (row,) = case_volumes(seg, np.zeros(seg.shape), (1, 1, 1), {1: "a"})
    assert row["n_components"] == 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs from image shape"):
        case_volumes(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), (1, 1, 1), {1: "a"})


def test_bounding_box_of_a_mask():
    from unet_pipeline.evaluate.volumes import _bounding_box

    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 5, 6] = True
    assert _bounding_box(mask) == (slice(1, 5), slice(2, 6), slice(3, 7))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("end", ["first", "last"])
def test_touches_border_on_every_face_and_not_one_voxel_inside(axis, end):
    shape = (8, 9, 10)
    seg = np.zeros(shape, np.uint8)
    index = [slice(3, 5)] * 3
    index[axis] = slice(0, 2) if end == "first" else slice(shape[axis] - 2, shape[axis])
    seg[tuple(index)] = 1
    inside = np.zeros(shape, np.uint8)
    index[axis] = slice(1, 3) if end == "first" else slice(shape[axis] - 3, shape[axis] - 1)
    inside[tuple(index)] = 1
    (row,) = case_volumes(seg, np.zeros(shape), (1, 1, 1), {1: "a"})
    (row_inside,) = case_volumes(inside, np.zeros(shape), (1, 1, 1), {1: "a"})
    assert row["touches_border"] and not row_inside["touches_border"]
