"""Patch sampling: shapes, foreground oversampling, padding of small slices, neighbouring slices."""

from __future__ import annotations

import numpy as np
import pytest

from unet_pipeline.train.sampler import PatchSampler, TrainingCase
from unet_pipeline.preprocess.slice_index import stack_neighbours


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


def _weighted_case(seed=0):
    case = _case(n_z=6, shape=(20, 24))
    case.weight = np.random.default_rng(seed).random(case.label.shape).astype(np.float16)
    return case


def _sequence(seed, n, batch_size=3, **stream):
    """``n`` batches (as numpy) and the RNG state after each, from a BatchStream."""
    from unet_pipeline.train.sampler import BatchStream

    sampler = PatchSampler([_weighted_case()], (12, 12), foreground_fraction=0.5, rng=np.random.default_rng(seed))
    with BatchStream(sampler, batch_size, **stream) as batches:
        out = [(b.image.numpy(), b.label.numpy(), b.weight.numpy(), b.rng_state) for _, b in zip(range(n), batches)]
    return out


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetch_gives_the_same_batches_in_the_same_order(depth):
    n = 12
    direct = PatchSampler([_weighted_case()], (12, 12), foreground_fraction=0.5, rng=np.random.default_rng(7))
    plain = _sequence(7, n, prefetch=False)
    ahead = _sequence(7, n, prefetch=True, depth=depth)
    assert len(plain) == len(ahead) == n
    for i, (p, a) in enumerate(zip(plain, ahead)):
        image, label, weight = direct.sample(3)
        assert direct.rng.bit_generator.state == p[3] == a[3], i
        for ref, x, y in zip((image, label, weight), p[:3], a[:3]):
            np.testing.assert_array_equal(ref, x)
            np.testing.assert_array_equal(ref, y)
    assert plain[0][0].dtype == np.float32 and plain[0][1].dtype == np.int64


def test_prefetch_rng_state_is_that_of_the_batches_handed_out():
    """The thread draws ahead, yet ``rng_state`` is the state after the last batch used: resuming from it
    gives the next batch, not one after the prefetched ones."""
    import time

    from unet_pipeline.train.sampler import BatchStream

    rng = np.random.default_rng(11)
    start = rng.bit_generator.state
    sampler = PatchSampler([_weighted_case()], (12, 12), rng=rng)
    with BatchStream(sampler, 2, prefetch=True, depth=3) as batches:
        assert batches.rng_state == start  # nothing handed out yet
        first = [next(batches) for _ in range(2)]
        time.sleep(0.2)  # let the thread fill its queue
        state = batches.rng_state
        assert state == first[-1].rng_state and state != sampler.rng.bit_generator.state  # the thread is ahead
        third = next(batches)
    again = PatchSampler([_weighted_case()], (12, 12), rng=np.random.default_rng(0))
    again.rng.bit_generator.state = state
    image, label, _ = again.sample(2)
    np.testing.assert_array_equal(third.image.numpy(), image)
    np.testing.assert_array_equal(third.label.numpy(), label)


@pytest.mark.parametrize("prefetch", [False, True])
def test_stream_ends_after_count_and_without_weights_gives_none(prefetch):
    from unet_pipeline.train.sampler import BatchStream

    sampler = PatchSampler([_case()], (8, 8), rng=np.random.default_rng(0))
    with BatchStream(sampler, 2, count=3, prefetch=prefetch) as batches:
        got = list(batches)
    assert len(got) == 3 and all(b.weight is None for b in got)
    assert tuple(got[0].image.shape) == (2, 1, 8, 8)
    if not prefetch:  # drawing in the consumer's thread: all of it is time the step waited
        assert batches.wait_seconds > 0.0


def test_stream_counts_the_time_the_consumer_waits():
    """A sampler slower than the consumer: most of the consumer's time is counted as waiting."""
    import time

    from unet_pipeline.train.sampler import BatchStream

    class Slow(PatchSampler):
        def sample(self, n):
            time.sleep(0.05)
            return super().sample(n)

    sampler = Slow([_case()], (8, 8), rng=np.random.default_rng(0))
    with BatchStream(sampler, 2, count=4, prefetch=True) as batches:
        list(batches)
    assert batches.wait_seconds >= 0.15  # 4 draws of 0.05 s, at most one of them ahead of the consumer


def test_prefetch_errors_reach_the_consumer_and_close_stops_the_thread():
    from unet_pipeline.train.sampler import BatchStream

    class Broken(PatchSampler):
        calls = 0

        def sample(self, batch_size):
            Broken.calls += 1
            if Broken.calls == 2:
                raise OSError("disk gone")
            return super().sample(batch_size)

    sampler = Broken([_case()], (8, 8), rng=np.random.default_rng(0))
    batches = BatchStream(sampler, 2, prefetch=True)
    next(batches)
    with pytest.raises(OSError, match="disk gone"):
        next(batches)
    batches.close()
    endless = BatchStream(PatchSampler([_case()], (8, 8), rng=np.random.default_rng(0)), 2, prefetch=True, depth=1)
    next(endless)
    thread = endless._ahead.thread
    endless.close()
    assert not thread.is_alive()
