"""Inference on a CUDA GPU: fp16 autocast, tiles through pinned memory, the out-of-memory fallback.

Marked ``gpu`` and skipped without CUDA; ``pytest -m gpu`` runs every GPU test (CPU stand-ins
of the same code paths are in test_inference.py and test_tile_feed.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_pipeline.model.tiling import TileBudget, predict_slices
from unet_pipeline.model.unet import UNetConfig, build_unet

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu marker); none here")]

KW = {"num_classes": 3, "patch_size": (32, 32), "device": "cuda"}


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(UNetConfig(num_classes=3, base_channels=8, depth=3)).eval().to("cuda",
                                                                                   memory_format=torch.channels_last)


def _slices(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, 72, 90)).astype(np.float32)


def test_float16_inference_stays_close_to_float32():
    model = _network()
    full = predict_slices(model, _slices(), precision="float32", **KW)
    half = predict_slices(model, _slices(), precision="float16", **KW)
    auto = predict_slices(model, _slices(), precision="auto", **KW)  # float16 on a GPU
    assert half.dtype == np.float32
    np.testing.assert_allclose(half.sum(1), 1.0, atol=1e-5)
    assert np.abs(half - full).max() < 0.02
    np.testing.assert_allclose(auto, half, atol=1e-4)


def test_tiles_reach_the_gpu_through_pinned_memory_from_the_producer():
    from unet_pipeline.model.tile_feed import TileFeed

    padded = _slices(2)
    with TileFeed(padded, [(0, 0, 0), (1, 8, 8), (1, 40, 58)], (32, 32), 2, thread=True, pin_memory=True) as feed:
        batches = list(feed)
    assert all(tiles.is_pinned() for tiles, _ in batches)
    model = _network()
    fed = predict_slices(model, _slices(), precision="float32", prefetch=True, **KW)  # the default on CUDA
    plain = predict_slices(model, _slices(), precision="float32", prefetch=False, **KW)
    np.testing.assert_allclose(fed, plain, atol=1e-6)


class _AllocateAbove(torch.nn.Module):
    """The network, but a batch of more than ``limit`` tiles first asks the GPU for 1 PiB: a real
    CUDA out-of-memory error from the caching allocator."""

    def __init__(self, net: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.sizes = net, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            torch.empty(1 << 50, dtype=torch.uint8, device=x.device)
        return self.net(x)


def test_out_of_memory_halves_the_batch_and_stitches_on_the_host():
    net = _network()
    expected = predict_slices(net, _slices(), precision="float32", batch_size=2, **KW)
    model = _AllocateAbove(net, limit=2)
    budget = TileBudget(8)
    out = predict_slices(model, _slices(), precision="float32", budget=budget, **KW)
    assert (budget.batch_size, budget.stitch_on_host) == (2, True)
    assert model.sizes[:3] == [8, 4, 2] and max(model.sizes[3:]) <= 2
    np.testing.assert_allclose(out, expected, atol=1e-5)
