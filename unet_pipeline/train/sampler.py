"""Training data: preprocessed cases behind memory maps, and the patch sampler.

Batches are drawn in the training process itself from memory-mapped ``.npy`` slices (no
DataLoader workers, so none can die on an HPC node); each batch is a few small reads, done a
batch or two ahead by one background thread (:class:`BatchStream`, into pinned memory when
training on CUDA) so that the next batch is ready when the device is. The augmentation then
runs batched on the training device (:mod:`unet_pipeline.train.augment`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import load_json
from ..model.read_ahead import ReadAhead
from ..preprocess.slice_index import load_slice_index
from ..preprocess.slice_index import stack_neighbours
from ..preprocess.transform import air_value

__all__ = ["TrainingCase", "PatchSampler", "BatchStream", "Batch", "load_training_cases"]


@dataclass
class TrainingCase:
    """One preprocessed case opened for sampling.

    Attributes
    ----------
    image
        ``(Z, Y, X)`` float32 z-scores (memory map).
    label
        ``(Z, Y, X)`` uint8 class indices (memory map).
    weight
        ``(Z, Y, X)`` float16 paper weight map (memory map) or None.
    classes_present
        Per slice, the foreground classes it holds.
    spacing_mm
        ``(z, y, x)`` spacing of the preprocessed grid in mm (``meta.json``'s ``resampled_spacing_mm``).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None
    classes_present: list[list[int]]
    pad_value: float
    spacing_mm: tuple[float, ...] | None = None


def load_training_cases(pairs: Sequence[tuple[str | Path, str | Path]], *, need_weights: bool = False,
                        in_memory: bool = False) -> list[TrainingCase]:
    """Open ``(preprocessed_dir, slice_dir)`` pairs. ``in_memory`` loads arrays into RAM (small cohorts)."""
    cases = []
    mode = None if in_memory else "r"
    for pre_dir, slice_dir in pairs:
        pre_dir, slice_dir = Path(pre_dir), Path(slice_dir)
        meta = load_json(pre_dir / "meta.json")
        index = load_slice_index(slice_dir)
        weight = None
        if need_weights:
            if not index.get("weight_map"):
                raise ValueError(f"{slice_dir}: no weight map stored; the slice stage writes weight maps when "
                                 "loss.name is weighted_ce (rerun it)")
            weight = np.load(slice_dir / "weightmap.npy", mmap_mode=mode)
        image = np.load(pre_dir / "image.npy", mmap_mode=mode)
        intensity = meta["intensity"]
        pad = air_value(intensity)
        cases.append(TrainingCase(meta["case_id"], image, np.load(pre_dir / "label.npy", mmap_mode=mode), weight,
                                  index["classes_present"], pad,
                                  tuple(float(v) for v in meta.get("resampled_spacing_mm") or ()) or None))
    return cases


class PatchSampler:
    """Draw training patches with foreground oversampling.

    A share ``foreground_fraction`` of the patches is centred (with jitter) on a random voxel of
    a random foreground class, drawn from the slices that hold that class; the rest come from a
    uniformly random slice at a random position. Patches larger than a slice are padded with the
    case's air value (image) and background (label).

    Parameters
    ----------
    cases
        The training cases.
    patch_size
        ``(H, W)`` in pixels.
    in_slices
        Channels per patch (1 = 2-D; k odd = 2.5-D, k neighbouring slices).
    foreground_fraction
        Share of patches centred on foreground.
    rng
        numpy Generator (its state is saved in checkpoints).
    num_classes
        ``K`` (background included): every label patch drawn is checked to hold class indices in
        ``[0, K)``, on the host, so that the loss need not check them on the device (a
        device-to-host synchronisation per check). None: no check.
    """

    def __init__(self, cases: Sequence[TrainingCase], patch_size: Sequence[int], *, in_slices: int = 1,
                 foreground_fraction: float = 0.33, rng: np.random.Generator, num_classes: int | None = None) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one training case")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if in_slices < 1 or in_slices % 2 == 0:
            raise ValueError(f"in_slices must be a positive odd number, got {in_slices}")
        self.cases = list(cases)
        self.patch = (int(patch_size[0]), int(patch_size[1]))
        self.in_slices = in_slices
        self.fg_fraction = foreground_fraction
        self.rng = rng
        self.num_classes = num_classes
        self._all_slices = [(ci, z) for ci, c in enumerate(self.cases) for z in range(c.image.shape[0])]
        self._by_class: dict[int, list[tuple[int, int]]] = {}
        for ci, c in enumerate(self.cases):
            for z, present in enumerate(c.classes_present):
                for k in present:
                    self._by_class.setdefault(int(k), []).append((ci, z))
        self._classes = sorted(self._by_class)

    def _window(self, centre: int, size: int, length: int) -> int:
        """Top-left start so that a window of ``size`` centred at ``centre`` overlaps the slice."""
        start = centre - size // 2
        lo, hi = min(0, length - size), max(0, length - size)
        return int(np.clip(start, lo, hi))

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Draw a batch.

        Returns
        -------
        image
            ``(N, in_slices, H, W)`` float32 z-scores.
        label
            ``(N, H, W)`` int64 class indices.
        weight
            ``(N, H, W)`` float32 weight map, or None when the cases have none.
        """
        h, w = self.patch
        images = np.empty((batch_size, self.in_slices, h, w), np.float32)
        labels = np.zeros((batch_size, h, w), np.int64)
        has_w = self.cases[0].weight is not None
        weights = np.ones((batch_size, h, w), np.float32) if has_w else None
        for b in range(batch_size):
            if self._classes and self.rng.random() < self.fg_fraction:
                k = self._classes[self.rng.integers(len(self._classes))]
                ci, z = self._by_class[k][self.rng.integers(len(self._by_class[k]))]
                lab = np.asarray(self.cases[ci].label[z])
                ys, xs = np.nonzero(lab == k)
                j = self.rng.integers(ys.size)
                cy = int(ys[j]) + int(self.rng.integers(-h // 4, h // 4 + 1))
                cx = int(xs[j]) + int(self.rng.integers(-w // 4, w // 4 + 1))
            else:
                ci, z = self._all_slices[self.rng.integers(len(self._all_slices))]
                _, ny, nx = self.cases[ci].image.shape
                cy, cx = int(self.rng.integers(ny)), int(self.rng.integers(nx))
            case = self.cases[ci]
            _, ny, nx = case.image.shape
            y0, x0 = self._window(cy, h, ny), self._window(cx, w, nx)
            # Source and destination windows (the patch may stick out of a small slice).
            sy0, sx0 = max(y0, 0), max(x0, 0)
            sy1, sx1 = min(y0 + h, ny), min(x0 + w, nx)
            dy0, dx0 = sy0 - y0, sx0 - x0
            dy1, dx1 = dy0 + (sy1 - sy0), dx0 + (sx1 - sx0)
            images[b] = case.pad_value
            images[b, :, dy0:dy1, dx0:dx1] = stack_neighbours(case.image, z, self.in_slices)[:, sy0:sy1, sx0:sx1]
            labels[b, dy0:dy1, dx0:dx1] = case.label[z, sy0:sy1, sx0:sx1]
            if self.num_classes is not None:
                _check_label_patch(labels[b], self.num_classes, case.case_id, z)
            if weights is not None and case.weight is not None:
                weights[b, dy0:dy1, dx0:dx1] = case.weight[z, sy0:sy1, sx0:sx1]
        return images, labels, weights


def _check_label_patch(label: np.ndarray, num_classes: int, case_id: str, z: int) -> None:
    """Raise if a ``(H, W)`` label patch of slice ``z`` of ``case_id`` holds a value outside ``[0, num_classes)``."""
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"case {case_id}, slice {z}: label values in [{lo}, {hi}], but class indices must lie in "
                         f"[0, {num_classes - 1}] for the plan's {num_classes} classes; rerun preprocessing")


class BatchStream:
    """The batches of a :class:`PatchSampler`, in order, optionally drawn ahead by one background thread.

    With ``prefetch`` a single thread (no worker processes) fills a bounded queue of ``depth``
    batches while the training step runs; without it each batch is drawn when asked for. Both
    give exactly the same batches in the same order: the sampler's generator is consumed by one
    thread only, in the same order. Each batch carries ``rng_state``, the sampler generator's
    state right after drawing it; :attr:`rng_state` is that of the last batch handed out (the
    state a checkpoint must hold, not that of batches still waiting in the queue). Do not use the
    sampler's generator elsewhere while a prefetching stream is open.

    Parameters
    ----------
    sampler
        The patch sampler.
    batch_size
        Patches per batch.
    count
        Batches to draw in all (None = no end); the stream ends (``StopIteration``) after them.
    prefetch
        Draw ahead in a background thread.
    depth
        Batches kept ready (prefetch only).
    pin_memory
        Return page-locked (pinned) tensors, so ``.to("cuda", non_blocking=True)`` copies
        asynchronously (use when training on CUDA).

    Yields
    ------
    Batch
        ``image``, ``label``, ``weight`` as CPU ``torch`` tensors (``weight`` may be None) and
        ``rng_state``.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, *, count: int | None = None, prefetch: bool = True,
                 depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.count = count
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.rng_state: dict = sampler.rng.bit_generator.state  # before any batch is handed out
        self._drawn = 0
        #: Seconds the consumer spent waiting for batches (drawing them, without prefetch); the
        #: training log's ``data_wait_share`` is this time over the epoch's.
        self.wait_seconds = 0.0
        self._ahead = ReadAhead(self._batches(), depth=depth, name="batch-prefetch") if prefetch else None

    def _draw(self) -> Batch:
        import torch

        image, label, weight = self.sampler.sample(self.batch_size)
        state = self.sampler.rng.bit_generator.state
        tensors = [torch.from_numpy(a) if a is not None else None for a in (image, label, weight)]
        if self.pin_memory:
            tensors = [t.pin_memory() if t is not None else None for t in tensors]
        return Batch(*tensors, rng_state=state)

    def _batches(self) -> Iterator[Batch]:
        """The ``count`` batches (endless when None), drawn one after another."""
        for _ in range(self.count) if self.count is not None else itertools.count():
            yield self._draw()

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self.count is not None and self._drawn >= self.count:
            raise StopIteration
        start = time.perf_counter()
        batch = self._draw() if self._ahead is None else next(self._ahead)
        self.wait_seconds += time.perf_counter() - start
        self._drawn += 1
        self.rng_state = batch.rng_state
        return batch

    def close(self) -> None:
        """Stop the background thread (the batches still queued are dropped)."""
        if self._ahead is not None:
            self._ahead.close()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Batch:
    """One training batch of :class:`BatchStream` (CPU tensors) and the sampler's RNG state after it."""

    image: Any
    label: Any
    weight: Any
    rng_state: dict
