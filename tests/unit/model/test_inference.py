"""Tiled inference against predictors whose output is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_pipeline.model.tiling import gaussian_importance, iter_volume_probabilities, predict_slices, tile_starts


class PixelwiseModel(torch.nn.Module):
    """Logits of class k = -(x - k)^2 per pixel, cropped by ``margin`` on every side (like a valid conv net)."""

    def __init__(self, num_classes: int = 3, margin: int = 0) -> None:
        super().__init__()
        self.k = torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1)
        self.margin = margin

    def forward(self, x):
        logits = -((x[:, :1] - self.k) ** 2)
        m = self.margin
        return logits[..., m:-m, m:-m] if m else logits


def _direct(x: np.ndarray, k: int = 3) -> np.ndarray:
    t = torch.from_numpy(x)
    return torch.softmax(PixelwiseModel(k)(t), 1).numpy()


@pytest.mark.parametrize("shape,patch,overlap", [((3, 1, 50, 37), (16, 16), 0.5), ((2, 1, 16, 16), (16, 16), 0.25),
                                                  ((1, 1, 9, 70), (16, 32), 0.5), ((2, 1, 33, 20), (8, 8), 0.0)])
def test_tiled_equals_direct_for_pixelwise_model(shape, patch, overlap):
    x = np.random.default_rng(0).uniform(-0.5, 2.5, shape).astype(np.float32)
    out = predict_slices(PixelwiseModel(), x, num_classes=3, patch_size=patch, overlap=overlap, batch_size=5)
    assert out.shape == (shape[0], 3, *shape[2:])
    np.testing.assert_allclose(out, _direct(x), atol=1e-6)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-6)


def test_overlap_tile_with_margin_uses_mirrored_context():
    x = np.random.default_rng(1).uniform(0, 2, (2, 1, 30, 41)).astype(np.float32)
    out = predict_slices(PixelwiseModel(margin=4), x, num_classes=3, patch_size=(12, 12), overlap=0.5, margin=4)
    np.testing.assert_allclose(out, _direct(x), atol=1e-6)


def test_volume_chunks_cover_every_slice_with_neighbours_as_channels():
    vol = np.random.default_rng(3).uniform(0, 2, (7, 12, 10)).astype(np.float32)
    chunks = list(iter_volume_probabilities(PixelwiseModel(), vol, in_slices=3, chunk_slices=3, num_classes=3,
                                            patch_size=(8, 8)))
    assert [z0 for z0, _ in chunks] == [0, 3, 6]
    probs = np.concatenate([p for _, p in chunks])
    # Channel 0 of 3 neighbouring slices is slice z - 1 (the edge slice repeats at z = 0).
    above = vol[np.clip(np.arange(7) - 1, 0, 6)][:, None]
    np.testing.assert_allclose(probs, _direct(above), atol=1e-6)
    assert not np.allclose(probs, _direct(vol[:, None]), atol=1e-3)


def test_gaussian_importance_and_tile_starts():
    g = gaussian_importance((17, 9))
    assert g.shape == (17, 9) and g.dtype == np.float32
    assert g[8, 4] == pytest.approx(1.0) and g.min() > 0
    sigma = 0.125 * 17
    assert g[2, 4] == pytest.approx(np.exp(-0.5 * (6 / sigma) ** 2), rel=1e-4, abs=1e-6)
    # the border value exp(-0.5 (8 / sigma)^2) = 8.4e-4 is raised to the floor of 1e-3 (as MONAI)
    assert g[0, 4] == pytest.approx(1e-3)
    assert tile_starts(100, 32, 0.5) == [0, 14, 27, 41, 54, 68]  # steps <= 16 keep >= 50 % overlap
    assert tile_starts(32, 32, 0.5) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(10, 4, 1.0)


def test_tile_batch_and_memory_format_do_not_change_the_probabilities():
    """The default tile batch, one tile a pass and batches of 8 give the same probabilities, and
    the tiles reach the network channels-last (its fast layout) whatever the caller's format."""
    from unet_pipeline.model.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=3, base_channels=4, depth=2)).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    slices = np.random.default_rng(0).normal(size=(2, 1, 40, 52)).astype(np.float32)
    default = predict_slices(model, slices, num_classes=3, patch_size=(32, 32))
    one = predict_slices(model, slices, num_classes=3, patch_size=(32, 32), batch_size=1)
    eight = predict_slices(model, slices, num_classes=3, patch_size=(32, 32), batch_size=8)
    np.testing.assert_allclose(default, one, atol=1e-5)
    np.testing.assert_allclose(default, eight, atol=1e-5)
    assert seen and all(seen)
    with torch.inference_mode():
        x = torch.from_numpy(slices[:, :, :32, :32].copy())
        np.testing.assert_allclose(model(x).numpy(), model(x.contiguous(memory_format=torch.channels_last)).numpy(),
                                   atol=1e-5)


class LastChannelModel(PixelwiseModel):
    """As :class:`PixelwiseModel`, on the last input channel (slice z + k//2 for 2.5-D input)."""

    def forward(self, x):
        return -((x[:, -1:] - self.k) ** 2)


def test_volume_read_from_npy_slabs_gives_the_same_neighbours(tmp_path):
    from unet_pipeline.io.npy import NpyReader

    vol = np.random.default_rng(4).uniform(0, 2, (8, 12, 10)).astype(np.float32)
    np.save(tmp_path / "image.npy", vol)
    reader = NpyReader(tmp_path / "image.npy")
    for chunk_slices in (1, 3, 8):
        probs = np.concatenate([p for _, p in iter_volume_probabilities(
            LastChannelModel(), reader, in_slices=5, chunk_slices=chunk_slices, num_classes=3, patch_size=(8, 8))])
        below = vol[np.clip(np.arange(8) + 2, 0, 7)][:, None]  # channel 4 of 5 is slice z + 2 (edge repeats)
        np.testing.assert_allclose(probs, _direct(below), atol=1e-6)


class OutOfMemoryAbove(torch.nn.Module):
    """:class:`PixelwiseModel` that raises a CUDA out-of-memory error for batches of more than
    ``limit`` tiles (``limit`` 0: always), as a GPU short of memory does; records every batch size."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.sizes = PixelwiseModel(), limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.inner(x)


def test_out_of_memory_halves_the_tile_batch_for_the_rest_of_the_volume(caplog):
    """A CUDA OOM halves the tile batch (8 -> 4 -> 2 here) and moves the stitching to the host; the
    smaller batch holds for the later chunks of the volume, and the probabilities are unchanged."""
    import logging

    vol = np.random.default_rng(5).uniform(-0.5, 2.5, (5, 40, 37)).astype(np.float32)
    model = OutOfMemoryAbove(limit=2)
    with caplog.at_level(logging.WARNING, logger="unet_pipeline.model.tiling"):
        chunks = list(iter_volume_probabilities(model, vol, chunk_slices=2, num_classes=3, patch_size=(16, 16),
                                                batch_size=8))
    probs = np.concatenate([p for _, p in chunks])
    np.testing.assert_allclose(probs, _direct(vol[:, None]), atol=1e-6)
    assert model.sizes[:3] == [8, 4, 2] and max(model.sizes[3:]) <= 2
    assert caplog.text.count("out of memory") == 2 and "2 from now on, stitched on the host" in caplog.text


def test_out_of_memory_with_one_tile_stitched_on_the_host_is_raised():
    x = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="one tile a pass"):
        predict_slices(OutOfMemoryAbove(limit=0), x, num_classes=3, patch_size=(16, 16), batch_size=2)


def test_tile_budget_defaults_and_shrinks_to_one():
    from unet_pipeline.model.tiling import TileBudget

    assert TileBudget.default(None, torch.device("cpu")).batch_size == 4
    assert TileBudget.default(0, torch.device("cuda")).batch_size == 8
    budget = TileBudget.default(3, torch.device("cpu"))
    budget.shrink(torch.device("cpu"))
    assert (budget.batch_size, budget.stitch_on_host) == (1, True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        budget.shrink(torch.device("cpu"))


def test_producer_thread_gives_bit_identical_probabilities():
    """Tiles cut by the producer thread (pinning is for CUDA only) give exactly the probabilities of
    tiles cut in the loop, with a real network and with the overlap-tile margin."""
    from unet_pipeline.model.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=3, base_channels=4, depth=2)).eval()
    slices = np.random.default_rng(6).normal(size=(3, 1, 40, 52)).astype(np.float32)
    kw = {"num_classes": 3, "patch_size": (32, 32), "batch_size": 3, "precision": "float32"}
    np.testing.assert_array_equal(predict_slices(model, slices, prefetch=True, **kw),
                                  predict_slices(model, slices, prefetch=False, **kw))
    x = np.random.default_rng(7).uniform(0, 2, (2, 1, 30, 41)).astype(np.float32)
    out = predict_slices(PixelwiseModel(margin=4), x, num_classes=3, patch_size=(12, 12), margin=4, prefetch=True)
    np.testing.assert_allclose(out, _direct(x), atol=1e-6)


class PositionModel(torch.nn.Module):
    """Logits that depend only on the position inside the tile: class 1 rises along y, class 2 along x.

    Unlike a per-pixel model, its tiled result depends on how the overlapping tiles are weighted.
    """

    def forward(self, x):
        n, _, h, w = x.shape
        ys = torch.linspace(-3.0, 3.0, h).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-2.0, 2.0, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return torch.cat([torch.zeros_like(ys), ys, xs], dim=1) + 0 * x[:, :1]


def _blend_by_hand(shape, patch, overlap, weight):
    """The Gaussian-weighted average of the tiles, written out tile by tile."""
    n, _, ny, nx = shape
    th, tw = patch
    tile = torch.softmax(PositionModel()(torch.zeros(1, 1, th, tw)), 1)[0].numpy()
    acc, norm = np.zeros((n, 3, ny, nx)), np.zeros((n, 1, ny, nx))
    for i in tile_starts(ny, th, overlap):
        for j in tile_starts(nx, tw, overlap):
            acc[:, :, i:i + th, j:j + tw] += weight * tile
            norm[:, :, i:i + th, j:j + tw] += weight
    return acc / norm


@pytest.mark.parametrize("shape,patch,overlap,batch_size", [((2, 1, 40, 28), (16, 12), 0.5, 3),
                                                            ((1, 1, 25, 25), (10, 10), 0.25, 1)])
def test_tiles_are_blended_with_the_gaussian_weights(shape, patch, overlap, batch_size):
    x = np.zeros(shape, np.float32)
    out = predict_slices(PositionModel(), x, num_classes=3, patch_size=patch, overlap=overlap, batch_size=batch_size)
    expected = _blend_by_hand(shape, patch, overlap, gaussian_importance(patch))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # The check can tell weightings apart: a plain average of the same tiles differs.
    assert not np.allclose(out, _blend_by_hand(shape, patch, overlap, np.ones(patch)), atol=1e-3)


def test_class_argmax_is_argmax_with_first_class_on_ties():
    from unet_pipeline.model.tiling import class_argmax

    rng = np.random.default_rng(0)
    probs = rng.integers(0, 3, (3, 5, 20, 30)).astype(np.float16)  # many ties
    np.testing.assert_array_equal(class_argmax(probs), probs.argmax(1))
    probs = rng.random((2, 4, 8, 9)).astype(np.float32)
    np.testing.assert_array_equal(class_argmax(torch.from_numpy(probs)), probs.argmax(1))


def test_whole_slices_predict_a_slice_in_one_pass():
    """``whole_slices``: one forward pass per slice (the slice's own size), so a network whose output
    depends on the position inside its input gives the one-pass answer, not a blend of tiles;
    slices that fit in one tile are predicted identically either way; too large ones are tiled."""
    from unet_pipeline.model import tiling

    class Ramp(torch.nn.Module):  # logit of class 1 grows with the column inside the input
        def __init__(self):
            super().__init__()
            self.shapes = []

        def forward(self, x):
            self.shapes.append(tuple(x.shape[-2:]))
            ramp = torch.linspace(-3.0, 3.0, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
            return torch.cat([torch.zeros_like(ramp), ramp], dim=1)

    slices = np.zeros((2, 1, 40, 72), np.float32)
    model = Ramp()
    whole = predict_slices(model, slices, num_classes=2, patch_size=(32, 32), whole_slices=True)
    assert set(model.shapes) == {(40, 72)}
    expected = torch.softmax(torch.stack([torch.zeros(72), torch.linspace(-3.0, 3.0, 72)]), 0)[1]
    np.testing.assert_allclose(whole[0, 1, 5], expected.numpy(), atol=1e-6)
    tiled = predict_slices(model, slices, num_classes=2, patch_size=(32, 32), whole_slices=False)
    assert np.abs(tiled - whole).max() > 0.1  # tiles see the ramp restart: a different answer

    small = np.random.default_rng(1).normal(size=(1, 1, 20, 24)).astype(np.float32)
    np.testing.assert_array_equal(predict_slices(model, small, num_classes=2, patch_size=(32, 32), whole_slices=True),
                                  predict_slices(model, small, num_classes=2, patch_size=(32, 32), whole_slices=False))
    model.shapes.clear()
    old = tiling.WHOLE_SLICE_MAX_PX
    try:
        tiling.WHOLE_SLICE_MAX_PX = 40 * 72 - 1
        predict_slices(model, slices, num_classes=2, patch_size=(32, 32), whole_slices=True)
    finally:
        tiling.WHOLE_SLICE_MAX_PX = old
    assert set(model.shapes) == {(32, 32)}


def test_precision_resolves_per_device_and_bfloat16_stays_close():
    from unet_pipeline.model import tiling
    from unet_pipeline.model.unet import UNetConfig, build_unet

    assert tiling.autocast_dtype("auto", "cuda") == torch.float16
    assert tiling.autocast_dtype("float32", "cuda") is None
    assert tiling.autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    expected = torch.bfloat16 if tiling._cpu_has_amx_bf16() else None
    assert tiling.autocast_dtype("auto", "cpu") == expected
    with pytest.raises(ValueError, match="precision"):
        tiling.autocast_dtype("int8", "cpu")

    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=3, base_channels=4, depth=2)).eval()
    slices = np.random.default_rng(0).normal(size=(2, 1, 40, 52)).astype(np.float32)
    full = predict_slices(model, slices, num_classes=3, patch_size=(32, 32), precision="float32")
    half = predict_slices(model, slices, num_classes=3, patch_size=(32, 32), precision="bfloat16")
    assert half.dtype == np.float32
    np.testing.assert_allclose(half.sum(1), 1.0, atol=1e-5)
    assert np.abs(half - full).max() < 0.05  # bfloat16 keeps 8 bits of mantissa: probabilities within a few %
