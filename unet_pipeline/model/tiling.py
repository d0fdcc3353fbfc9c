"""Tiled slice-wise inference with Gaussian blending.

Each slice is covered by tiles of the training patch size that overlap by ``overlap`` (a share of
the tile). Tiles from several slices are batched through the network together; the softmax of
each tile is weighted by a Gaussian importance map (sigma = ``sigma_scale`` x tile size, so the
tile centre counts more than its border) and accumulated, then divided by the summed weights.

For the paper-faithful unpadded U-Net the overlap-tile strategy is used: each output tile is
predicted from an input tile enlarged by the network's margin on every side, taken from the
slice mirrored at its borders, so every output pixel sees its full context.

Memory is bounded by slices: volumes are processed ``chunk_slices`` at a time and only the
chunk's ``(n, K, Y, X)`` float32 probabilities are held.

On a GPU, the tiles are cut on the host by a producer thread and handed over in pinned memory
(:mod:`unet_pipeline.model.tile_feed`); a CUDA out-of-memory error halves the tile batch and
moves the stitching to the host for the rest of the volume (:class:`TileBudget`), instead of
failing the case. Mixed precision is a predictor wrapper (:class:`Autocast`), as are mirror
test-time augmentation (:class:`unet_pipeline.infer.tta.MirrorTTA`) and the ensemble of folds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocess.slice_index import stack_neighbours

__all__ = ["gaussian_importance", "tile_starts", "predict_slices", "iter_volume_probabilities",
           "class_argmax", "resize_probabilities", "Autocast", "with_precision", "TileBudget"]

log = logging.getLogger(__name__)

#: Largest slice (pixels) predicted in one pass with ``whole_slices``; larger ones are tiled. The
#: activations of a 1024 x 1024 pass of the shipped network take about 1 GB (float32).
WHOLE_SLICE_MAX_PX = 1024 * 1024


@lru_cache(maxsize=8)
def _gaussian(h: int, w: int, sigma_scale: float) -> np.ndarray:
    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        return np.exp(-0.5 * (x / (sigma_scale * n)) ** 2)

    g = np.outer(axis(h), axis(w))
    # Floor of 1e-3 (as MONAI's sliding-window Gaussian): tile borders still count a little.
    return np.maximum(g / g.max(), 1e-3).astype(np.float32)


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian importance map ``(H, W)`` float32, max 1 at the centre, strictly positive everywhere."""
    return _gaussian(int(patch[0]), int(patch[1]), float(sigma_scale))


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` overlap.

    The first tile starts at 0 and the last ends at ``length``; starts are spread evenly.
    ``length`` must be >= ``tile`` (the caller pads smaller slices).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    n = int(np.ceil((length - tile) / step)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of inference at ``precision`` on ``device``; None: float32 throughout.

    ``"auto"``: float16 on a GPU; bfloat16 on a CPU with AMX bfloat16 tiles (Intel Sapphire
    Rapids and later), where oneDNN runs the convolutions about 2.5x faster than in float32;
    float32 on other CPUs (without AMX, bfloat16 convolutions are slower, not faster).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"inference precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and _cpu_has_amx_bf16() else None
    return None if precision == "float32" else getattr(torch, precision)


def _cpu_has_amx_bf16() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported())
    except Exception:  # private helpers: absent in another torch version, so no bfloat16 by default
        return False


class Autocast:
    """Predictor wrapper: runs ``predictor`` under :func:`torch.autocast` and returns float32.

    Called on ``(N, C, H, W)`` float32 input, returns the wrapped predictor's ``(N, K, H', W')``
    output cast to float32 (logits or log-probabilities, whatever the wrapped one returns).
    Wraps a network, an :class:`~unet_pipeline.infer.predictor.Ensemble` or a
    :class:`~unet_pipeline.infer.tta.MirrorTTA` alike.
    """

    def __init__(self, predictor: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype,
                 device_type: str) -> None:
        self.predictor = predictor
        self.dtype = dtype
        self.device_type = device_type

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.predictor(x).float()

    def __repr__(self) -> str:
        return f"Autocast({self.predictor!r}, dtype={self.dtype}, device_type={self.device_type!r})"


def with_precision(predictor: Callable[[torch.Tensor], torch.Tensor], precision: str,
                   device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predictor`` wrapped in :class:`Autocast` at ``precision`` (see :func:`autocast_dtype`),
    or ``predictor`` itself where that means float32 throughout."""
    device = torch.device(device)
    dtype = autocast_dtype(precision, device)
    return predictor if dtype is None else Autocast(predictor, dtype, device.type)


@dataclass
class TileBudget:
    """Tiles per forward pass, and where the tiles are stitched; shared by the chunks of a volume.

    A CUDA out-of-memory error in a forward pass halves ``batch_size`` for the rest of the volume
    and moves the stitching (the ``(n, K, Y, X)`` float32 sums) from the device to the host; a
    pass that runs out of memory with one tile, already stitching on the host, re-raises.
    """

    batch_size: int
    stitch_on_host: bool = False

    @classmethod
    def default(cls, batch_size: int | None, device: torch.device) -> TileBudget:
        """``batch_size`` tiles a pass; None or < 1: 8 on a GPU, 4 on the CPU."""
        if not batch_size or batch_size < 1:
            batch_size = 8 if device.type == "cuda" else 4
        return cls(int(batch_size))

    def shrink(self, device: torch.device) -> None:
        """After an out-of-memory error: halve the batch and stitch on the host from now on."""
        if self.batch_size == 1 and self.stitch_on_host:
            raise torch.cuda.OutOfMemoryError(f"out of memory on {device} with one tile a pass, stitching on "
                                              "the host; use a smaller patch_size, or device: cpu")
        old = self.batch_size
        self.batch_size = max(1, self.batch_size // 2)
        self.stitch_on_host = True
        torch.cuda.empty_cache()
        log.warning("out of memory on %s with %d tile(s) a pass: %d from now on, stitched on the host",
                    device, old, self.batch_size)


class _Stitcher:
    """Gaussian-weighted sums of tile probabilities, ``(n, K, Y, X)`` float32, on the device or the host."""

    def __init__(self, shape: tuple[int, int, int, int], weight: np.ndarray, device: torch.device,
                 budget: TileBudget) -> None:
        self.shape = shape
        self.weight_np = weight
        self.budget = budget
        self.device = torch.device("cpu") if budget.stitch_on_host else device
        try:
            self._allocate()
            return
        except torch.cuda.OutOfMemoryError:
            pass  # handled below, once the error is gone
        self.acc = self.norm = self.weight = None
        budget.shrink(device)
        self.device = torch.device("cpu")
        self._allocate()

    def _allocate(self) -> None:
        n, k, y, x = self.shape
        self.weight = torch.from_numpy(self.weight_np).to(self.device)
        self.acc = torch.zeros((n, k, y, x), dtype=torch.float32, device=self.device)
        self.norm = torch.zeros((n, 1, y, x), dtype=torch.float32, device=self.device)

    def follow_budget(self) -> None:
        """Move the sums to the host once the budget says so (after an out-of-memory error)."""
        if self.budget.stitch_on_host and self.device.type != "cpu":
            self.device = torch.device("cpu")
            self.acc, self.norm, self.weight = (t.cpu() for t in (self.acc, self.norm, self.weight))

    def weighted(self, probs: torch.Tensor) -> torch.Tensor:
        """``(B, K, H, W)`` probabilities times the importance map, on the stitching device."""
        return probs.to(self.device) * self.weight

    def add(self, weighted: torch.Tensor, where: Sequence[tuple[int, int, int]]) -> None:
        """Add the tiles of :meth:`weighted` at their ``(s, i, j)`` starts."""
        th, tw = self.weight.shape
        for k, (s, i, j) in enumerate(where):
            self.acc[s, :, i:i + th, j:j + tw] += weighted[k]
            self.norm[s, :, i:i + th, j:j + tw] += self.weight

    def probabilities(self, crop: tuple[slice, slice]) -> np.ndarray:
        """The blended ``(n, K, Y, X)`` float32 probabilities, cropped to the slices' own size."""
        self.acc /= self.norm
        return self.acc[:, :, crop[0], crop[1]].float().cpu().numpy()


def _forward_tiles(predictor: Callable[[torch.Tensor], torch.Tensor], tiles: torch.Tensor,
                   where: Sequence[tuple[int, int, int]], device: torch.device, stitcher: _Stitcher,
                   budget: TileBudget) -> None:
    """Softmax of ``predictor`` on a host batch ``(B, C, H, W)`` of tiles, ``budget.batch_size`` at a
    time, added to ``stitcher``; an out-of-memory error shrinks the budget and retries the rest."""
    b0 = 0
    while b0 < len(where):
        b = budget.batch_size
        try:
            t = tiles[b0:b0 + b].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(predictor(t).float(), dim=1)
            if probs.shape[-2:] != stitcher.weight.shape:
                raise ValueError(f"model output tile {tuple(probs.shape[-2:])} != expected "
                                 f"{tuple(stitcher.weight.shape)}; check margin/patch size")
            weighted = stitcher.weighted(probs)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # handled below, once the error (and the activations it holds) is gone
        else:
            out_of_memory = False
        if out_of_memory:
            t = probs = None  # noqa: F841 (drop the references before the cache is emptied)
            budget.shrink(device)
            stitcher.follow_budget()
            continue
        stitcher.add(weighted, where[b0:b0 + b])
        b0 += b


@torch.inference_mode()
def predict_slices(model: Callable[[torch.Tensor], torch.Tensor], slices: np.ndarray, *, num_classes: int,
                   patch_size: Sequence[int], overlap: float = 0.5, batch_size: int | None = None,
                   device: torch.device | str = "cpu", sigma_scale: float = 0.125, margin: int = 0,
                   pad_value: float = 0.0, precision: str = "auto", whole_slices: bool = False,
                   prefetch: bool | None = None, budget: TileBudget | None = None) -> np.ndarray:
    """Softmax probabilities of a stack of slices by tiled inference.

    Parameters
    ----------
    model
        Network (or predictor wrapper: :class:`~unet_pipeline.infer.predictor.Ensemble`,
        :class:`~unet_pipeline.infer.tta.MirrorTTA`, :class:`Autocast`) mapping
        ``(N, C, H + 2m, W + 2m)`` float32 to ``(N, K, H, W)`` logits or log-probabilities
        (``m = margin``; 0 for padded networks).
    slices
        ``(n, C, Y, X)`` float32 network input (z-scores; C = neighbouring slices).
    num_classes
        ``K``, including background.
    patch_size
        Output tile ``(H, W)`` in pixels.
    batch_size
        Tiles per forward pass; None = 8 on a GPU, 4 on the CPU. Tiles go through the network
        channels-last (NHWC), the convolutions' fast layout on both (``bench/bench_forward.py``).
        A CUDA out-of-memory error halves it and moves the stitching to the host (:class:`TileBudget`).
    overlap
        Share of a tile overlapping its neighbour (0.5 = half a tile).
    margin
        Context added around each output tile (unpadded U-Net); taken from the mirrored slice.
    pad_value
        Image value used to pad slices smaller than a tile (air after normalisation).
    precision
        ``"float32"``, ``"float16"`` / ``"bfloat16"`` (autocast), or ``"auto"``: :func:`autocast_dtype`;
        applied by wrapping ``model`` in :class:`Autocast` (:func:`with_precision`).
    whole_slices
        Predict each slice in one pass (a tile as large as the slice, at least ``patch_size``)
        instead of overlapping tiles; padded networks only (``margin`` 0) and slices of at most
        :data:`WHOLE_SLICE_MAX_PX` pixels (memory), ignored otherwise.
        A slice of 1.5 x 1.5 tiles then costs 2.25 tiles' convolutions instead of 4 (overlap 0.5).
    prefetch
        Cut the tiles in a producer thread, into pinned memory for a CUDA device
        (:class:`~unet_pipeline.model.tile_feed.TileFeed`); None = on a CUDA device only.
    budget
        The :class:`TileBudget` to use and update, shared by the chunks of a volume (then it
        replaces ``batch_size``); None: a fresh one of ``batch_size``.

    Returns
    -------
    numpy.ndarray
        ``(n, K, Y, X)`` float32 probabilities (sum to 1 over K).
    """
    device = torch.device(device)
    budget = budget if budget is not None else TileBudget.default(batch_size, device)
    tiling = _Tiling(num_classes=num_classes, patch_size=(int(patch_size[0]), int(patch_size[1])), overlap=overlap,
                     sigma_scale=sigma_scale, margin=margin, pad_value=pad_value, precision=precision,
                     whole_slices=whole_slices, prefetch=prefetch)
    return _predict_slices(model, slices, budget, tiling, device)


@dataclass(frozen=True)
class _Tiling:
    """How :func:`predict_slices` cuts, runs and stitches the tiles (its parameters of the same names)."""

    num_classes: int
    patch_size: tuple[int, int]
    overlap: float
    sigma_scale: float
    margin: int
    pad_value: float
    precision: str
    whole_slices: bool
    prefetch: bool | None


def _predict_slices(model: Callable[[torch.Tensor], torch.Tensor], slices: np.ndarray, budget: TileBudget,
                    tiling: _Tiling, device: torch.device) -> np.ndarray:
    """:func:`predict_slices` with the tile ``budget`` of the volume the slices belong to."""
    from .tile_feed import TileFeed

    n, _, ny, nx = slices.shape
    th, tw = tiling.patch_size
    margin = tiling.margin
    if tiling.whole_slices and not margin and ny * nx <= WHOLE_SLICE_MAX_PX:
        th, tw = max(th, ny), max(tw, nx)
    # Pad small slices up to one tile, then mirror-pad by the margin for the overlap-tile strategy.
    py, px = max(0, th - ny), max(0, tw - nx)
    x = np.pad(slices, ((0, 0), (0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2)),
               constant_values=tiling.pad_value)
    if margin:
        x = np.pad(x, ((0, 0), (0, 0), (margin, margin), (margin, margin)), mode="symmetric")
    full_y, full_x = ny + py, nx + px
    starts = [(s, i, j) for s in range(n) for i in tile_starts(full_y, th, tiling.overlap)
              for j in tile_starts(full_x, tw, tiling.overlap)]
    stitcher = _Stitcher((n, tiling.num_classes, full_y, full_x), gaussian_importance((th, tw), tiling.sigma_scale),
                         device, budget)
    predictor = with_precision(model, tiling.precision, device)
    on_gpu = device.type == "cuda"
    with TileFeed(x, starts, (th + 2 * margin, tw + 2 * margin), budget.batch_size,
                  thread=on_gpu if tiling.prefetch is None else bool(tiling.prefetch), pin_memory=on_gpu) as feed:
        for tiles, where in feed:
            _forward_tiles(predictor, tiles, where, device, stitcher, budget)
    return stitcher.probabilities((slice(py // 2, py // 2 + ny), slice(px // 2, px // 2 + nx)))


def iter_volume_probabilities(model: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray, *,
                              in_slices: int = 1, chunk_slices: int = 16, batch_size: int | None = None,
                              device: torch.device | str = "cpu", **kwargs) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(z0, probs)`` chunks for a whole volume.

    Parameters
    ----------
    volume
        ``(Z, Y, X)`` float32 z-scores: an array, a memory map or an :class:`~unet_pipeline.io.npy.NpyReader`
        (read one chunk of slices at a time).
    in_slices
        Network input channels (neighbouring slices, odd).
    batch_size, device
        As for :func:`predict_slices`; a batch halved after an out-of-memory error stays halved
        (and stitched on the host) for the rest of the volume.
    **kwargs
        Passed to :func:`predict_slices`.

    Yields
    ------
    z0, probs
        First slice index of the chunk and its ``(n, K, Y, X)`` float32 probabilities.
    """
    device = torch.device(device)
    budget = TileBudget.default(batch_size, device)
    n_z = volume.shape[0]
    half = in_slices // 2
    for z0 in range(0, n_z, chunk_slices):
        z1 = min(n_z, z0 + chunk_slices)
        lo, hi = max(0, z0 - half), min(n_z, z1 + half)
        # The chunk and its neighbouring slices in one contiguous read; the slab reaches past the
        # chunk by k//2 slices except at the volume's edges, so clipping to it repeats real edges only.
        slab = np.asarray(volume[lo:hi], dtype=np.float32)
        x = np.stack([stack_neighbours(slab, z - lo, in_slices) for z in range(z0, z1)])
        yield z0, predict_slices(model, x, device=device, budget=budget, **kwargs)


def resize_probabilities(probs: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(n, K, Y, X)`` probabilities to ``(n, K, *size)`` (float32)."""
    t = torch.as_tensor(probs).float()
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def class_argmax(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class index of the largest probability: ``(n, K, Y, X)`` -> ``(n, Y, X)`` int64 (the first
    class on ties, as ``argmax``). ``torch.max`` over the class axis, which on the CPU runs about 5x
    faster than ``argmax`` over that strided axis (0.09 s vs 0.53 s for 16 x 5 x 512 x 512)."""
    return torch.max(torch.as_tensor(probs), dim=1).indices.cpu().numpy()
