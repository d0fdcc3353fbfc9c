"""Tests for unet_pipeline.train.losses: hand-computed values on tiny tensors, MONAI agreement, weight maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_pipeline.train.losses import LOSS_NAMES, DiceCELoss, DiceLoss, WeightedCrossEntropyLoss, cross_entropy_loss, dice_ce_loss, make_loss, soft_dice_loss
from unet_pipeline.preprocess.weight_map import unet_weight_map

LN3 = math.log(3.0)


@pytest.fixture
def tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """1x2x2x2 logits with softmax P(class 1) = [[.75, .25], [.5, .75]] and target [[1, 0], [0, 1]]."""
    logits = torch.tensor([[[[0.0, LN3], [0.0, 0.0]],
                            [[LN3, 0.0], [0.0, LN3]]]])
    target = torch.tensor([[[1, 0], [0, 1]]])
    return logits, target


@pytest.fixture
def tiny_batch(tiny) -> tuple[torch.Tensor, torch.Tensor]:
    """``tiny`` plus a second sample with P(class 1) = .25 everywhere and an all-background target."""
    logits, target = tiny
    second = torch.stack([torch.full((2, 2), LN3), torch.zeros(2, 2)])[None]
    return torch.cat([logits, second]), torch.cat([target, torch.zeros(1, 2, 2, dtype=torch.long)])


# ---- soft Dice -------------------------------------------------------------------------------
def test_dice_hand_computed_foreground_only(tiny):
    # class 1: sum(p*g) = .75 + .75 = 1.5, sum(p) = 2.25, sum(g) = 2 -> Dice = 3 / 4.25
    loss = soft_dice_loss(*tiny, smooth=0.0)
    assert loss.item() == pytest.approx(1.0 - 3.0 / 4.25, abs=1e-6)


def test_dice_hand_computed_with_background(tiny):
    # class 0: p0 = [.25, .75, .5, .25], g0 = [0, 1, 1, 0] -> Dice = 2 * 1.25 / (1.75 + 2) = 2 / 3
    loss = soft_dice_loss(*tiny, include_background=True, smooth=0.0)
    assert loss.item() == pytest.approx(((1 - 2 / 3) + (1 - 3 / 4.25)) / 2, abs=1e-6)


def test_dice_smooth_enters_numerator_and_denominator(tiny):
    loss = soft_dice_loss(*tiny, smooth=1.0)
    assert loss.item() == pytest.approx(1.0 - 4.0 / 5.25, abs=1e-6)


def test_dice_per_sample_vs_batch(tiny_batch):
    logits, target = tiny_batch
    # sample 2, class 1: sum(p*g) = 0, sum(p) = 1, sum(g) = 0 -> Dice = 0 (smooth 0)
    per_sample = soft_dice_loss(logits, target, smooth=0.0)
    assert per_sample.item() == pytest.approx(((1 - 3 / 4.25) + 1.0) / 2, abs=1e-6)
    # batch sums: sum(p*g) = 1.5, sum(p) = 3.25, sum(g) = 2 -> Dice = 3 / 5.25
    batch = soft_dice_loss(logits, target, smooth=0.0, batch_dice=True)
    assert batch.item() == pytest.approx(1 - 3 / 5.25, abs=1e-6)


def test_dice_valid_mask_drops_pixels(tiny):
    logits, target = tiny
    mask = torch.tensor([[[True, False], [True, True]]])
    # without pixel (0, 1): p = [.75, .5, .75], g = [1, 0, 1] -> Dice = 3 / 4
    assert soft_dice_loss(logits, target, smooth=0.0, valid_mask=mask).item() == pytest.approx(0.25, abs=1e-6)


def test_dice_perfect_prediction_is_zero():
    target = torch.randint(0, 4, (2, 7, 5), generator=torch.Generator().manual_seed(0))
    target[:, 0, :4] = torch.arange(4)  # every class present in every sample
    logits = 30.0 * torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    for include_background in (False, True):
        for batch_dice in (False, True):
            loss = soft_dice_loss(logits, target, include_background=include_background, batch_dice=batch_dice)
            assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_dice_absent_class_scores_one():
    # class 2 absent in target and (almost) in prediction: smooth makes its Dice 1, loss 0
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    target[0, 1, 1] = 1
    logits = 40.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
@pytest.mark.parametrize("shape", [(3, 4, 7, 5), (1, 2, 9, 11)])
def test_dice_matches_monai(include_background, batch_dice, smooth, shape):
    from monai import losses as monai_losses

    gen = torch.Generator().manual_seed(sum(shape))
    n, k, h, w = shape
    logits = 3.0 * torch.randn(shape, generator=gen)
    target = torch.randint(0, k, (n, h, w), generator=gen)
    reference = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=include_background,
                                      batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth)
    expected = reference(logits, target[:, None])
    ours = soft_dice_loss(logits, target, include_background=include_background, batch_dice=batch_dice,
                          smooth=smooth)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_valid_mask_matches_monai_masked_dice_on_the_foreground(batch_dice):
    """MONAI's MaskedDiceLoss turns ignored pixels into background pixels: equal to ours without class 0."""
    from monai import losses as monai_losses

    gen = torch.Generator().manual_seed(7)
    logits = 3.0 * torch.randn((3, 4, 9, 8), generator=gen)
    target = torch.randint(0, 4, (3, 9, 8), generator=gen)
    mask = torch.rand((3, 9, 8), generator=gen) > 0.3
    reference = monai_losses.MaskedDiceLoss(softmax=True, to_onehot_y=True, include_background=False,
                                            batch=batch_dice, smooth_nr=1e-5, smooth_dr=1e-5)
    expected = reference(logits, target[:, None], mask=mask[:, None].float())
    ours = soft_dice_loss(logits, target, batch_dice=batch_dice, valid_mask=mask)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)
    # With class 0, ignored pixels stay out of its sums here but count as background in MONAI's.
    with_background = soft_dice_loss(logits, target, include_background=True, batch_dice=batch_dice, valid_mask=mask)
    reference = monai_losses.MaskedDiceLoss(softmax=True, to_onehot_y=True, include_background=True,
                                            batch=batch_dice, smooth_nr=1e-5, smooth_dr=1e-5)
    assert with_background.item() != pytest.approx(
        reference(logits, target[:, None], mask=mask[:, None].float()).item(), abs=1e-4)


def test_dice_gradient_flows(tiny):
    logits, target = tiny
    logits = logits.clone().requires_grad_(True)
    soft_dice_loss(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ---- cross-entropy ---------------------------------------------------------------------------
def test_ce_hand_computed(tiny):
    a = -math.log(0.75)
    assert cross_entropy_loss(*tiny).item() == pytest.approx((3 * a + math.log(2)) / 4, abs=1e-6)


def test_ce_weight_map_is_pixel_mean_of_weighted_ce(tiny):
    a = -math.log(0.75)
    weight = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    # pixels: (0,0) a, (0,1) a, (1,0) ln 2, (1,1) a
    expected = (1 * a + 2 * a + 3 * math.log(2) + 4 * a) / 4
    assert cross_entropy_loss(*tiny, weight).item() == pytest.approx(expected, abs=1e-6)
    assert cross_entropy_loss(*tiny, torch.ones(1, 2, 2)).item() == pytest.approx(cross_entropy_loss(*tiny).item())


def test_ce_valid_mask(tiny):
    mask = torch.tensor([[[True, True], [False, True]]])
    assert cross_entropy_loss(*tiny, valid_mask=mask).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    none_valid = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert cross_entropy_loss(*tiny, valid_mask=none_valid).item() == 0.0


def test_dice_ce_is_weighted_sum(tiny):
    logits, target = tiny
    weight = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    dice = soft_dice_loss(logits, target, smooth=0.0, include_background=True)
    ce = cross_entropy_loss(logits, target, weight)
    combined = dice_ce_loss(logits, target, dice_weight=0.3, ce_weight=2.0, weight_map=weight, smooth=0.0,
                            include_background=True)
    assert combined.item() == pytest.approx(0.3 * dice.item() + 2.0 * ce.item(), abs=1e-6)


def test_dice_ce_valid_mask_reaches_both_terms(tiny):
    logits, target = tiny
    mask = torch.tensor([[[True, False], [True, True]]])
    combined = dice_ce_loss(logits, target, valid_mask=mask, smooth=0.0)
    expected = soft_dice_loss(logits, target, valid_mask=mask, smooth=0.0) + cross_entropy_loss(
        logits, target, valid_mask=mask)
    assert combined.item() == pytest.approx(expected.item(), abs=1e-6)


# ---- modules and make_loss -------------------------------------------------------------------
def test_modules_match_functions(tiny_batch):
    logits, target = tiny_batch
    weight = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(3)) + 0.5
    assert DiceLoss(batch_dice=True)(logits, target).item() == pytest.approx(
        soft_dice_loss(logits, target, batch_dice=True).item())
    assert DiceCELoss(ce_weight=0.5)(logits, target, weight).item() == pytest.approx(
        dice_ce_loss(logits, target, ce_weight=0.5, weight_map=weight).item())
    assert WeightedCrossEntropyLoss()(logits, target, weight).item() == pytest.approx(
        cross_entropy_loss(logits, target, weight).item())


@pytest.mark.parametrize("name, cls, requires", [("dice_ce", DiceCELoss, False), ("dice", DiceLoss, False),
                                                  ("ce", WeightedCrossEntropyLoss, False),
                                                  ("weighted_ce", WeightedCrossEntropyLoss, True)])
def test_make_loss_names(name, cls, requires, tiny):
    loss = make_loss(name)
    assert isinstance(loss, cls)
    assert loss.requires_weight_map is requires
    if requires:
        with pytest.raises(ValueError, match="weight_map"):
            loss(*tiny)
    else:
        assert torch.isfinite(loss(*tiny))


def test_make_loss_forwards_kwargs(tiny):
    loss = make_loss("dice", include_background=True, smooth=0.0)
    assert loss(*tiny).item() == pytest.approx(soft_dice_loss(*tiny, include_background=True, smooth=0.0).item())
    with pytest.raises(TypeError):
        make_loss("dice", no_such_option=1)


def test_make_loss_unknown_name_lists_names():
    with pytest.raises(ValueError) as err:
        make_loss("focal")
    for name in LOSS_NAMES:
        assert name in str(err.value)
    with pytest.raises(TypeError):
        make_loss(3)


# ---- bad input -------------------------------------------------------------------------------
def test_bad_shapes_and_dtypes_raise(tiny):
    logits, target = tiny
    with pytest.raises(ValueError, match="logits"):
        soft_dice_loss(logits[0], target)
    with pytest.raises(ValueError, match="target"):
        soft_dice_loss(logits, target[:, :1])
    with pytest.raises(TypeError, match="target"):
        soft_dice_loss(logits, target.float())
    with pytest.raises(TypeError, match="logits"):
        cross_entropy_loss(logits.long(), target)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soft_dice_loss(logits, target + 1)
    with pytest.raises(ValueError, match="K >= 2"):
        soft_dice_loss(logits[:, :1], torch.zeros_like(target))
    with pytest.raises(TypeError, match="valid_mask"):
        soft_dice_loss(logits, target, valid_mask=torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="weight_map"):
        cross_entropy_loss(logits, target, torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="smooth"):
        soft_dice_loss(logits, target, smooth=-1.0)
    with pytest.raises(ValueError, match="ce_weight"):
        dice_ce_loss(logits, target, ce_weight=-1.0)
    with pytest.raises(TypeError, match="unknown"):
        dice_ce_loss(logits, target, batch=True)


# ---- weight map ------------------------------------------------------------------------------
def _two_squares(second_class: int = 2) -> np.ndarray:
    """20 x 30 map: squares at columns 2..9 and 13..20 (rows 5..14); the gap 10..12 is 3 px wide,
    so the borders (columns 9 and 13) are 4 px apart and column 11 has d1 = d2 = 2 px."""
    label = np.zeros((20, 30), np.uint8)
    label[5:15, 2:10] = 1
    label[5:15, 13:21] = second_class
    return label


def test_weight_map_midpoint_and_class_weights():
    label = _two_squares()
    weights = unet_weight_map(label, w0=10.0, sigma_px=5.0)
    assert weights.dtype == np.float32 and weights.shape == label.shape
    # class counts: 0 -> 440, 1 -> 80, 2 -> 80 of 600; w_c = 600 / (3 * count)
    wc = {0: 600 / (3 * 440), 1: 600 / (3 * 80), 2: 600 / (3 * 80)}
    expected_mid = wc[0] + 10.0 * math.exp(-(2 + 2) ** 2 / (2 * 5.0**2))
    assert weights[10, 11] == pytest.approx(expected_mid, rel=1e-6)
    # column 10: d1 = 1 (column 9), d2 = 3 (column 13): same sum, same weight
    assert weights[10, 10] == pytest.approx(expected_mid, rel=1e-6)
    # foreground pixels carry w_c only
    assert weights[6, 3] == pytest.approx(wc[1], rel=1e-6)
    assert weights[6, 15] == pytest.approx(wc[2], rel=1e-6)
    # above the gap, pixel (0, 11): d1 = d2 = sqrt(2^2 + 5^2)
    d = math.hypot(2, 5)
    assert weights[0, 11] == pytest.approx(wc[0] + 10.0 * math.exp(-(2 * d) ** 2 / 50.0), rel=1e-6)


def test_weight_map_class_balance_has_pixel_mean_one():
    weights = unet_weight_map(_two_squares(second_class=1), w0=0.0)
    assert float(weights.mean()) == pytest.approx(1.0, rel=1e-6)
    assert weights[0, 0] == pytest.approx(600 / (2 * 440), rel=1e-6)
    assert weights[6, 3] == pytest.approx(600 / (2 * 160), rel=1e-6)


def test_weight_map_given_class_weights():
    label = _two_squares()
    weights = unet_weight_map(label, w0=0.0, class_weights=np.array([0.5, 2.0, 3.0]))
    np.testing.assert_allclose(weights, np.array([0.5, 2.0, 3.0])[label], rtol=1e-7)


def test_weight_map_single_object_has_no_border_term():
    label = np.zeros((9, 11), np.int64)
    label[2:5, 3:8] = 1
    weights = unet_weight_map(label)
    counts = {0: 99 - 15, 1: 15}
    np.testing.assert_allclose(weights, np.where(label == 1, 99 / (2 * 15), 99 / (2 * counts[0])), rtol=1e-6)
    np.testing.assert_array_equal(unet_weight_map(np.zeros((4, 5), np.uint8)), np.ones((4, 5), np.float32))


def _brute_force_border(label: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Border term from all pixel-to-object distances, no cropping, no cutoff."""
    from scipy import ndimage

    objects, n = ndimage.label(label != 0)
    yy, xx = np.indices(label.shape)
    dists = []
    for k in range(1, n + 1):
        oy, ox = np.nonzero(objects == k)
        d = np.sqrt((yy[..., None] - oy) ** 2 + (xx[..., None] - ox) ** 2).min(axis=-1)
        dists.append(d)
    dists = np.sort(np.stack(dists), axis=0)
    term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    term[label != 0] = 0.0
    return term


def test_weight_map_matches_brute_force_with_many_objects():
    rng = np.random.default_rng(7)
    label = np.zeros((41, 53), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 38), rng.integers(0, 50)
        label[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = rng.integers(1, 3)
    sigma = 1.5  # cutoff 9 px: most objects are cropped
    weights = unet_weight_map(label, w0=10.0, sigma_px=sigma, class_weights=np.zeros(3))
    np.testing.assert_allclose(weights, _brute_force_border(label, 10.0, sigma), atol=1e-6)


def test_weight_map_bad_input_raises():
    label = _two_squares()
    with pytest.raises(ValueError, match="label"):
        unet_weight_map(label[None])
    with pytest.raises(TypeError, match="label"):
        unet_weight_map(label.astype(np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        unet_weight_map(label.astype(np.int16) - 1)
    with pytest.raises(ValueError, match="sigma_px"):
        unet_weight_map(label, sigma_px=0.0)
    with pytest.raises(ValueError, match="w0"):
        unet_weight_map(label, w0=-1.0)
    with pytest.raises(ValueError, match="class_weights"):
        unet_weight_map(label, class_weights=np.ones(2))
    with pytest.raises(ValueError, match="class_weights"):
        unet_weight_map(label, class_weights=np.array([1.0, -1.0, 1.0]))
