"""Mirror test-time augmentation with the flips the model was trained with.

A network trained without mirroring has never seen a mirrored body, and one trained with
left/right label pairs (``augment.lr_label_pairs``) calls a mirrored left kidney "right": so the
flips of test-time augmentation are only those of training, recorded in ``model.json`` under
``mirroring`` (:func:`unet_pipeline.train.augment.mirroring_record`), and the probabilities of a
left-right flipped pass get their left/right channels swapped back, as training swapped the labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = ["MirrorTTA", "trained_mirroring"]

log = logging.getLogger(__name__)

#: Mirror axis name -> dimension of an ``(N, C, H, W)`` tensor (``x``: columns, left-right).
_DIMS = {"x": 3, "y": 2}


def trained_mirroring(meta: Mapping) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """The mirror axes of training and its left/right pairs as class indices, from ``model.json``.

    Parameters
    ----------
    meta
        ``model.json`` content. Its ``mirroring`` record (``{"axes": [...], "lr_class_pairs":
        [[a, b], ...]}``) is used when present; a model written before that record derives it from
        its ``augmentation`` section (``mirror_p``, ``mirror_axes``, ``lr_label_pairs`` as label
        values, mapped to class indices through ``labels``); a model with neither counts as
        trained without mirroring.

    Returns
    -------
    axes, lr_class_pairs
        Axes in ``("x", "y")`` order (empty: no mirroring in training) and the class-index pairs
        swapped with an ``x`` flip.
    """
    record = meta.get("mirroring")
    if isinstance(record, Mapping):
        axes = tuple(record.get("axes") or ())
        pairs = tuple((int(a), int(b)) for a, b in record.get("lr_class_pairs") or ())
    else:
        aug = meta.get("augmentation")
        if not isinstance(aug, Mapping) or not float(aug.get("mirror_p", 0.0)) > 0.0:
            return (), ()
        axes = tuple(aug.get("mirror_axes") or ())
        index = {v: k for k, v in enumerate(sorted(int(v) for v in meta.get("labels", {})), start=1)}
        pairs = tuple((index[int(a)], index[int(b)]) for a, b in aug.get("lr_label_pairs") or ()
                      if int(a) in index and int(b) in index)
    unknown = sorted(set(axes) - set(_DIMS))
    if unknown:
        raise ValueError(f"model.json: unknown mirror axes {unknown}; allowed: {sorted(_DIMS)}")
    return tuple(a for a in _DIMS if a in axes), pairs if "x" in axes else ()


class MirrorTTA:
    """Predictor wrapper: the average of the softmax over the unflipped input and one flip per axis.

    For each axis of ``axes`` the input is flipped along it, predicted, and the probabilities are
    flipped back; after an ``x`` (left-right) flip the channels of each pair of
    ``lr_class_pairs`` are swapped back, undoing the label swap of training. Called on
    ``(N, C, H, W)`` float32 input, returns ``(N, K, H', W')`` float32 log-probabilities (of the
    averaged probabilities, floored at 1e-12), which a softmax turns back into that average, as
    :class:`~unet_pipeline.infer.predictor.Ensemble`. ``1 + len(axes)`` passes of ``predictor``.

    Parameters
    ----------
    predictor
        Network or wrapper mapping ``(N, C, H, W)`` to logits or log-probabilities ``(N, K, H', W')``.
    axes
        Distinct names from ``("x", "y")``, at least one; use only those of training
        (:func:`trained_mirroring`).
    lr_class_pairs
        Pairs ``(a, b)`` of class indices (output channels) of left/right structures.
    """

    def __init__(self, predictor: Callable[[torch.Tensor], torch.Tensor], axes: Sequence[str],
                 lr_class_pairs: Sequence[tuple[int, int]] = ()) -> None:
        axes = tuple(axes)
        if not axes or len(set(axes)) != len(axes) or any(a not in _DIMS for a in axes):
            raise ValueError(f"axes must be one or more distinct names from {list(_DIMS)}, got {list(axes)}")
        pairs = tuple((int(a), int(b)) for a, b in lr_class_pairs)
        flat = [c for pair in pairs for c in pair]
        if any(c < 0 for c in flat) or len(set(flat)) != len(flat):
            raise ValueError(f"lr_class_pairs must be pairs of distinct class indices >= 0, each in one pair; "
                             f"got {[list(p) for p in pairs]}")
        self.predictor = predictor
        self.axes = tuple(a for a in _DIMS if a in axes)
        self.lr_class_pairs = pairs

    def _swap(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` ``(N, K, H, W)`` with the channels of each left/right pair exchanged."""
        k = probs.shape[1]
        order = list(range(k))
        for a, b in self.lr_class_pairs:
            if max(a, b) >= k:
                raise ValueError(f"lr_class_pairs {[list(p) for p in self.lr_class_pairs]} name a class >= K={k}")
            order[a], order[b] = b, a
        return probs[:, order]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.predictor(x).float(), dim=1)
        for axis in self.axes:
            dim = _DIMS[axis]
            flipped = torch.softmax(self.predictor(torch.flip(x, (dim,))).float(), dim=1).flip(dim)
            probs += self._swap(flipped) if axis == "x" and self.lr_class_pairs else flipped
        probs /= 1.0 + len(self.axes)
        return torch.log(probs.clamp_min(1e-12))

    def __repr__(self) -> str:
        return f"MirrorTTA({self.predictor!r}, axes={list(self.axes)}, lr_class_pairs={list(self.lr_class_pairs)})"
