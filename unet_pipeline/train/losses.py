"""Training losses: soft Dice, (pixel-weighted) cross-entropy and their sum.

Every loss is a function first (:func:`soft_dice_loss`, :func:`cross_entropy_loss`,
:func:`dice_ce_loss`) with a thin :class:`torch.nn.Module` around it (:class:`DiceLoss`,
:class:`WeightedCrossEntropyLoss`, :class:`DiceCELoss`); :func:`make_loss` builds a module by
name from the config. All modules share one call signature,
``loss(logits, target, weight_map=None, valid_mask=None)``, so the training loop does not need to
know which loss it holds; ``loss.requires_weight_map`` tells it whether weight maps must be loaded.

The pixel weights of the U-Net paper (Ronneberger et al. 2015, eq. 2) are computed once per
slice when the slice index is built (:func:`unet_pipeline.preprocess.weight_map.unet_weight_map`),
not in the training step.

Shapes used throughout: ``logits`` ``(N, K, H, W)`` float (N samples, K classes including the
background, H rows, W columns, in px); ``target`` ``(N, H, W)`` integer class indices in
``[0, K)`` (checked here for CPU tensors; for device tensors at data loading, so that a training
step never waits for a device-to-host copy); ``weight_map`` ``(N, H, W)`` float; ``valid_mask`` ``(N, H, W)`` bool, ``True`` where a
pixel counts and ``False`` where it is ignored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_nonneg_float as _check_nonneg_float

__all__ = ["LOSS_NAMES", "soft_dice_loss", "cross_entropy_loss", "dice_ce_loss", "DiceLoss", "DiceCELoss", "WeightedCrossEntropyLoss", "make_loss"]


#: Names accepted by :func:`make_loss`.
LOSS_NAMES: tuple[str, ...] = ("dice_ce", "dice", "ce", "weighted_ce")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_logits_target(logits: Any, target: Any) -> None:
    """Raise if ``logits`` is not ``(N, K, H, W)`` float or ``target`` not ``(N, H, W)`` integer,
    or (CPU tensors only) ``target`` holds a value outside ``[0, K)``; no device synchronisation."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (N, K, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices (e.g. torch.int64), got dtype {target.dtype}")
    n, k, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"target must have shape (N, H, W) = {(n, h, w)} to match logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    # The values are read only from a CPU tensor: on a GPU, reading them is a device-to-host
    # synchronisation (two per check, four per Dice+CE step) that stalls the training step; there
    # the sampler checks every label patch on the host instead (PatchSampler(num_classes=...)), and
    # the one-hot/cross-entropy kernels' own device asserts catch the rest (as torch's one_hot does).
    if target.numel() > 0 and target.device.type == "cpu":
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"target class indices must lie in [0, {k - 1}] for logits with K={k} classes, "
                             f"got values in [{lo}, {hi}]")


def _check_pixel_map(value: Any, name: str, shape: tuple[int, ...], *, boolean: bool) -> None:
    """Raise if a per-pixel map (``weight_map``/``valid_mask``) has the wrong type, dtype or shape."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
    if boolean and value.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = pixel counts), got dtype {value.dtype}")
    if not boolean and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape (N, H, W) = {shape}, got {tuple(value.shape)}")


# --------------------------------------------------------------------------------------------
# loss functions
# --------------------------------------------------------------------------------------------
def soft_dice_loss(logits: Tensor, target: Tensor, *, include_background: bool = False, batch_dice: bool = False,
                   smooth: float = 1e-5, valid_mask: Tensor | None = None) -> Tensor:
    """Soft Dice loss on softmax probabilities, averaged over classes (and samples).

    Per class ``c`` (and per sample unless ``batch_dice``)::

        loss_c = 1 - (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)

    with ``p = softmax(logits)`` over the class axis and ``g`` the one-hot target; the sums run
    over the pixels (and over the batch when ``batch_dice``). The result is the mean of
    ``loss_c`` over the classes (and samples). Without ``valid_mask`` it equals
    ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=include_background,
    batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth)`` (K >= 2), which computes the term.

    Parameters
    ----------
    logits
        ``(N, K, H, W)`` float raw network outputs (K classes including background, K >= 2 unless
        ``include_background``). Computed in float32 whatever the input dtype.
    target
        ``(N, H, W)`` integer class indices in ``[0, K)``.
    include_background
        Also average over class 0; by default only the foreground classes ``1..K-1`` count
        (the softmax still runs over all K classes).
    batch_dice
        Sum intersection and sizes over the whole batch (one Dice per class) instead of one Dice
        per sample and class; steadier when many patches hold no foreground.
    smooth
        Added to numerator and denominator (>= 0); a class absent from both prediction and target
        scores 1 (loss 0).
    valid_mask
        ``(N, H, W)`` bool, ``True`` where a pixel counts; pixels with ``False`` (e.g. padding or
        unlabelled pixels) are left out of every sum. None: all pixels count.

    Returns
    -------
    Tensor
        Scalar float32 loss in ``[0, 1]``.
    """
    from monai.losses import DiceLoss as MonaiDiceLoss

    _check_logits_target(logits, target)
    smooth = _check_nonneg_float(smooth, "smooth")
    n, k, h, w = logits.shape
    if not include_background and k < 2:
        raise ValueError(f"include_background=False needs logits with K >= 2 classes, got K={k}")
    # The softmax, one-hot and mask are ours and MONAI's Dice term does the rest: MONAI's
    # MaskedDiceLoss multiplies the class indices by the mask, so an ignored pixel becomes a
    # background pixel (it still counts in class 0's Dice with include_background), and with
    # K = 1 ``softmax=True``/``to_onehot_y=True`` are skipped with a warning.
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), k).permute(0, 3, 1, 2).to(probs.dtype)
    if valid_mask is not None:
        _check_pixel_map(valid_mask, "valid_mask", (n, h, w), boolean=True)
        keep = valid_mask.unsqueeze(1).to(probs.dtype)
        probs = probs * keep
        onehot = onehot * keep
    dice = MonaiDiceLoss(include_background=include_background, batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth)
    return dice(probs, onehot)


def cross_entropy_loss(logits: Tensor, target: Tensor, weight_map: Tensor | None = None, *,
                       valid_mask: Tensor | None = None) -> Tensor:
    """Pixel-wise cross-entropy, optionally weighted per pixel as in the U-Net paper.

    Without ``weight_map`` this is the mean of ``-log softmax(logits)[target]`` over all pixels.
    With it, the result is ``mean(w * ce)`` over the pixels: the paper's energy
    ``E = -sum_x w(x) log p_l(x)(x)`` divided by the number of pixels, so the loss scale does not
    depend on the patch size (and a weight map of ones gives the plain cross-entropy). It is not
    ``sum(w * ce) / sum(w)``: a patch with many high-weight pixels counts more, as in the paper.

    Parameters
    ----------
    logits
        ``(N, K, H, W)`` float raw network outputs; computed in float32.
    target
        ``(N, H, W)`` integer class indices in ``[0, K)``.
    weight_map
        ``(N, H, W)`` float pixel weights (>= 0, e.g. from :func:`unet_weight_map`), or None.
    valid_mask
        ``(N, H, W)`` bool, ``True`` where a pixel counts; the mean then runs over the valid pixels
        only (0 when there are none). None: all pixels count.

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    _check_logits_target(logits, target)
    n, _, h, w = logits.shape
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if weight_map is not None:
        _check_pixel_map(weight_map, "weight_map", (n, h, w), boolean=False)
        ce = ce * weight_map.float()
    if valid_mask is None:
        return ce.mean()
    _check_pixel_map(valid_mask, "valid_mask", (n, h, w), boolean=True)
    keep = valid_mask.to(ce.dtype)
    return (ce * keep).sum() / keep.sum().clamp_min(1.0)


def dice_ce_loss(logits: Tensor, target: Tensor, *, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 weight_map: Tensor | None = None, **dice_kwargs: Any) -> Tensor:
    """``dice_weight * soft_dice_loss + ce_weight * cross_entropy_loss`` (the nnU-Net default loss).

    Parameters
    ----------
    logits
        ``(N, K, H, W)`` float raw network outputs.
    target
        ``(N, H, W)`` integer class indices in ``[0, K)``.
    dice_weight, ce_weight
        Non-negative weights of the two terms.
    weight_map
        ``(N, H, W)`` float pixel weights for the cross-entropy term only, or None.
    **dice_kwargs
        Keyword arguments of :func:`soft_dice_loss` (``include_background``, ``batch_dice``,
        ``smooth``, ``valid_mask``); ``valid_mask`` applies to the cross-entropy term too.

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    dice_weight = _check_nonneg_float(dice_weight, "dice_weight")
    ce_weight = _check_nonneg_float(ce_weight, "ce_weight")
    allowed = {"include_background", "batch_dice", "smooth", "valid_mask"}
    unknown = sorted(set(dice_kwargs) - allowed)
    if unknown:
        raise TypeError(f"dice_ce_loss got unknown keyword arguments {unknown}; allowed: {sorted(allowed)}")
    dice = soft_dice_loss(logits, target, **dice_kwargs)
    ce = cross_entropy_loss(logits, target, weight_map, valid_mask=dice_kwargs.get("valid_mask"))
    return dice_weight * dice + ce_weight * ce


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
class DiceLoss(nn.Module):
    """Module form of :func:`soft_dice_loss`; a ``weight_map`` passed to it is ignored.

    Parameters
    ----------
    include_background, batch_dice, smooth
        See :func:`soft_dice_loss`.
    """

    requires_weight_map: bool = False

    def __init__(self, *, include_background: bool = False, batch_dice: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)
        self.smooth = _check_nonneg_float(smooth, "smooth")

    def forward(self, logits: Tensor, target: Tensor, weight_map: Tensor | None = None,
                valid_mask: Tensor | None = None) -> Tensor:
        """Loss of ``(N, K, H, W)`` logits against ``(N, H, W)`` class indices; scalar."""
        return soft_dice_loss(logits, target, include_background=self.include_background,
                              batch_dice=self.batch_dice, smooth=self.smooth, valid_mask=valid_mask)

    def extra_repr(self) -> str:
        return f"include_background={self.include_background}, batch_dice={self.batch_dice}, smooth={self.smooth}"


class WeightedCrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy_loss`.

    Parameters
    ----------
    require_weight_map
        If True (``make_loss("weighted_ce")``), calling without a ``weight_map`` raises; if False
        (``make_loss("ce")``), the weight map is optional and used when given.
    """

    def __init__(self, *, require_weight_map: bool = True) -> None:
        super().__init__()
        self.requires_weight_map = bool(require_weight_map)

    def forward(self, logits: Tensor, target: Tensor, weight_map: Tensor | None = None,
                valid_mask: Tensor | None = None) -> Tensor:
        """Loss of ``(N, K, H, W)`` logits against ``(N, H, W)`` class indices; scalar."""
        if weight_map is None and self.requires_weight_map:
            raise ValueError("WeightedCrossEntropyLoss needs a weight_map (N, H, W); build the slice store with "
                             "weight maps, or use the 'ce' loss")
        return cross_entropy_loss(logits, target, weight_map, valid_mask=valid_mask)

    def extra_repr(self) -> str:
        return f"require_weight_map={self.requires_weight_map}"


class DiceCELoss(nn.Module):
    """Module form of :func:`dice_ce_loss`; a ``weight_map``, when given, weights the CE term.

    Parameters
    ----------
    dice_weight, ce_weight
        Weights of the two terms.
    include_background, batch_dice, smooth
        See :func:`soft_dice_loss`.
    """

    requires_weight_map: bool = False

    def __init__(self, *, dice_weight: float = 1.0, ce_weight: float = 1.0, include_background: bool = False,
                 batch_dice: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice_weight = _check_nonneg_float(dice_weight, "dice_weight")
        self.ce_weight = _check_nonneg_float(ce_weight, "ce_weight")
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)
        self.smooth = _check_nonneg_float(smooth, "smooth")

    def forward(self, logits: Tensor, target: Tensor, weight_map: Tensor | None = None,
                valid_mask: Tensor | None = None) -> Tensor:
        """Loss of ``(N, K, H, W)`` logits against ``(N, H, W)`` class indices; scalar."""
        return dice_ce_loss(logits, target, dice_weight=self.dice_weight, ce_weight=self.ce_weight,
                            weight_map=weight_map, include_background=self.include_background,
                            batch_dice=self.batch_dice, smooth=self.smooth, valid_mask=valid_mask)

    def extra_repr(self) -> str:
        return (f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, "
                f"include_background={self.include_background}, batch_dice={self.batch_dice}, smooth={self.smooth}")


def make_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss module by name.

    Parameters
    ----------
    name
        ``"dice_ce"`` (:class:`DiceCELoss`), ``"dice"`` (:class:`DiceLoss`), ``"ce"``
        (:class:`WeightedCrossEntropyLoss` with an optional weight map) or ``"weighted_ce"``
        (:class:`WeightedCrossEntropyLoss` that requires a weight map).
    **kwargs
        Constructor arguments of that class.

    Returns
    -------
    nn.Module
        The loss; call it as ``loss(logits, target, weight_map=None, valid_mask=None)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"loss name must be a string, one of {list(LOSS_NAMES)}; got {type(name).__name__}")
    if name == "dice_ce":
        return DiceCELoss(**kwargs)
    if name == "dice":
        return DiceLoss(**kwargs)
    if name == "ce":
        return WeightedCrossEntropyLoss(**{"require_weight_map": False, **kwargs})
    if name == "weighted_ce":
        return WeightedCrossEntropyLoss(**{"require_weight_map": True, **kwargs})
    raise ValueError(f"unknown loss name {name!r}; choose one of {list(LOSS_NAMES)}")
