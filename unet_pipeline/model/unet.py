"""The 2D U-Net of Ronneberger, Fischer and Brox (2015), built from small blocks.

Architecture (paper, Fig. 1): a contracting path of ``depth`` levels, each two 3 x 3 convolutions
with ReLU followed by 2 x 2 max pooling that halves the size, the channel count doubling per level;
a bottleneck of two 3 x 3 convolutions; an expansive path whose levels upsample by a 2 x 2
up-convolution that halves the channels, concatenate the contracting path's feature map of that
level (cropped to the upsampled size in the unpadded variant) and apply two 3 x 3 convolutions;
a final 1 x 1 convolution maps to ``num_classes`` logits.

Two variants:

* ``padded=False`` -- the paper's network: unpadded ("valid") convolutions, so the output is
  smaller than the input by a fixed margin on each side, and only certain input sizes are
  valid. With ``depth=4``, ``base_channels=64``, no normalisation and one input channel it is the
  paper's network exactly: 572 x 572 in, 388 x 388 out, 31,030,658 parameters. Whole slices are
  segmented with the overlap-tile strategy (:mod:`unet_pipeline.model.tiling`).
* ``padded=True`` (default) -- zero-padded convolutions with normalisation: output size equals
  input size. Inputs of any size are accepted: they are padded (reflect) up to a multiple of
  ``2 ** depth`` (at least ``2 ** (depth + 1)``) and the logits cropped back.

Tensors: input ``(N, C_in, H, W)`` float32 (normalised CT, ``C_in`` neighbouring slices),
output ``(N, num_classes, H_out, W_out)`` float32 logits (no softmax). Weights are initialised
as in the paper: normal with std ``sqrt(2 / fan_in)`` (He) for every convolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import with_schema_defaults

__all__ = ["UNetConfig", "UNet2d", "InstanceNorm", "build_unet", "count_parameters", "NORMS", "UPSAMPLES"]

NORMS = ("instance", "batch", "none")
UPSAMPLES = ("transpose", "bilinear")


@dataclass(frozen=True)
@with_schema_defaults("model")  # defaults: the config schema's model section
class UNetConfig:
    """Architecture of a :class:`UNet2d`; stored in ``model.json`` under ``architecture``.

    Attributes
    ----------
    num_classes
        Output channels including background (>= 2).
    in_channels
        Input channels: neighbouring slices stacked as channels (odd, >= 1).
    base_channels
        Feature maps of the first level (paper: 64); doubled per level.
    depth
        Number of pooling steps (paper: 4).
    padded
        Zero-padded convolutions (output size = input size) instead of the paper's valid ones.
    norm
        ``"instance"``, ``"batch"`` or ``"none"`` (paper: none) after every 3 x 3 convolution.
    upsample
        ``"transpose"`` (the paper's 2 x 2 up-convolution) or ``"bilinear"`` + 1 x 1 convolution.
    dropout
        Dropout probability at the end of the contracting path (the paper uses drop-out layers there).
    """

    num_classes: int
    in_channels: int
    base_channels: int
    depth: int
    padded: bool
    norm: str
    upsample: str
    dropout: float

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"UNetConfig.{name}={value!r} is invalid: expected {allowed}")

        if int(self.num_classes) < 2:
            raise bad("num_classes", self.num_classes, "an integer >= 2 (background + at least one class)")
        if int(self.in_channels) < 1 or int(self.in_channels) % 2 == 0:
            raise bad("in_channels", self.in_channels, "an odd integer >= 1 (centre slice +- neighbours)")
        if not 1 <= int(self.base_channels) <= 1024:
            raise bad("base_channels", self.base_channels, "an integer in [1, 1024]")
        if not 1 <= int(self.depth) <= 7:
            raise bad("depth", self.depth, "an integer in [1, 7]")
        if self.norm not in NORMS:
            raise bad("norm", self.norm, f"one of {NORMS}")
        if self.upsample not in UPSAMPLES:
            raise bad("upsample", self.upsample, f"one of {UPSAMPLES}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise bad("dropout", self.dropout, "a probability in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        """Build from a mapping (config section or ``model.json``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown U-Net option(s) {unknown}; known: {sorted(known)}")
        types = {"num_classes": int, "in_channels": int, "base_channels": int, "depth": int,
                 "padded": bool, "norm": str, "upsample": str, "dropout": float}
        return cls(**{k: types[k](v) for k, v in data.items()})


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation with a learned scale and shift per channel, as one group per channel.

    The same function as ``nn.InstanceNorm2d(channels, affine=True)`` (mean and variance over
    ``(H, W)`` of each sample and channel, ``eps`` 1e-5) and the same parameters (``weight``,
    ``bias``: ``(C,)``), so weights saved from either load into the other. Written as a group norm
    because PyTorch's group norm keeps a channels-last tensor channels-last, while its instance
    norm converts it to contiguous and back: on a 2-core CPU the shipped U-Net infers 1.6x faster
    this way (``bench/bench_forward.py``), and trains 1.7x faster on 256 x 256 patches (no
    difference on 128 x 160).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, channels, eps=eps, affine=True)


class _DoubleConv(nn.Sequential):
    """Two 3 x 3 convolutions, each followed by optional normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, padded: bool, norm: str) -> None:
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers.append(nn.Conv2d(c, c_out, 3, padding=1 if padded else 0, bias=norm == "none"))
            if norm == "instance":
                layers.append(InstanceNorm(c_out))
            elif norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _Up(nn.Module):
    """Upsample x2 halving the channels, concatenate the (cropped) skip, two 3 x 3 convolutions."""

    def __init__(self, c_in: int, c_out: int, padded: bool, norm: str, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(c_in, c_out, 1))
        self.conv = _DoubleConv(2 * c_out, c_out, padded, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dh or dw:  # unpadded variant: centre-crop the skip connection (paper, Fig. 1 "copy and crop")
            skip = skip[..., dh // 2: dh // 2 + x.shape[-2], dw // 2: dw // 2 + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet2d(nn.Module):
    """2D U-Net: ``(N, in_channels, H, W)`` float32 -> ``(N, num_classes, H_out, W_out)`` logits.

    ``H_out = H`` for the padded variant; ``output_size(H)`` (= ``H - 2 * margin()``) for the
    unpadded one, where ``H`` must be a valid size (see :meth:`valid_input_size`).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, norm, padded = config.base_channels, config.norm, config.padded
        chans = [c * 2 ** i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_DoubleConv(config.in_channels, chans[0], padded, norm)])
        self.down.extend(_DoubleConv(chans[i], chans[i + 1], padded, norm) for i in range(config.depth))
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(_Up(chans[i + 1], chans[i], padded, norm, config.upsample)
                                for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(chans[0], config.num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                if isinstance(m, nn.ConvTranspose2d):  # weight is (C_in, C_out, k, k); each output sees C_in * k * k / 4
                    fan_in = m.weight.shape[0]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- geometry of the unpadded variant ------------------------------------------------------

    def output_size(self, size: int) -> int:
        """Output side length for an input side ``size``; raises ``ValueError`` if ``size`` is invalid."""
        if self.config.padded:
            return int(size)
        n, d = int(size), self.config.depth
        for level in range(d):
            n -= 4
            if n <= 0 or n % 2:
                raise ValueError(f"input size {size} is invalid for the unpadded U-Net (depth {d}): "
                                 f"feature map of {n} px before pooling {level + 1}; valid sizes are "
                                 f"{self.valid_input_size(size)}, {self.valid_input_size(size) + 2 ** d}, ...")
            n //= 2
        n -= 4
        if n <= 0:
            raise ValueError(f"input size {size} is too small for the unpadded U-Net (depth {d}); "
                             f"the smallest valid size is {self.valid_input_size(1)}")
        for _ in range(d):
            n = 2 * n - 4
        return n

    def margin(self) -> int:
        """Pixels lost on each side by the unpadded variant (92 for depth 4); 0 when padded."""
        if self.config.padded:
            return 0
        size = self.valid_input_size(1)
        return (size - self.output_size(size)) // 2

    def valid_input_size(self, at_least: int) -> int:
        """Smallest valid input side >= ``at_least`` (any size for the padded variant)."""
        if self.config.padded:
            return int(at_least)
        d = self.config.depth
        b = 1  # bottom feature map size; walk up: two convolutions (+4), then un-pool (x2)
        while True:
            n = b + 4
            for _ in range(d):
                n = 2 * n + 4
            if n >= at_least:
                return n
            b += 1

    def valid_output_size(self, at_least: int) -> int:
        """Smallest achievable output side >= ``at_least``."""
        if self.config.padded:
            return int(at_least)
        return self.output_size(self.valid_input_size(int(at_least) + 2 * self.margin()))

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, skips = self._encode(self._pad_input(x))
        x = self.dropout(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        x = self.head(x)
        if self.config.padded and (x.shape[-2] != h or x.shape[-1] != w):
            top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
            x = x[..., top:top + h, left:left + w]
        return x

    def bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """The deepest feature map of ``x`` ``(N, in_channels, H, W)``: ``(N, base * 2**depth, h, w)``,
        and the ``(top, bottom, left, right)`` px the padded variant added around ``x`` (the map
        covers the padded input, ``2**depth`` px of it per position). The unpadded variant needs a
        valid input size and adds nothing."""
        padded = self._pad_input(x)
        ph, pw = padded.shape[-2] - x.shape[-2], padded.shape[-1] - x.shape[-1]
        return self._encode(padded)[0], (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if not self.config.padded:
            self.output_size(h), self.output_size(w)  # validate with a readable error
            return x
        # Pad to a multiple of 2**depth, at least 2 * 2**depth so the bottom map is >= 2 x 2
        # (instance normalisation needs more than one value per channel).
        m = 2 ** self.config.depth
        ph, pw = max((-h) % m, 2 * m - h), max((-w) % m, 2 * m - w)
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
        return x

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The contracting path: the bottom feature map and the skip maps, shallowest first."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.config.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        return x, skips


def build_unet(config: UNetConfig | Mapping[str, Any]) -> UNet2d:
    """A freshly initialised :class:`UNet2d` from a config or its dict form."""
    return UNet2d(config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
