"""Batches of inference tiles cut by a producer thread, handed over in pinned memory for a GPU.

:func:`unet_pipeline.model.tiling.predict_slices` cuts its tiles out of the padded slices on the
host. :class:`TileFeed` does that in one background thread, a batch or two ahead of the forward
pass, and (for a CUDA device) copies each batch into page-locked (pinned) memory, so that
``tiles.to("cuda", non_blocking=True)`` is an asynchronous copy that overlaps the running
kernels. Without the thread the batches are cut when asked for; both give the same batches in
the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .read_ahead import ReadAhead

__all__ = ["TileFeed"]

#: A tile's place: (slice index in the stack, top row, left column) of its output tile, in px.
TileStart = tuple[int, int, int]


class TileFeed:
    """The tiles of ``starts`` in batches of ``batch_size``, as CPU tensors.

    Parameters
    ----------
    padded
        ``(n, C, Y, X)`` float32 slices, already padded (and mirror-padded by the margin).
    starts
        ``(s, i, j)`` per tile: slice ``s``, top-left ``(i, j)`` in ``padded`` (px).
    tile
        ``(H, W)`` of an input tile in px (the output tile plus twice the margin).
    batch_size
        Tiles per batch (>= 1); the last batch may hold fewer.
    thread
        Cut the batches in one background thread, ``depth`` batches ahead.
    pin_memory
        Return page-locked tensors (for a CUDA device only: pinning needs CUDA).
    depth
        Batches kept ready (thread only).

    Yields
    ------
    tiles, where
        ``(B, C, H, W)`` float32 CPU tensor (contiguous, NCHW) and the ``B`` starts it holds.
    """

    def __init__(self, padded: np.ndarray, starts: Sequence[TileStart], tile: tuple[int, int], batch_size: int, *,
                 thread: bool = False, pin_memory: bool = False, depth: int = 2) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.padded = padded
        self.starts = list(starts)
        self.tile = (int(tile[0]), int(tile[1]))
        self.batch_size = int(batch_size)
        self.pin_memory = bool(pin_memory)
        self._ahead: ReadAhead | None = ReadAhead(self._batches(), depth=depth, name="tile-feed") if thread else None

    def _batch(self, b0: int) -> tuple[torch.Tensor, list[TileStart]]:
        """Batch starting at tile ``b0``: cut, stacked and (optionally) pinned."""
        h, w = self.tile
        where = self.starts[b0:b0 + self.batch_size]
        tiles = torch.from_numpy(np.stack([self.padded[s, :, i:i + h, j:j + w] for s, i, j in where]))
        return (tiles.pin_memory() if self.pin_memory else tiles), where

    def _batches(self) -> Iterator[tuple[torch.Tensor, list[TileStart]]]:
        for b0 in range(0, len(self.starts), self.batch_size):
            yield self._batch(b0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[TileStart]]]:
        return self._batches() if self._ahead is None else self._ahead

    def close(self) -> None:
        """Stop the producer thread (batches still queued are dropped)."""
        if self._ahead is not None:
            self._ahead.close()

    def __enter__(self) -> TileFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
