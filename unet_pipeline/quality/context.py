"""Does the network see, around a predicted structure, what it saw around that class in training?

A model trained on abdominal scans and given a scan of another body region (a thigh, a head)
still paints its classes somewhere, often with full confidence: on a real extremity CT the
real-data benchmark's model painted a litre of "liver" in thigh muscle (HU like liver's),
with a soft Dice of 0.9. Intensities, volumes and softmax do not tell; the network's own view
of the surroundings does. Per slice and class, the *context descriptor* is the network's deepest
feature map (:meth:`unet_pipeline.model.unet.UNet2d.bottleneck`, ``base * 2**depth`` channels,
each position seeing most of the slice) averaged over the class's pixels, weighted by the share
of each position's block the class covers.

* At training (:func:`fit_context`): the descriptors of the training cases' slices holding each
  class (by their labels, at most :data:`MAX_REFERENCE_SLICES` per class) are the reference.
  A slice's *distance* is the root mean square over channels of its difference to the nearest
  reference descriptor, channels standardised by the reference's spread. The class's threshold is
  :data:`FACTOR` x the 95th percentile of the reference's own distances: each slice to the
  reference slices of *other* cases, or, with one training case, to its slices more than
  :data:`NEIGHBOURS` slices away (narrower: said in ``fitted_on``). Stored in the model folder
  (:data:`CONTEXT_FILE`, safetensors) and described in ``model.json`` (``review.context``).
* At inference (:func:`class_context`): the descriptors of at most :data:`MAX_SLICES` slices of
  each predicted class (evenly spread), their distances in units of the class's threshold
  (``context_distance``, the median over the class's voxels; > 1: unlike training), and
  ``unfamiliar_share``, the share of the class's voxels on slices beyond the threshold. The
  review list (:mod:`unet_pipeline.quality.review`) gives a class with an unfamiliar share of at
  least :data:`UNFAMILIAR_SHARE` a reason to look, and treats it as probably absent ("another
  body region?") when its ``context_distance`` is also at least :data:`ABSENT_DISTANCE`.

Measured on real CT (models trained on the TotalSegmentator example scan; ``bench/bench_qc.py``
for the full table): raw distance per slice for the liver, in standardised units, training
slices to the others 0.14..1.03, the same scan with 40-60 HU of contrast 0.10..0.77, another
scanner's abdomen (dcmqi, 0.8 mm pixels) 1.42..5.14 on its 3 slices, an extremity CT 2.4..19
(median 7.5). With :data:`FACTOR` 3, on five models (600 steps, seeds 0 and 1; three runs of
the 3-minute default) every class segmented on the extremity CT measured 2.4..27 thresholds,
the other scanner's liver 0.6..1.5, the training scan under a cut field of view, other slice
thickness, noise up to 60 HU or blur up to 2 px at most 1.96, under a +90..150 HU contrast phase
up to 2.3 with its Dice still 0.90. The groups overlap; :data:`ABSENT_DISTANCE` 2.5 sits at the
edge of both (one extremity liver of five measured 2.4). What goes past it besides another body
region are strong artefacts (800 HU streaks) and, once, a +150 HU contrast phase (a kidney of
true Dice 0.72). See the README's "Which cases to review first".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ABSENT_DISTANCE", "CONTEXT_FILE", "FACTOR", "MAX_SLICES", "MAX_REFERENCE_SLICES", "NEIGHBOURS",
           "UNFAMILIAR_SHARE", "slice_descriptors", "fit_context", "save_context", "load_context", "class_context"]

log = logging.getLogger(__name__)

#: The model folder's file holding the reference descriptors.
CONTEXT_FILE = "review_context.safetensors"
#: Threshold = this x the 95th percentile of the reference's own distances.
FACTOR = 3.0
#: At most this many slices per predicted class are described at inference.
MAX_SLICES = 16
#: At most this many reference slices per class (evenly spread over the training cases' slices).
MAX_REFERENCE_SLICES = 200
#: With one training case, a reference slice is compared with the slices more than this many away.
NEIGHBOURS = 2
#: A class with at least this share of its voxels on unfamiliar slices gets a reason in the review list.
UNFAMILIAR_SHARE = 0.5
#: ... and, with a ``context_distance`` of at least this many thresholds, is probably not there.
ABSENT_DISTANCE = 2.5


def _inputs(volume, z: int, in_slices: int) -> np.ndarray:
    """``(1, in_slices, Y, X)`` float32 network input of slice ``z`` of ``volume`` ``(Z, Y, X)`` (an array
    or a :class:`~unet_pipeline.io.npy.NpyReader`: only the slices needed are read); edges repeat."""
    from ..preprocess.slice_index import stack_neighbours

    half = in_slices // 2
    lo, hi = max(0, z - half), min(int(volume.shape[0]), z + half + 1)
    slab = np.asarray(volume[lo:hi], np.float32)
    return np.array(stack_neighbours(slab, z - lo, in_slices)[None], np.float32)  # a writable copy


def slice_descriptors(model: torch.nn.Module, volume: np.ndarray, labels: np.ndarray, zs: Sequence[int],
                      num_classes: int, pad_value: float, device: torch.device | str = "cpu") -> np.ndarray:
    """Context descriptors ``(len(zs), num_classes - 1, C)`` float32 of slices ``zs``.

    ``volume`` ``(Z, Y, X)`` z-scores and ``labels`` ``(Z, Y, X)`` class indices on the
    preprocessed grid; ``model`` a :class:`~unet_pipeline.model.unet.UNet2d` in eval mode;
    ``pad_value``: the z-score of air (the unpadded variant's input is padded with it by the
    network's margin and to a valid size). Row ``[i, k - 1]`` is NaN where slice ``zs[i]`` holds no
    pixel of class ``k``.
    """
    device = torch.device(device)
    in_slices = int(model.config.in_channels)
    out = []
    with torch.inference_mode():
        for z in zs:
            x = torch.from_numpy(np.ascontiguousarray(_inputs(volume, int(z), in_slices))).to(device)
            lab = torch.from_numpy(np.asarray(labels[int(z)], np.int64))[None, None].to(device)
            if not model.config.padded:
                h, w = x.shape[-2:]
                grow = 2 * model.margin()  # the context the network crops, as the tiles get
                vh, vw = model.valid_input_size(h + grow), model.valid_input_size(w + grow)
                pad = ((vw - w) // 2, vw - w - (vw - w) // 2, (vh - h) // 2, vh - h - (vh - h) // 2)
                x = F.pad(x, pad, value=float(pad_value))
                lab = F.pad(lab, pad, value=0)
            fmap, (top, bottom, left, right) = model.bottleneck(x)
            lab = F.pad(lab, (left, right, top, bottom), value=0)
            fmap = fmap[0].float()  # (C, h, w)
            rows = []
            for k in range(1, num_classes):
                weight = F.interpolate((lab == k).float(), size=fmap.shape[-2:], mode="area")[0, 0]
                total = float(weight.sum())
                rows.append((fmap * weight).sum(dim=(1, 2)) / total if total > 0
                            else torch.full((fmap.shape[0],), float("nan"), device=device))
            out.append(torch.stack(rows).cpu().numpy())
    return np.stack(out) if out else np.zeros((0, num_classes - 1, 0), np.float32)


def _spread(n: int, at_most: int) -> np.ndarray:
    """Indices of at most ``at_most`` of ``0..n-1``, evenly spread."""
    return np.arange(n) if n <= at_most else np.unique(np.linspace(0, n - 1, at_most).round().astype(int))


def _standardise(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean, scale)`` of ``(n, C)`` descriptors; scale floored at 0.1 x its mean so a
    channel that hardly varies in training does not dominate."""
    mean, std = reference.mean(0), reference.std(0)
    return mean, np.maximum(std, 0.1 * float(std.mean()) + 1e-6)


def _distances(reference: np.ndarray, queries: np.ndarray, mean: np.ndarray, scale: np.ndarray,
               excluded: np.ndarray | None = None) -> np.ndarray:
    """``(m,)`` RMS standardised distance of each query ``(m, C)`` to its nearest reference row
    ``(n, C)``; ``excluded`` ``(m, n)`` bool masks pairs that may not count."""
    a = (reference - mean) / scale
    b = (queries - mean) / scale
    d2 = ((b * b).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2.0 * b @ a.T) / a.shape[1]
    d2 = np.maximum(d2, 0.0)
    if excluded is not None:
        d2 = np.where(excluded, np.inf, d2)
    return np.sqrt(d2.min(1))


def fit_context(model: torch.nn.Module, cases: Sequence, class_names: Sequence[str],
                device: torch.device | str = "cpu") -> tuple[dict, dict[str, np.ndarray]]:
    """The reference of :func:`class_context` from ``cases`` (objects with ``case_id``, ``image``
    z-scores and ``label`` class indices ``(Z, Y, X)``, ``pad_value``).

    Returns ``(record, tensors)``: ``record`` for ``model.json`` (``review.context``: per class the
    threshold and the number of reference slices and cases, how the threshold was fitted) and the
    arrays to save (:func:`save_context`): per class ``"{name}"`` ``(n, C)`` descriptors,
    ``"{name}.mean"`` and ``"{name}.scale"`` ``(C,)``. A class held by fewer than two slices, or
    with one case by slices all within :data:`NEIGHBOURS` of each other, gets no entry (logged):
    it is not checked.
    """
    names = list(class_names)
    wanted: dict[tuple[int, int], set[int]] = {}  # (case, slice) -> classes to describe there
    for k, name in enumerate(names, start=1):
        pairs = [(c, int(z)) for c, case in enumerate(cases)
                 for z in np.flatnonzero((np.asarray(case.label) == k).any(axis=(1, 2)))]
        for i in _spread(len(pairs), MAX_REFERENCE_SLICES):
            wanted.setdefault(pairs[i], set()).add(k)
    per_class: dict[str, list[tuple[int, int, np.ndarray]]] = {n: [] for n in names}  # (case, z, descriptor)
    for c, case in enumerate(cases):
        zs = sorted(z for cc, z in wanted if cc == c)
        if not zs:
            continue
        desc = slice_descriptors(model, np.asarray(case.image), np.asarray(case.label), zs, len(names) + 1,
                                 case.pad_value, device)
        for row, z in zip(desc, zs):
            for k in sorted(wanted[(c, z)]):
                per_class[names[k - 1]].append((c, z, row[k - 1]))
    record: dict = {"file": CONTEXT_FILE, "descriptor": "bottleneck features averaged over the class's pixels",
                    "factor": FACTOR, "quantile": 0.95, "classes": {}}
    tensors: dict[str, np.ndarray] = {}
    for name, rows in per_class.items():
        if len(rows) < 2:
            log.info("context check: no reference for %s (%d labelled slice(s)); it is not checked", name, len(rows))
            continue
        case_of = np.array([c for c, _, _ in rows])
        z_of = np.array([z for _, z, _ in rows])
        ref = np.stack([d for _, _, d in rows]).astype(np.float32)
        mean, scale = _standardise(ref)
        n_cases = len(set(case_of.tolist()))
        if n_cases > 1:
            excluded, how = case_of[:, None] == case_of[None, :], "each reference slice to the other cases' slices"
        else:
            excluded = np.abs(z_of[:, None] - z_of[None, :]) <= NEIGHBOURS
            how = (f"one case: each reference slice to its slices more than {NEIGHBOURS} away "
                   "(narrower than across patients)")
        if excluded.all(axis=1).any():
            log.info("context check: no reference for %s (one case, its %d slices too close together to compare); "
                     "it is not checked", name, len(rows))
            continue
        own = _distances(ref, ref, mean, scale, excluded)
        threshold = FACTOR * float(np.quantile(own, 0.95))
        record["classes"][name] = {"threshold": round(threshold, 4), "n_slices": int(len(ref)), "n_cases": n_cases,
                                   "own_distance_q95": round(threshold / FACTOR, 4), "fitted_on": how}
        tensors.update({name: ref, f"{name}.mean": mean.astype(np.float32), f"{name}.scale": scale.astype(np.float32)})
    return record, tensors


def save_context(model_dir: str | Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write :data:`CONTEXT_FILE` into ``model_dir``, atomically."""
    from safetensors.numpy import save_file

    from ..io.files import atomic_path

    with atomic_path(Path(model_dir) / CONTEXT_FILE) as tmp:
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp))


def load_context(model_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a model folder's :data:`CONTEXT_FILE` (raises FileNotFoundError naming it)."""
    from safetensors.numpy import load_file

    path = Path(model_dir) / CONTEXT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing, though model.json's review.context names it; "
                                "copy the whole model folder")
    return load_file(str(path))


def class_context(model: torch.nn.Module, volume: np.ndarray, labels: np.ndarray, record: Mapping,
                  tensors: Mapping[str, np.ndarray], class_names: Sequence[str], pad_value: float,
                  device: torch.device | str = "cpu") -> dict[str, dict]:
    """Per predicted class with a reference: ``context_distance`` (median over the class's voxels
    of its slices' distance, in units of the class's threshold) and ``unfamiliar_share`` (share of
    the class's voxels on slices whose distance exceeds the threshold), over at most
    :data:`MAX_SLICES` slices holding it. ``volume`` ``(Z, Y, X)`` z-scores, ``labels`` ``(Z, Y, X)``
    class indices (the segmentation to judge)."""
    names = list(class_names)
    labels = np.asarray(labels)
    out: dict[str, dict] = {}
    wanted = [(k, n) for k, n in enumerate(names, start=1) if n in (record.get("classes") or {}) and n in tensors]
    areas = {k: (labels == k).sum(axis=(1, 2)) for k, _ in wanted}
    picks = {k: np.flatnonzero(areas[k])[_spread(int(np.count_nonzero(areas[k])), MAX_SLICES)] for k, _ in wanted}
    zs = sorted({int(z) for p in picks.values() for z in p})
    if not zs:
        return out
    desc = slice_descriptors(model, volume, labels, zs, len(names) + 1, pad_value, device)
    row_of = {z: i for i, z in enumerate(zs)}
    for k, name in wanted:
        if not len(picks[k]):
            continue
        q = desc[[row_of[int(z)] for z in picks[k]], k - 1]
        threshold = float(record["classes"][name]["threshold"])
        d = _distances(tensors[name], q, tensors[f"{name}.mean"], tensors[f"{name}.scale"]) / max(threshold, 1e-9)
        w = areas[k][picks[k]].astype(np.float64)
        order = np.argsort(d)
        median = float(d[order][np.searchsorted(np.cumsum(w[order]), w.sum() / 2)])
        out[name] = {"context_distance": median, "unfamiliar_share": float(w[d > 1.0].sum() / w.sum())}
    return out
