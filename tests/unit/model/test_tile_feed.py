"""TileFeed: the tile batches of inference, cut in a producer thread or in the loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from unet_pipeline.model.tile_feed import TileFeed


def _padded():
    return np.arange(2 * 1 * 10 * 12, dtype=np.float32).reshape(2, 1, 10, 12)


STARTS = [(0, 0, 0), (0, 0, 4), (0, 2, 4), (1, 0, 0), (1, 2, 4)]


@pytest.mark.parametrize("thread", [False, True])
def test_batches_hold_the_tiles_in_order(thread):
    padded = _padded()
    with TileFeed(padded, STARTS, (8, 8), 2, thread=thread) as feed:
        batches = list(feed)
    assert [len(w) for _, w in batches] == [2, 2, 1]
    assert [s for _, w in batches for s in w] == STARTS
    for tiles, where in batches:
        assert tiles.dtype == torch.float32 and tiles.shape[1:] == (1, 8, 8) and tiles.is_contiguous()
        for k, (s, i, j) in enumerate(where):
            np.testing.assert_array_equal(tiles[k].numpy(), padded[s, :, i:i + 8, j:j + 8])


def test_an_error_in_the_producer_reaches_the_consumer():
    class Broken(np.ndarray):
        def __getitem__(self, key):
            raise RuntimeError("read failed (test)")

    with TileFeed(_padded().view(Broken), STARTS, (8, 8), 2, thread=True) as feed:
        with pytest.raises(RuntimeError, match="read failed"):
            list(feed)


def test_close_stops_the_producer_early():
    before = threading.active_count()
    feed = TileFeed(_padded(), STARTS * 50, (8, 8), 1, thread=True, depth=1)
    next(iter(feed))
    feed.close()
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="batch_size"):
        TileFeed(_padded(), STARTS, (8, 8), 0)


def test_read_ahead_ends_for_good_and_checks_its_depth():
    from unet_pipeline.model.read_ahead import ReadAhead

    with ReadAhead(iter(range(3)), depth=1) as ahead:
        assert list(ahead) == [0, 1, 2]
        with pytest.raises(StopIteration):
            next(ahead)  # again: the end is remembered, nothing blocks
    with pytest.raises(ValueError, match="depth"):
        ReadAhead(iter(()), depth=0)
