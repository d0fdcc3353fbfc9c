"""Mirror test-time augmentation: only the flips of training, left/right pairs swapped back."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.unit.infer.test_predictor import _model_folder, case  # noqa: F401 (fixture)
from unet_pipeline.infer.predictor import Predictor
from unet_pipeline.infer.tta import MirrorTTA, trained_mirroring
from unet_pipeline.io.files import load_json, save_json
from unet_pipeline.model.tiling import predict_slices


class PixelwiseModel(torch.nn.Module):
    """Logits of class k = -(x - k)^2 per pixel: commutes with every flip."""

    def forward(self, x):
        return -((x[:, :1] - torch.arange(3.0).view(1, -1, 1, 1)) ** 2)


class SideModel(torch.nn.Module):
    """Labels by position, as a network trained with left/right pairs swapped on mirroring: logits
    ``(N, 4, H, W)`` with class 3 on the left half of the columns it sees, class 2 on the right
    half, class 1 where the input is > 1 (whatever the side) and background elsewhere."""

    def forward(self, x):
        n, _, h, w = x.shape
        left = (torch.arange(w) < w // 2).float().view(1, 1, 1, w).expand(n, 1, h, w)
        organ = (x[:, :1] > 1).float()
        return 8.0 * torch.cat([torch.zeros_like(left), 2 * organ, 1 - left, left], dim=1)


def _softmax(model, x):
    return torch.softmax(model(torch.from_numpy(x)), 1).numpy()


def test_mirror_tta_is_exact_for_a_symmetric_predictor():
    x = np.random.default_rng(2).uniform(0, 2, (1, 1, 20, 20)).astype(np.float32)
    out = predict_slices(MirrorTTA(PixelwiseModel(), ("x", "y")), x, num_classes=3, patch_size=(8, 8))
    np.testing.assert_allclose(out, _softmax(PixelwiseModel(), x), atol=1e-6)


def test_left_right_pair_is_swapped_back_after_the_x_flip():
    """Flipped left-right, the side model calls the left half "right"; swapping the pair back
    makes every pass agree with the unflipped one, so TTA returns its probabilities exactly. Without
    the swap, classes 2 and 3 would be averaged to one half each."""
    x = np.random.default_rng(3).uniform(0, 2, (2, 1, 6, 10)).astype(np.float32)
    plain = _softmax(SideModel(), x)
    tta = torch.softmax(MirrorTTA(SideModel(), ["x"], [(2, 3)])(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    unswapped = torch.softmax(MirrorTTA(SideModel(), ["x"])(torch.from_numpy(x)), 1).numpy()
    assert np.abs(unswapped - plain).max() > 0.4
    np.testing.assert_allclose(unswapped[:, 2], unswapped[:, 3], atol=1e-6)


def test_the_pair_is_not_swapped_after_a_y_flip():
    """Training swaps labels on x flips only: an up-down flip keeps the sides (the side model
    does not depend on rows), so y-only TTA with a pair given also returns the plain result."""
    x = np.random.default_rng(4).uniform(0, 2, (1, 1, 6, 10)).astype(np.float32)
    tta = torch.softmax(MirrorTTA(SideModel(), ["y"], [(2, 3)])(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(tta, _softmax(SideModel(), x), atol=1e-6)


@pytest.mark.parametrize("axes,pairs,match", [((), (), "axes"), (("z",), (), "axes"), (("x", "x"), (), "axes"),
                                              (("x",), [(1, 1)], "lr_class_pairs"),
                                              (("x",), [(1, 2), (2, 3)], "lr_class_pairs")])
def test_bad_options_are_refused(axes, pairs, match):
    with pytest.raises(ValueError, match=match):
        MirrorTTA(PixelwiseModel(), axes, pairs)
    with pytest.raises(ValueError, match="class >= K=3"):
        MirrorTTA(PixelwiseModel(), ["x"], [(1, 5)])(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("meta,expected", [
    ({"mirroring": {"axes": ["y", "x"], "lr_class_pairs": [[1, 2]]}}, (("x", "y"), ((1, 2),))),
    ({"mirroring": {"axes": ["y"], "lr_class_pairs": []}}, (("y",), ())),
    ({"mirroring": {"axes": [], "lr_class_pairs": []}}, ((), ())),
    # written before the record: derived from the augmentation section (label values -> class indices)
    ({"augmentation": {"mirror_p": 0.5, "mirror_axes": ["x"], "lr_label_pairs": [[9, 3]]},
      "labels": {"1": "a", "3": "b", "9": "c"}}, (("x",), ((3, 2),))),
    ({"augmentation": {"mirror_p": 0.0, "mirror_axes": ["x", "y"]}, "labels": {"1": "a"}}, ((), ())),
    ({"labels": {"1": "a"}}, ((), ())),
])
def test_trained_mirroring_from_model_json(meta, expected):
    assert trained_mirroring(meta) == expected


def _count_passes(model) -> list[int]:
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    return calls


def test_model_trained_without_mirroring_gets_no_flipped_passes(tmp_path, case, caplog):  # noqa: F811
    folder = _model_folder(tmp_path / "m", 0)  # model.json without mirroring
    plain = Predictor([folder], "cpu")
    plain_calls = _count_passes(plain.models[0])
    plain.predict(case, tmp_path / "plain.npy")
    predictor = Predictor([folder], "cpu")
    calls = _count_passes(predictor.models[0])
    with caplog.at_level(logging.INFO, logger="unet_pipeline.infer.predictor"):
        predictor.predict(case, tmp_path / "a.npy", {"mirror_tta": True})
        predictor.predict(case, tmp_path / "b.npy", {"mirror_tta": True})
    assert calls == plain_calls * 2  # two cases, each with the passes of no TTA
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "plain.npy"))
    assert caplog.text.count("trained without mirroring") == 1 and "predicting without flips" in caplog.text


def test_model_trained_with_x_mirroring_gets_the_x_flip_only(tmp_path, case, caplog):  # noqa: F811
    folder = _model_folder(tmp_path / "m", 0)
    meta = load_json(folder / "model.json")
    save_json({**meta, "mirroring": {"axes": ["x"], "lr_class_pairs": [[1, 2]]}}, folder / "model.json")
    predictor = Predictor([folder], "cpu")
    calls = _count_passes(predictor.models[0])
    with caplog.at_level(logging.INFO, logger="unet_pipeline.infer.predictor"):
        predictor.predict(case, tmp_path / "tta.npy", {"mirror_tta": True, "batch_size": 4})
    assert calls and all(n <= 4 for n in calls) and len(calls) % 2 == 0  # each batch: plain + x flip
    assert caplog.text.count("flips along x, those of training") == 1 and "[[1, 2]]" in caplog.text
    net = predictor.network(mirror_tta=True)
    assert isinstance(net, MirrorTTA) and net.axes == ("x",) and net.lr_class_pairs == ((1, 2),)
    assert predictor.network(mirror_tta=False) is predictor.models[0]
    assert caplog.text.count("flips along x") == 1  # logged once per Predictor
