"""Batched data augmentation on the training device.

One call of :func:`augment_batch` augments a whole batch of 2-D patches with torch operations on
the device the batch lives on (CPU or CUDA): the spatial transforms of each sample (rotation,
scaling, mirroring and the U-Net paper's elastic deformation) are composed into ONE sampling grid
per sample, and the batch is resampled with one :func:`torch.nn.functional.grid_sample` call for
the image, one for the label and one for the weight map. Intensity transforms (gamma, brightness,
contrast, Gaussian noise) follow, vectorised over the batch.

Random numbers are all drawn on the CPU (or wherever ``generator`` lives) from the given
:class:`torch.Generator` in a fixed order, then moved to the device, so one seed gives the same
parameters on every device; the draws do not depend on the probabilities, so changing one
probability does not reshuffle the other transforms.

Coordinates: ``x`` is the column (last array axis), ``y`` the row; displacements and sizes are
in pixels (px) of the patch.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..schema import with_schema_defaults

__all__ = ["AugmentConfig", "elastic_displacement", "augment_batch", "mirroring_record"]

log = logging.getLogger(__name__)

# Padding for samples that fall outside the patch. "reflection" (about the edge pixel centres,
# align_corners=True) for image, label and weight alike: the rotated/deformed patch corners are
# filled with plausible mirrored anatomy instead of a constant (a z-score of 0 is soft tissue in
# the middle of air, "zeros") or streaks ("border"), and the label stays aligned with the image
# there because both are padded the same way.
_PADDING_MODE = "reflection"

_PROBABILITIES = ("elastic_p", "rotate_p", "scale_p", "mirror_p", "gamma_p", "noise_p", "contrast_p", "brightness_p",
                  "organ_shift_p")
#: Independent organ shifts drawn per sample; class k uses draw (k - 1) mod this.
_ORGAN_DRAWS = 16
_MIRROR_AXES = ("x", "y")


@dataclass(frozen=True)
@with_schema_defaults("augment")  # defaults: the config schema's augment section
class AugmentConfig:
    """Probabilities and ranges of the augmentations; each applies per sample with its probability.

    Attributes
    ----------
    elastic_p, elastic_grid, elastic_sigma_px
        Elastic deformation (paper): random displacements on an ``elastic_grid`` x ``elastic_grid``
        lattice spanning the patch, each component ~ N(0, ``elastic_sigma_px``^2) px, bicubic
        interpolation in between.
    rotate_p, rotate_deg
        In-plane rotation by an angle uniform in ``[-rotate_deg, rotate_deg]`` degrees about the
        patch centre.
    scale_p, scale_range
        Zoom by a factor uniform in ``scale_range`` (> 1 enlarges the content).
    mirror_p, mirror_axes
        Flip along each listed axis (``"x"``: left-right, the last array axis; ``"y"``: up-down)
        independently with probability ``mirror_p``.
    lr_label_pairs
        Label pairs ``(a, b)`` swapped when a sample is mirrored along x (e.g. left and right
        kidney), so that a mirrored left organ is labelled right.
    gamma_p, gamma_range
        ``x -> x^gamma`` on a per-sample min-max-rescaled copy, gamma uniform in ``gamma_range``,
        then rescaled back to the original min and max.
    noise_p, noise_std
        Additive Gaussian noise with standard deviation ``noise_std`` (z-score units).
    contrast_p, contrast_range
        ``x -> (x - mean) * f + mean`` (per-sample mean), f uniform in ``contrast_range``.
    brightness_p, brightness_range
        ``x -> x + b``, b uniform in ``brightness_range`` (z-score units).
    organ_shift_p, organ_shift_hu
        Contrast-phase augmentation in HU: each labelled structure of the sample gets its own
        shift uniform in ``organ_shift_hu`` (HU, e.g. ``[-20, 60]``: from a darker scanner to a
        portal-venous enhancement), applied to the structure's pixels (converted to z-score units
        with the plan's HU per unit), before the other intensity transforms.
    """

    elastic_p: float
    elastic_grid: int
    elastic_sigma_px: float
    rotate_p: float
    rotate_deg: float
    scale_p: float
    scale_range: tuple[float, float]
    mirror_p: float
    mirror_axes: tuple[str, ...]
    lr_label_pairs: tuple[tuple[int, int], ...]
    gamma_p: float
    gamma_range: tuple[float, float]
    noise_p: float
    noise_std: float
    contrast_p: float
    contrast_range: tuple[float, float]
    brightness_p: float
    brightness_range: tuple[float, float]
    organ_shift_p: float
    organ_shift_hu: tuple[float, float]

    def __post_init__(self) -> None:
        # Lists (from YAML/JSON) become tuples so that the config stays hashable and immutable.
        for name in ("scale_range", "gamma_range", "contrast_range", "brightness_range", "organ_shift_hu",
                     "mirror_axes"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        pairs = self.lr_label_pairs
        if isinstance(pairs, (list, tuple)):
            object.__setattr__(self, "lr_label_pairs",
                               tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in pairs))
        _validate_config(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a mapping (e.g. the ``augment`` config section); missing keys keep defaults.

        Raises
        ------
        ConfigError
            (a ValueError) naming the key, for an unknown key or a bad value.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"augment config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown augment config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) that :meth:`from_dict` reads back; YAML/JSON-serialisable."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_config(cfg: AugmentConfig) -> None:
    """Raise ConfigError naming the first bad key of ``cfg``."""
    for key in _PROBABILITIES:
        value = getattr(cfg, key)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be a probability in [0, 1], got {value!r}")
    if isinstance(cfg.elastic_grid, bool) or not isinstance(cfg.elastic_grid, int) or cfg.elastic_grid < 2:
        raise ConfigError(f"elastic_grid must be an integer >= 2 (lattice nodes per axis), got {cfg.elastic_grid!r}")
    for key in ("elastic_sigma_px", "noise_std"):
        value = getattr(cfg, key)
        if not _is_number(value) or value < 0:
            raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")
    if not _is_number(cfg.rotate_deg) or not 0.0 <= cfg.rotate_deg <= 180.0:
        raise ConfigError(f"rotate_deg must be a number in [0, 180] degrees, got {cfg.rotate_deg!r}")
    for key, positive in (("scale_range", True), ("gamma_range", True), ("contrast_range", True),
                          ("brightness_range", False), ("organ_shift_hu", False)):
        value = getattr(cfg, key)
        if not (isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value)):
            raise ConfigError(f"{key} must be a pair [low, high] of finite numbers, got {value!r}")
        low, high = value
        if low > high:
            raise ConfigError(f"{key} must be ordered (low <= high), got {list(value)}")
        if positive and low <= 0:
            raise ConfigError(f"{key} must hold values > 0, got {list(value)}")
    axes = cfg.mirror_axes
    if (not isinstance(axes, tuple) or any(a not in _MIRROR_AXES for a in axes) or len(set(axes)) != len(axes)):
        raise ConfigError(f"mirror_axes must be distinct names from {list(_MIRROR_AXES)}, got {axes!r}")
    seen: set[int] = set()
    for pair in cfg.lr_label_pairs:
        ok = (isinstance(pair, tuple) and len(pair) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair) and pair[0] != pair[1])
        if not ok:
            raise ConfigError(f"lr_label_pairs must hold pairs [a, b] of two different class indices >= 0, "
                              f"got {pair!r}")
        if seen & set(pair):
            raise ConfigError(f"lr_label_pairs uses a class in more than one pair: {cfg.lr_label_pairs!r}")
        seen.update(pair)


def mirroring_record(cfg: AugmentConfig) -> dict[str, list]:
    """The flips a training with ``cfg`` shows the network: ``model.json``'s ``mirroring`` entry.

    Parameters
    ----------
    cfg
        The augmentation the network is trained with, ``lr_label_pairs`` as class indices (output
        channels, as the training loop hands it to :func:`augment_batch`).

    Returns
    -------
    dict
        ``axes``: the mirror axes in ``("x", "y")`` order, empty when ``mirror_p`` is 0;
        ``lr_class_pairs``: the class-index pairs swapped with an ``x`` flip (empty without one).
        Mirror test-time augmentation uses exactly these (:mod:`unet_pipeline.infer.tta`).
    """
    axes = [a for a in _MIRROR_AXES if a in cfg.mirror_axes] if cfg.mirror_p > 0 else []
    pairs = [[int(a), int(b)] for a, b in cfg.lr_label_pairs] if "x" in axes else []
    return {"axes": axes, "lr_class_pairs": pairs}


# --------------------------------------------------------------------------------------------
# elastic field
# --------------------------------------------------------------------------------------------
def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


@functools.lru_cache(maxsize=64)
def _bicubic_weights(length: int, grid: int, device: torch.device) -> Tensor:
    """``(length, grid)`` float32 weights of 1-D bicubic interpolation from ``grid`` nodes to ``length`` px.

    Row ``l`` holds the weights of the nodes for pixel ``l``; obtained by interpolating the unit
    vectors with ``F.interpolate(mode="bicubic", align_corners=True)`` (in float64), so that
    ``W_y @ nodes @ W_x.T`` is exactly torch's (separable) bicubic interpolation, at a fraction
    of its cost. Rows of lattice nodes are exact unit vectors.
    """
    eye = torch.eye(grid, dtype=torch.float64).view(grid, 1, grid, 1)
    weights = F.interpolate(eye, size=(length, 1), mode="bicubic", align_corners=True)[:, 0, :, 0].T
    return weights.to(device=device, dtype=torch.float32).contiguous()


def _interpolate_nodes(nodes: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic interpolation of lattice displacements ``(n, 2, g, g)`` px to a field ``(n, H, W, 2)`` px.

    ``align_corners=True``: the lattice nodes sit on the pixel centres of the patch corners and
    are evenly spread in between (node ``k`` at pixel ``k * (H - 1) / (g - 1)``). Same result as
    ``F.interpolate(nodes, size, mode="bicubic", align_corners=True)`` (up to float rounding),
    computed as two small matrix products.
    """
    g = nodes.shape[-1]
    wy = _bicubic_weights(size[0], g, nodes.device)
    wx = _bicubic_weights(size[1], g, nodes.device)
    # (n, 2, g, W) -> (n, g, W, 2) -> (n, g, 2W); then (H, g) @ (n, g, 2W) -> (n, H, W, 2)
    along_x = torch.matmul(nodes.float(), wx.T).permute(0, 2, 3, 1).reshape(nodes.shape[0], g, -1)
    return torch.matmul(wy, along_x).view(nodes.shape[0], size[0], size[1], 2)


def _check_size(size: Any) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in size)):
        raise ValueError(f"size must be a pair (H, W) of integers >= 2 px, got {size!r}")
    return int(size[0]), int(size[1])


def elastic_displacement(n: int, size: tuple[int, int], *, grid: int = 3, sigma_px: float = 10.0,
                         generator: torch.Generator | None = None, device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """Random smooth displacement fields: the U-Net paper's elastic deformation.

    A displacement vector per node of a ``grid`` x ``grid`` lattice, each component drawn
    ~ N(0, ``sigma_px``^2) px (``torch.randn((n, 2, grid, grid), generator=generator) * sigma_px``
    on the generator's device), is interpolated bicubically
    (``F.interpolate(mode="bicubic", align_corners=True)``) to every pixel. The lattice nodes sit
    on the patch corners and evenly in between, so the field equals the node values there.

    Parameters
    ----------
    n
        Number of fields (>= 0).
    size
        ``(H, W)`` in px, each >= 2.
    grid
        Lattice nodes per axis (>= 2).
    sigma_px
        Standard deviation of each node displacement component, px (>= 0).
    generator
        Source of the random draws (None: torch's global CPU generator).
    device, dtype
        Where and in which float dtype to return the field (default: CPU float32).

    Returns
    -------
    Tensor
        ``(n, H, W, 2)`` displacement in px; last axis ``(dx, dy)`` = (along columns, along rows).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    size = _check_size(size)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2 (lattice nodes per axis), got {grid!r}")
    if not _is_number(sigma_px) or sigma_px < 0:
        raise ValueError(f"sigma_px must be a finite number >= 0 px, got {sigma_px!r}")
    nodes = torch.randn((n, 2, grid, grid), generator=generator, device=_generator_device(generator)) * sigma_px
    if n == 0:
        return torch.zeros((0, *size, 2), device=device, dtype=dtype)
    return _interpolate_nodes(nodes.to(device), size).to(dtype)


# --------------------------------------------------------------------------------------------
# augment_batch
# --------------------------------------------------------------------------------------------
class _Draws(NamedTuple):
    """Per-sample random parameters, all on the CPU/generator device; ``(n,)`` unless noted."""

    elastic: Tensor  # bool
    rotate: Tensor  # bool
    scale: Tensor  # bool
    mirror_x: Tensor  # bool
    mirror_y: Tensor  # bool
    gamma: Tensor  # bool
    noise: Tensor  # bool
    contrast: Tensor  # bool
    brightness: Tensor  # bool
    angle_rad: Tensor  # float
    scale_factor: Tensor  # float
    gamma_value: Tensor  # float
    contrast_factor: Tensor  # float
    brightness_shift: Tensor  # float
    nodes: Tensor  # (n, 2, g, g) float, px
    organ_shift: Tensor  # bool
    organ_shift_hu: Tensor  # (n, _ORGAN_DRAWS) float, HU


def _uniform(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _draw(n: int, cfg: AugmentConfig, generator: torch.Generator | None) -> _Draws:
    """All random draws except the noise images, in a fixed order independent of the probabilities."""
    dev = _generator_device(generator)
    coin = torch.rand((n, 9), generator=generator, device=dev, dtype=torch.float64).cpu()
    value = torch.rand((n, 5), generator=generator, device=dev, dtype=torch.float64).cpu()
    nodes = torch.randn((n, 2, cfg.elastic_grid, cfg.elastic_grid), generator=generator, device=dev)
    organ = torch.rand((n, 1 + _ORGAN_DRAWS), generator=generator, device=dev, dtype=torch.float64).cpu()
    return _Draws(
        elastic=coin[:, 0] < cfg.elastic_p,
        rotate=coin[:, 1] < cfg.rotate_p,
        scale=coin[:, 2] < cfg.scale_p,
        mirror_x=(coin[:, 3] < cfg.mirror_p) & ("x" in cfg.mirror_axes),
        mirror_y=(coin[:, 4] < cfg.mirror_p) & ("y" in cfg.mirror_axes),
        gamma=coin[:, 5] < cfg.gamma_p,
        noise=coin[:, 6] < cfg.noise_p,
        contrast=coin[:, 7] < cfg.contrast_p,
        brightness=coin[:, 8] < cfg.brightness_p,
        angle_rad=_uniform(value[:, 0], (-cfg.rotate_deg, cfg.rotate_deg)) * (math.pi / 180.0),
        scale_factor=_uniform(value[:, 1], cfg.scale_range),
        gamma_value=_uniform(value[:, 2], cfg.gamma_range),
        contrast_factor=_uniform(value[:, 3], cfg.contrast_range),
        brightness_shift=_uniform(value[:, 4], cfg.brightness_range),
        nodes=nodes.cpu() * cfg.elastic_sigma_px,
        organ_shift=organ[:, 0] < cfg.organ_shift_p,
        organ_shift_hu=_uniform(organ[:, 1:], cfg.organ_shift_hu),
    )


def _sampling_grid(d: _Draws, idx: Tensor, size: tuple[int, int], device: torch.device) -> Tensor:
    """Normalised ``grid_sample`` grid ``(m, H, W, 2)`` for the samples ``idx`` (m of them).

    For an output pixel ``p`` (px) with patch centre ``c``, the source position is
    ``q = c + M (p - c + e(p))`` with ``e`` the elastic displacement and
    ``M = mirror @ rotation(angle) / scale``, all in px so that rotations stay angle-true on
    non-square patches; ``q`` is then mapped to ``[-1, 1]`` (``align_corners=True``).

    In normalised coordinates ``p_n = (p - c) / c`` this is
    ``g = S M D p_n + bicubic(S M nodes)`` with ``S = diag(1/cx, 1/cy)``, ``D = diag(cx, cy)``:
    the elastic term is linear in the node values, so ``S M`` is applied to the g x g nodes
    before interpolating. Both terms are separable, so the grid of each coordinate is one
    product ``L_y @ C @ L_x.T`` with ``L_y = [W_y | y_n | 1]``, ``L_x = [W_x | x_n | 1]`` and a
    small ``(g + 2, g + 2)`` coefficient matrix ``C`` per sample.
    """
    h, w = size
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    m = idx.numel()
    g = d.nodes.shape[-1]
    # Per-sample 2x2 matrices S M (rows: output x, y; columns: input u, v), float64 on the CPU.
    angle = torch.where(d.rotate[idx], d.angle_rad[idx], torch.zeros(m, dtype=torch.float64))
    inv_scale = torch.where(d.scale[idx], 1.0 / d.scale_factor[idx], torch.ones(m, dtype=torch.float64))
    fx = torch.where(d.mirror_x[idx], -1.0, 1.0).double() * inv_scale / cx
    fy = torch.where(d.mirror_y[idx], -1.0, 1.0).double() * inv_scale / cy
    cos, sin = torch.cos(angle), torch.sin(angle)
    sm = torch.stack([torch.stack([fx * cos, -fx * sin], -1), torch.stack([fy * sin, fy * cos], -1)], -2)

    coef = torch.zeros(m, 2, g + 2, g + 2, dtype=torch.float64)
    nodes = d.nodes[idx].double() * d.elastic[idx].view(-1, 1, 1, 1)
    coef[:, :, :g, :g] = torch.einsum("mkc,mcij->mkij", sm, nodes)
    coef[:, :, g + 1, g] = sm[:, :, 0] * cx  # (S M D)[k, 0] * x_n   (row "1", column "x_n")
    coef[:, :, g, g + 1] = sm[:, :, 1] * cy  # (S M D)[k, 1] * y_n   (row "y_n", column "1")
    coef = coef.to(device=device, dtype=torch.float32)

    ones_h = torch.ones(h, 1, device=device)
    ones_w = torch.ones(w, 1, device=device)
    y_n = torch.linspace(-1.0, 1.0, h, device=device).view(h, 1)
    x_n = torch.linspace(-1.0, 1.0, w, device=device).view(w, 1)
    left = torch.cat([_bicubic_weights(h, g, device), y_n, ones_h], 1)  # (H, g + 2)
    right = torch.cat([_bicubic_weights(w, g, device), x_n, ones_w], 1)  # (W, g + 2)
    # (m, 2, g+2, W) -> (m, g+2, W, 2) -> (m, g+2, 2W); (H, g+2) @ that -> (m, H, W, 2)
    along_x = torch.matmul(coef, right.T).permute(0, 2, 3, 1).reshape(m, g + 2, 2 * w)
    return torch.matmul(left, along_x).view(m, h, w, 2)


def _swap_labels(label: Tensor, flip: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
    """Swap each pair ``(a, b)`` of classes in the samples of ``label`` ``(m, H, W)`` where ``flip``."""
    if not pairs or not bool(flip.any()):
        return label
    out = label.clone()
    sel = flip.to(label.device).view(-1, 1, 1)
    for a, b in pairs:
        out = torch.where(sel & (label == a), b, out)
        out = torch.where(sel & (label == b), a, out)
    return out


def _apply_spatial(image: Tensor, label: Tensor, weight: Tensor | None, cfg: AugmentConfig,
                   d: _Draws) -> tuple[Tensor, Tensor, Tensor | None]:
    """Resample the samples that have any spatial transform; the others are returned untouched."""
    active = d.elastic | d.rotate | d.scale | d.mirror_x | d.mirror_y
    if not bool(active.any()):
        return image, label, weight
    n, _, h, w = image.shape
    idx = torch.nonzero(active).view(-1)
    everything = idx.numel() == n
    dev_idx = idx.to(image.device)

    def pick(t: Tensor) -> Tensor:
        return t if everything else t.index_select(0, dev_idx)

    def put(full: Tensor, part: Tensor) -> Tensor:
        if everything:
            return part
        out = full.clone()
        out[dev_idx] = part
        return out

    grid = _sampling_grid(d, idx, (h, w), image.device)
    kw = {"padding_mode": _PADDING_MODE, "align_corners": True}
    new_image = F.grid_sample(pick(image), grid.to(image.dtype), mode="bilinear", **kw)
    lab = F.grid_sample(pick(label).unsqueeze(1).float(), grid, mode="nearest", **kw)
    new_label = _swap_labels(lab.squeeze(1).round().to(label.dtype), d.mirror_x[idx], cfg.lr_label_pairs)
    new_weight = None
    if weight is not None:
        # float32 whatever the stored dtype (e.g. float16 maps), cast back afterwards
        sampled = F.grid_sample(pick(weight).unsqueeze(1).float(), grid, mode="bilinear", **kw)
        new_weight = put(weight, sampled.squeeze(1).to(weight.dtype))
    return put(image, new_image), put(label, new_label), new_weight


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``(n,)`` CPU values as an ``(n, 1, 1, 1)`` tensor on ``like``'s device and dtype."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def _apply_intensity(image: Tensor, cfg: AugmentConfig, d: _Draws, generator: torch.Generator | None) -> Tensor:
    """Gamma, brightness, contrast, then noise; each only on its selected samples."""
    if bool(d.gamma.any()):
        flat = image.flatten(1)
        low = flat.min(1).values.view(-1, 1, 1, 1)
        span = (flat.max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-7)
        unit = ((image - low) / span).clamp(0.0, 1.0)
        gamma = unit.pow(_per_sample(d.gamma_value, image)) * span + low
        image = torch.where(_per_sample(d.gamma, image).bool(), gamma, image)
    if bool(d.brightness.any()):
        image = torch.where(_per_sample(d.brightness, image).bool(), image + _per_sample(d.brightness_shift, image),
                            image)
    if bool(d.contrast.any()):
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        contrast = (image - mean) * _per_sample(d.contrast_factor, image) + mean
        image = torch.where(_per_sample(d.contrast, image).bool(), contrast, image)
    if bool(d.noise.any()) and cfg.noise_std > 0:
        idx = torch.nonzero(d.noise).view(-1)
        noise = torch.randn((idx.numel(), *image.shape[1:]), generator=generator,
                            device=_generator_device(generator)) * cfg.noise_std
        image = image.clone()
        dev_idx = idx.to(image.device)
        image[dev_idx] = image[dev_idx] + noise.to(device=image.device, dtype=image.dtype)
    return image


def _check_batch(image: Any, label: Any, weight: Any, config: Any) -> None:
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    if not isinstance(image, Tensor) or image.ndim != 4 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor (N, C, H, W), got "
                         f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}")
    n, _, h, w = image.shape
    if h < 2 or w < 2:
        raise ValueError(f"image patches must be at least 2 x 2 px, got H={h}, W={w}")
    if (not isinstance(label, Tensor) or tuple(label.shape) != (n, h, w) or label.is_floating_point()
            or label.dtype == torch.bool):
        raise ValueError(f"label must be an integer tensor (N, H, W) = {(n, h, w)}, got "
                         f"{type(label).__name__} {getattr(label, 'dtype', '')} {tuple(getattr(label, 'shape', ()))}")
    if label.device != image.device:
        raise ValueError(f"label is on {label.device} but image on {image.device}; put both on one device")
    if weight is not None:
        if not isinstance(weight, Tensor) or tuple(weight.shape) != (n, h, w) or not weight.is_floating_point():
            raise ValueError(f"weight must be None or a float tensor (N, H, W) = {(n, h, w)}, got "
                             f"{type(weight).__name__} {getattr(weight, 'dtype', '')} "
                             f"{tuple(getattr(weight, 'shape', ()))}")
        if weight.device != image.device:
            raise ValueError(f"weight is on {weight.device} but image on {image.device}; put both on one device")


def _apply_organ_shift(image: Tensor, label: Tensor, d: _Draws, hu_per_unit: float) -> Tensor:
    """Add each selected sample's per-structure HU shift to the pixels of that structure."""
    if not bool(d.organ_shift.any()):
        return image
    table = torch.zeros(image.shape[0], _ORGAN_DRAWS + 1, dtype=torch.float64)
    table[:, 1:] = d.organ_shift_hu * d.organ_shift.view(-1, 1) / hu_per_unit  # column 0: background, no shift
    table = table.to(device=image.device, dtype=image.dtype)
    cls = torch.where(label > 0, (label - 1) % _ORGAN_DRAWS + 1, torch.zeros_like(label)).long()
    shift = torch.gather(table, 1, cls.view(cls.shape[0], -1)).view_as(cls)  # (N, H, W)
    return image + shift.unsqueeze(1)


def augment_batch(image: Tensor, label: Tensor, config: AugmentConfig, *, weight: Tensor | None = None,
                  generator: torch.Generator | None = None, hu_per_unit: float = 1.0
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Augment a batch of 2-D patches on its own device.

    Spatial transforms (rotation, scaling, mirroring, elastic deformation) are composed into one
    sampling grid per sample (see :class:`AugmentConfig`); the samples that draw at least one of
    them are resampled with one ``grid_sample`` call each for image (bilinear), label (nearest)
    and weight map (bilinear), with reflection padding; samples that draw none keep their
    pixels bit for bit through this stage. Mirroring along x swaps the classes of
    ``config.lr_label_pairs``. Intensity transforms then run in the order organ shift, gamma,
    brightness, contrast, noise, on the image only.

    Parameters
    ----------
    image
        ``(N, C, H, W)`` float patches (z-scores; C channels = neighbouring slices share one
        transform), H, W >= 2 px.
    label
        ``(N, H, W)`` integer class indices (e.g. int64), same device as ``image``.
    config
        Probabilities and ranges.
    weight
        ``(N, H, W)`` float pixel weights (paper weight map) or None.
    generator
        Source of all random draws (e.g. ``torch.Generator().manual_seed(s)`` on the CPU); None
        uses torch's global CPU generator. The same generator state gives the same batch.
    hu_per_unit
        HU per z-score unit of ``image`` (the plan's ``intensity.std``), for the HU ranges of
        ``organ_shift_hu``.

    Returns
    -------
    image, label, weight
        Same shapes, dtypes and device as the inputs (``weight`` None when given None). When no
        transform is drawn the input tensors themselves are returned (no copy); inputs are never
        modified in place.
    """
    _check_batch(image, label, weight, config)
    n = image.shape[0]
    if n == 0:
        return image, label, weight
    draws = _draw(n, config, generator)
    image, label, weight = _apply_spatial(image, label, weight, config, draws)
    image = _apply_organ_shift(image, label, draws, hu_per_unit)
    image = _apply_intensity(image, config, draws, generator)
    return image, label, weight
