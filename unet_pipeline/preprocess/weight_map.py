"""The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2), computed per label slice."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from ..errors import check_nonneg_float

__all__ = ["unet_weight_map"]

log = logging.getLogger(__name__)


# The border term is dropped where d1 + d2 > _CUTOFF_SIGMAS * sigma: there it is below
# w0 * exp(-_CUTOFF_SIGMAS**2 / 2) = w0 * 1.5e-8.
_CUTOFF_SIGMAS = 6.0


# --------------------------------------------------------------------------------------------
# the U-Net paper's weight map
# --------------------------------------------------------------------------------------------
def _class_balance_weights(label: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
    """``w_c(x)`` as float64 ``(H, W)``: given per-class weights, or inverse frequencies with pixel-mean 1."""
    if class_weights is not None:
        cw = np.asarray(class_weights, dtype=np.float64)
        if cw.ndim != 1:
            raise ValueError(f"class_weights must be a 1-D array indexed by class, got shape {cw.shape}")
        if not np.all(np.isfinite(cw)) or np.any(cw < 0):
            raise ValueError(f"class_weights must be finite and >= 0, got {cw.tolist()}")
        if label.size and int(label.max()) >= cw.size:
            raise ValueError(f"class_weights has {cw.size} entries but label holds class {int(label.max())}; "
                             f"it needs one entry per class 0..{int(label.max())}")
        return cw[label]
    classes, inverse, counts = np.unique(label, return_inverse=True, return_counts=True)
    # 1 / freq_c, normalised so that sum_c freq_c * w_c = 1 (pixel mean 1): w_c = 1 / (n_classes * freq_c).
    per_class = label.size / (classes.size * counts.astype(np.float64))
    return per_class[inverse.reshape(label.shape)]


def _two_nearest_object_distances(objects: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px) to the nearest and second-nearest object, exact up to ``cutoff`` (inf beyond).

    Each object's Euclidean distance transform is computed on its bounding box grown by
    ``cutoff`` px; the crop holds the whole object, so distances inside it are exact, and every
    pixel outside it is farther than ``cutoff`` from the object.
    """
    h, w = objects.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    margin = int(math.ceil(cutoff))
    for index, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        y0, y1 = max(box[0].start - margin, 0), min(box[0].stop + margin, h)
        x0, x1 = max(box[1].start - margin, 0), min(box[1].stop + margin, w)
        dist = ndimage.distance_transform_edt(objects[y0:y1, x0:x1] != index)
        near, second = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        second[...] = np.minimum(second, np.maximum(near, dist))
        near[...] = np.minimum(near, dist)
    return d1, d2


def unet_weight_map(label: np.ndarray, *, w0: float = 10.0, sigma_px: float = 5.0,
                    class_weights: np.ndarray | None = None, background: int = 0) -> np.ndarray:
    """Pixel weights of the U-Net paper (eq. 2) for one 2-D label map.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` where ``d1``/``d2`` are the
    Euclidean distances (px) from ``x`` to the nearest pixel of the nearest and the
    second-nearest object. Objects are the connected components (4-connectivity,
    :func:`scipy.ndimage.label`) of the foreground ``label != background``, whatever their class,
    so two touching organs of different classes form one object. The border term is added to
    background pixels only (it makes the network learn the thin background gaps between
    touching objects); with fewer than two objects it is 0. It is exact where
    ``d1 + d2 <= 6 sigma`` and set to 0 beyond, where it is below ``w0 * 1.5e-8``.

    Parameters
    ----------
    label
        ``(H, W)`` integer class map (non-negative class indices, e.g. uint8).
    w0
        Border weight (>= 0); the paper uses 10.
    sigma_px
        Width of the border term in px (> 0); the paper uses about 5.
    class_weights
        ``(n_classes,)`` float weights indexed by class, ``w_c(x) = class_weights[label[x]]``. None:
        balance the class frequencies of this map, ``w_c = 1 / freq_c`` over the classes present,
        scaled so that the pixel mean of ``w_c`` is 1 (a map holding one class gets ``w_c = 1``).
        Per-slice balancing gives a rare class a weight of about ``1 / (n_present * freq_c)``, e.g.
        ~1e5 for one pixel of a 512 x 512 slice; pass dataset-wide weights to avoid that.
    background
        Class index of the background.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 weights (dimensionless, > 0 where ``w_c`` > 0).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D (H, W) class map, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"label must have an integer dtype (class indices), got {label.dtype}")
    if label.size and int(label.min()) < 0:
        raise ValueError(f"label class indices must be >= 0, got minimum {int(label.min())}")
    w0 = check_nonneg_float(w0, "w0")
    sigma_px = check_nonneg_float(sigma_px, "sigma_px", positive=True)
    if isinstance(background, bool) or not isinstance(background, (int, np.integer)):
        raise TypeError(f"background must be an integer class index, got {background!r}")

    weights = _class_balance_weights(label, class_weights)
    foreground = label != background
    objects, n_objects = ndimage.label(foreground)
    if n_objects >= 2 and w0 > 0:
        cutoff = _CUTOFF_SIGMAS * sigma_px
        d1, d2 = _two_nearest_object_distances(objects, cutoff)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma_px**2))
        border[foreground] = 0.0
        weights = weights + border
    log.debug("weight map %s: %d objects, max weight %.3g", label.shape, n_objects, float(weights.max(initial=0.0)))
    return weights.astype(np.float32)
