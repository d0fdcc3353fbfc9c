"""Patch sampling: shapes, foreground oversampling, padding of small slices, neighbouring slices."""

from __future__ import annotations

import numpy as np
import pytest

from unet_pipeline.data import PatchSampler, TrainingCase, stack_neighbours


def _case(n_z=5, shape=(20, 24), pad=-2.0):
    image = np.arange(n_z, dtype=np.float32)[:, None, None] * np.ones((n_z, *shape), np.float32)  # value = z
    label = np.zeros((n_z, *shape), np.uint8)
    label[3, 8:10, 5:7] = 2  # one small object of class 2 on slice 3 only
    classes = [[2] if z == 3 else [] for z in range(n_z)]
    return TrainingCase("c", image, label, None, classes, pad)


def test_shapes_and_dtypes():
    sampler = PatchSampler([_case()], (16, 16), rng=np.random.default_rng(0))
    image, label, weight = sampler.sample(6)
    assert image.shape == (6, 1, 16, 16) and image.dtype == np.float32
    assert label.shape == (6, 16, 16) and label.dtype == np.int64 and weight is None


def test_foreground_fraction_one_always_hits_the_class():
    sampler = PatchSampler([_case()], (8, 8), foreground_fraction=1.0, rng=np.random.default_rng(1))
    for _ in range(20):
        image, label, _ = sampler.sample(4)
        assert (label == 2).any(axis=(1, 2)).all()
        assert np.all(image[:, 0] == 3.0)  # drawn from slice 3, the only one with the class


def test_patch_larger_than_the_slice_is_padded():
    sampler = PatchSampler([_case(shape=(6, 7), pad=-2.0)], (16, 16), foreground_fraction=0.0,
                           rng=np.random.default_rng(2))
    image, label, _ = sampler.sample(3)
    assert image.shape == (3, 1, 16, 16)
    assert (image == -2.0).sum(axis=(1, 2, 3)).min() == 16 * 16 - 6 * 7  # exactly the outside is padding
    assert label.max() <= 2


def test_stack_neighbours_repeats_edges():
    vol = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    assert stack_neighbours(vol, 0, 3)[:, 0, 0].tolist() == [0, 0, 1]
    assert stack_neighbours(vol, 3, 3)[:, 0, 0].tolist() == [2, 3, 3]
    assert stack_neighbours(vol, 2, 5)[:, 0, 0].tolist() == [0, 1, 2, 3, 3]
    assert stack_neighbours(vol, 1, 1).shape == (1, 2, 2)


def test_2_5d_patches_have_k_channels():
    sampler = PatchSampler([_case()], (8, 8), in_slices=3, foreground_fraction=1.0, rng=np.random.default_rng(3))
    image, _, _ = sampler.sample(2)
    assert image.shape == (2, 3, 8, 8)
    assert image[0, :, 0, 0].tolist() == [2.0, 3.0, 4.0]


@pytest.mark.parametrize("kwargs,match", [({"foreground_fraction": 1.5}, "foreground_fraction"),
                                          ({"in_slices": 2}, "in_slices")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchSampler([_case()], (8, 8), rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match="at least one"):
        PatchSampler([], (8, 8), rng=np.random.default_rng(0))
