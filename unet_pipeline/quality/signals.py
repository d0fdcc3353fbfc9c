"""Review signals of one segmented case, from its probabilities and image (no reference needed).

Everything is measured on the preprocessed grid ``(Z, Y', X')`` (slices along the model's plane,
in-plane resampled to the plan's spacing), where the probabilities exist: the workflow's rule
reassemble and ``unet-pipeline predict`` call :func:`case_signals_from_files` before the
probabilities are deleted, and training calls :func:`accumulate_signals` on the validation
cases to calibrate the signals against their true Dice (:mod:`unet_pipeline.quality.calibration`).

Per class (by name), from the segmentation on that grid: the argmax after the postprocessing the
case's output gets (:func:`segmentation_on_grid`; the raw argmax where none is given):

* ``volume_ml``: predicted volume (mL); ``max_area_mm2``: its largest cross-section in one slice
  (mm², independent of how much of the body the scan covers);
* ``mean_maxprob``: mean maximum softmax probability in the predicted structure (the naive baseline);
* ``soft_dice``: ``2 sum(p_k * [argmax = k]) / (sum(p_k) + |argmax = k|)``, the Dice the network
  expects between its probabilities and its own segmentation (low when the boundary is unsure or
  probability mass lies outside the structure);
* ``soft_dice_near``: the same with ``sum(p_k)`` taken only within :data:`NEAR_MM` of the structure
  (a box along each axis), so mass far away, as in stray pieces the postprocessing removed, does
  not count;
* ``far_share``: the share of the class's probability mass ``sum(p_k)`` farther than :data:`NEAR_MM`;
* ``removed_share``: the share of the raw argmax's voxels of the class that the postprocessing
  removed (0 without postprocessing);
* ``entropy``: mean softmax entropy in the structure, divided by ``log K`` (0..1);
* ``largest_share``: share of the volume in the largest connected component; ``n_components``;
* ``hu_median``: median HU of the CT in the structure (from the z-scores and the plan's intensity);
* ``edge_slices``: whether the structure reaches the first or last slice (cut by the field of view).

Per scan: ``slices``, ``slice_thickness_mm``, ``pixel_mm``, ``z_extent_mm``,
``body_hu_median`` (median HU of the voxels above :data:`BODY_HU`) and ``noise_hu``, the image
noise in soft tissue (HU): ``1.4826 / sqrt(2)`` times the median absolute difference between
neighbours along x where both lie in :data:`SOFT_TISSUE_HU` (high with noise, low when blurred).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io.files import load_json
from ..io.npy import NpyReader
from ..model.tiling import class_argmax
from ..postprocess import label_components

__all__ = ["BODY_HU", "NEAR_MM", "SOFT_TISSUE_HU", "SignalAccumulator", "accumulate_signals", "case_signals_from_files",
           "final_labels", "label_statistics", "NearMasks", "segmentation_on_grid", "summarize_reference"]

#: Voxels above this many HU count as body for ``body_hu_median``.
BODY_HU = -400.0
#: HU histograms span -1024..3071 HU in 1 HU bins (values outside are clipped into the end bins).
_HU_LOW, _HU_BINS = -1024, 4096
#: Slices read at once from the files.
_CHUNK = 16
#: ``soft_dice_near`` counts probability within this many mm of the structure along each axis.
NEAR_MM = 10.0
#: Neighbouring voxels both in this HU range measure the noise (``noise_hu``).
SOFT_TISSUE_HU = (-100.0, 300.0)
#: Neighbour differences are histogrammed in bins of this many HU, from 0 (the last bin takes the rest).
_NOISE_BIN_HU, _NOISE_BINS = 0.25, 4096


def _hu_histogram(z_scores: np.ndarray, intensity: Mapping) -> np.ndarray:
    """``(4096,)`` int64 counts of the HU of ``z_scores`` (z-scores of the plan's ``intensity``)."""
    hu = np.asarray(z_scores, np.float32) * float(intensity["std"]) + float(intensity["mean"])
    index = np.clip(np.rint(hu) - _HU_LOW, 0, _HU_BINS - 1).astype(np.int64)
    return np.bincount(index.ravel(), minlength=_HU_BINS)


def _histogram_median(hist: np.ndarray) -> float:
    """Median HU of a :func:`_hu_histogram` (NaN when empty)."""
    total = int(hist.sum())
    if not total:
        return float("nan")
    return float(np.searchsorted(np.cumsum(hist), (total + 1) / 2) + _HU_LOW)


def _body_histogram(z_scores: np.ndarray, intensity: Mapping) -> np.ndarray:
    hist = _hu_histogram(z_scores, intensity)
    hist[: int(BODY_HU) - _HU_LOW + 1] = 0
    return hist


def _noise_histogram(z_scores: np.ndarray, intensity: Mapping) -> np.ndarray:
    """``(_NOISE_BINS,)`` int64 counts of ``|HU difference|`` between neighbours along the last axis of
    ``z_scores`` ``(..., X)`` where both lie in :data:`SOFT_TISSUE_HU`."""
    hu = np.asarray(z_scores, np.float32) * float(intensity["std"]) + float(intensity["mean"])
    soft = (hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    both = soft[..., 1:] & soft[..., :-1]
    diff = np.abs(hu[..., 1:] - hu[..., :-1])[both]
    index = np.minimum((diff / _NOISE_BIN_HU).astype(np.int64), _NOISE_BINS - 1)
    return np.bincount(index, minlength=_NOISE_BINS)


def _noise_hu(hist: np.ndarray) -> float:
    """``noise_hu`` of a :func:`_noise_histogram` (NaN when empty): the median absolute difference
    (its bin's lower edge) times ``1.4826 / sqrt(2)``, the noise of one voxel if it were Gaussian."""
    total = int(hist.sum())
    if not total:
        return float("nan")
    median = np.searchsorted(np.cumsum(hist), (total + 1) / 2) * _NOISE_BIN_HU
    return float(median * 1.4826 / np.sqrt(2.0))


def _scan_signals(n_slices: int, spacing_mm: Sequence[float], body_hist: np.ndarray, noise_hist: np.ndarray) -> dict:
    return {"slices": int(n_slices), "slice_thickness_mm": float(spacing_mm[0]), "pixel_mm": float(spacing_mm[1]),
            "z_extent_mm": float(n_slices * spacing_mm[0]), "body_hu_median": _histogram_median(body_hist),
            "noise_hu": _noise_hu(noise_hist)}


class NearMasks:
    """The voxels within ``margin_mm`` of each class along each axis (a box) in ``labels`` ``(Z, Y, X)``
    of ``(z, y, x)`` spacing ``spacing_mm``, one class and a block of slices at a time (memory of one
    block, however many classes). ``n_classes``: K, the background included.

    ``masks(k, rows)`` is the ``(n, Y, X)`` bool mask of class ``k`` at the slices ``rows`` (default
    all); slices outside ``rows`` still count. The filter runs on the class's bounding box grown by
    the margin only."""

    def __init__(self, labels: np.ndarray, n_classes: int, spacing_mm: Sequence[float], margin_mm: float = NEAR_MM):
        from scipy import ndimage

        self.labels = np.asarray(labels)
        self.radius = [int(np.ceil(margin_mm / max(float(s), 1e-6))) for s in spacing_mm]
        self.boxes = ndimage.find_objects(self.labels, max_label=n_classes - 1)

    def __call__(self, k: int, rows: slice | None = None) -> np.ndarray:
        from scipy import ndimage

        labels, radius = self.labels, self.radius
        rows = rows or slice(0, labels.shape[0])
        out = np.zeros((rows.stop - rows.start, *labels.shape[1:]), bool)
        box = self.boxes[k - 1] if 1 <= k <= len(self.boxes) else None
        if box is None:
            return out
        grown = [slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(box, radius, labels.shape)]
        z0, z1 = max(grown[0].start, rows.start), min(grown[0].stop, rows.stop)  # the rows the box reaches
        if z0 < z1:
            lo, hi = max(z0 - radius[0], grown[0].start), min(z1 + radius[0], grown[0].stop)
            mask = labels[lo:hi, grown[1], grown[2]] == k
            near = ndimage.maximum_filter(mask.view(np.uint8), size=[2 * r + 1 for r in radius], mode="constant")
            out[z0 - rows.start:z1 - rows.start, grown[1], grown[2]] = near[z0 - lo:z1 - lo].astype(bool)
        return out


class SignalAccumulator:
    """Review signals of one case, gathered chunk by chunk of slices.

    Parameters
    ----------
    shape
        ``(Z, Y', X')`` of the preprocessed volume.
    class_names
        Names of the foreground classes ``1..K-1`` in class-index order.
    spacing_mm
        ``(z, y, x)`` spacing of the preprocessed grid in mm.
    intensity
        The plan's ``intensity`` (``mean``, ``std`` in HU): turns the z-scores back into HU.
    """

    def __init__(self, shape: Sequence[int], class_names: Sequence[str], spacing_mm: Sequence[float],
                 intensity: Mapping) -> None:
        self.names = list(class_names)
        self.spacing = [float(s) for s in spacing_mm]
        self.intensity = dict(intensity)
        k = len(self.names) + 1
        self.labels = np.zeros(tuple(int(s) for s in shape), np.uint8)  # (Z, Y', X') the segmentation judged
        self.sum_p, self.sum_p_in, self.sum_p_near, self.entropy_in = (np.zeros(k) for _ in range(4))
        self.hist = np.zeros((k, _HU_BINS), np.int64)
        self.body = np.zeros(_HU_BINS, np.int64)
        self.noise = np.zeros(_NOISE_BINS, np.int64)
        self.max_area = np.zeros(k, np.int64)  # voxels in the class's largest slice
        self.raw_count = np.zeros(k, np.int64)  # voxels of each class in the raw argmax

    def add(self, z0: int, probs: np.ndarray, image: np.ndarray, labels: np.ndarray | None = None,
            near: Callable[[int], np.ndarray] | None = None) -> None:
        """Fold in slices ``z0 .. z0 + n``: ``probs`` ``(n, K, Y', X')`` softmax probabilities, ``image``
        ``(n, Y', X')`` float32 z-scores, ``labels`` ``(n, Y', X')`` the segmentation's class indices
        (None: the argmax of ``probs``), ``near(k)`` the ``(n, Y', X')`` bool :class:`NearMasks` of
        class ``k`` of the whole segmentation at these slices (None: of these slices alone)."""
        p = np.asarray(probs, np.float32)
        if p.ndim != 4 or p.shape[1] != len(self.names) + 1 or p.shape[2:] != self.labels.shape[1:]:
            raise ValueError(f"probs must be (n, {len(self.names) + 1}, {self.labels.shape[1]}, "
                             f"{self.labels.shape[2]}), got {p.shape}")
        raw = class_argmax(p).astype(np.uint8)
        am = raw if labels is None else np.asarray(labels, np.uint8)
        if am.shape != (p.shape[0], *p.shape[2:]):
            raise ValueError(f"labels must be {(p.shape[0], *p.shape[2:])}, got {am.shape}")
        self.labels[z0:z0 + p.shape[0]] = am
        near = NearMasks(am, p.shape[1], self.spacing) if near is None else near
        ent = -(p * np.log(np.clip(p, 1e-7, 1.0))).sum(axis=1) / np.log(p.shape[1])
        self.body += _body_histogram(image, self.intensity)
        self.noise += _noise_histogram(image, self.intensity)
        self.raw_count += np.bincount(raw.ravel(), minlength=p.shape[1])[:p.shape[1]]
        for k in range(1, p.shape[1]):
            inside = am == k
            self.max_area[k] = max(self.max_area[k], int(inside.sum(axis=(1, 2)).max()))
            self.sum_p[k] += float(p[:, k].sum(dtype=np.float64))
            self.sum_p_near[k] += float(p[:, k][near(k)].sum(dtype=np.float64))
            if inside.any():
                self.sum_p_in[k] += float(p[:, k][inside].sum(dtype=np.float64))
                self.entropy_in[k] += float(ent[inside].sum(dtype=np.float64))
                self.hist[k] += _hu_histogram(np.asarray(image)[inside], self.intensity)

    def finish(self) -> dict:
        """``{"scan": {...}, "classes": {name: {...}}}`` (see the module's docstring); NaN where undefined."""
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        pixel_mm2 = self.spacing[1] * self.spacing[2]
        classes = {}
        for k, name in enumerate(self.names, start=1):
            mask = self.labels == k
            n = int(np.count_nonzero(mask))
            row = {"volume_ml": n * voxel_ml, "mean_maxprob": float(self.sum_p_in[k] / n) if n else float("nan"),
                   "soft_dice": float(2 * self.sum_p_in[k] / (self.sum_p[k] + n)) if n else float("nan"),
                   "soft_dice_near": float(2 * self.sum_p_in[k] / (self.sum_p_near[k] + n)) if n else float("nan"),
                   "far_share": float(1.0 - self.sum_p_near[k] / self.sum_p[k]) if n and self.sum_p[k] > 0
                   else float("nan"),
                   "removed_share": float(max(self.raw_count[k] - n, 0) / self.raw_count[k]) if self.raw_count[k]
                   else 0.0,
                   "entropy": float(self.entropy_in[k] / n) if n else float("nan"),
                   "hu_median": _histogram_median(self.hist[k]),
                   "max_area_mm2": float(self.max_area[k] * pixel_mm2)}
            row.update(_shape_signals(mask, n))
            classes[name] = row
        return {"scan": _scan_signals(self.labels.shape[0], self.spacing, self.body, self.noise), "classes": classes}


def _shape_signals(mask: np.ndarray, n: int) -> dict:
    """``largest_share``, ``n_components`` and ``edge_slices`` of a ``(Z, Y, X)`` boolean structure."""
    if not n:
        return {"largest_share": float("nan"), "n_components": 0, "edge_slices": False}
    from scipy import ndimage

    box = ndimage.find_objects(mask.view(np.uint8))[0]  # the components are counted in the bounding box only
    comps, count = label_components(mask[box])
    sizes = np.bincount(comps.ravel())[1:]
    return {"largest_share": float(sizes.max() / n), "n_components": int(count),
            "edge_slices": bool(mask[0].any() or mask[-1].any()) if mask.shape[0] > 1 else False}


def final_labels(probs, spacing_mm: Sequence[float], class_names: Sequence[str],
                 postprocess: Mapping | None = None) -> np.ndarray:
    """``(Z, Y', X')`` uint8 class indices: the argmax of ``probs`` ``(Z, K, Y', X')`` (an array or an
    :class:`~unet_pipeline.io.npy.NpyReader`, read a few slices at a time), then ``postprocess``
    (the section applied to the output, :func:`unet_pipeline.postprocess.postprocess_labels`, on
    this grid of ``(z, y, x)`` spacing ``spacing_mm``; None or empty: none), so the review judges
    what the user gets."""
    from ..postprocess import postprocess_labels

    labels = np.zeros((probs.shape[0], *probs.shape[2:]), np.uint8)
    for z0 in range(0, probs.shape[0], _CHUNK):
        labels[z0:z0 + _CHUNK] = class_argmax(np.asarray(probs[z0:z0 + _CHUNK]))
    if postprocess:
        labels = postprocess_labels(labels, spacing_mm, postprocess, dict(enumerate(class_names, start=1)))
    return labels


def accumulate_signals(probs, image, class_names: Sequence[str], spacing_mm: Sequence[float], intensity: Mapping,
                       labels: np.ndarray | None = None) -> dict:
    """:class:`SignalAccumulator` over ``probs`` ``(Z, K, Y', X')`` and ``image`` ``(Z, Y', X')`` z-scores
    (arrays or :class:`~unet_pipeline.io.npy.NpyReader`, read a few slices at a time); ``labels``:
    the segmentation to judge (:func:`final_labels`; None: the raw argmax)."""
    acc = SignalAccumulator(image.shape, class_names, spacing_mm, intensity)
    masks = None if labels is None else NearMasks(labels, len(class_names) + 1, spacing_mm)
    for z0 in range(0, image.shape[0], _CHUNK):
        rows = slice(z0, min(z0 + _CHUNK, image.shape[0]))
        if labels is None:
            acc.add(z0, probs[rows], image[rows])
        else:
            acc.add(z0, probs[rows], image[rows], labels[rows], lambda k, rows=rows: masks(k, rows))
    return acc.finish()


def segmentation_on_grid(probs_path: str | Path, preprocessed_dir: str | Path, class_names: Sequence[str],
                         postprocess: Mapping | None = None) -> np.ndarray:
    """:func:`final_labels` of a probabilities ``.npy`` and the preprocessed folder of its case."""
    spacing = load_json(Path(preprocessed_dir) / "meta.json")["resampled_spacing_mm"]
    return final_labels(NpyReader(probs_path), spacing, class_names, postprocess)


def case_signals_from_files(probs_path: str | Path, preprocessed_dir: str | Path,
                            class_names: Sequence[str], labels: np.ndarray | None = None) -> dict:
    """:func:`accumulate_signals` of a probabilities ``.npy`` ``(Z, K, Y', X')`` and the preprocessed
    ``image.npy`` ``(Z, Y', X')`` + ``meta.json`` of the same case (:func:`segmentation_on_grid` gives
    ``labels``)."""
    pre = Path(preprocessed_dir)
    meta = load_json(pre / "meta.json")
    return accumulate_signals(NpyReader(probs_path), NpyReader(pre / "image.npy"), class_names,
                              meta["resampled_spacing_mm"], meta["intensity"], labels)


def label_statistics(label: np.ndarray, image: np.ndarray, spacing_mm: Sequence[float], intensity: Mapping,
                     class_names: Sequence[str]) -> dict:
    """What a reference segmentation says about one training case: per class ``volume_ml``,
    ``max_area_mm2`` and ``hu_median``, and the scan signals of :class:`SignalAccumulator`.

    ``label`` ``(Z, Y', X')`` class indices and ``image`` ``(Z, Y', X')`` z-scores on the preprocessed
    grid, ``spacing_mm`` its ``(z, y, x)`` spacing.
    """
    label = np.asarray(label)
    voxel_ml = float(np.prod([float(s) for s in spacing_mm])) / 1000.0
    body = np.zeros(_HU_BINS, np.int64)
    noise = np.zeros(_NOISE_BINS, np.int64)
    hists = np.zeros((len(class_names) + 1, _HU_BINS), np.int64)
    max_area = np.zeros(len(class_names) + 1, np.int64)
    for z0 in range(0, label.shape[0], _CHUNK):
        lab, img = label[z0:z0 + _CHUNK], np.asarray(image[z0:z0 + _CHUNK], np.float32)
        body += _body_histogram(img, intensity)
        noise += _noise_histogram(img, intensity)
        for k in range(1, len(class_names) + 1):
            inside = lab == k
            if inside.any():
                hists[k] += _hu_histogram(img[inside], intensity)
                max_area[k] = max(max_area[k], int(inside.sum(axis=(1, 2)).max()))
    pixel_mm2 = float(spacing_mm[1]) * float(spacing_mm[2])
    edge = [bool((label[0] == k).any() or (label[-1] == k).any()) for k in range(len(class_names) + 1)]
    classes = {name: {"volume_ml": float(hists[k].sum()) * voxel_ml, "hu_median": _histogram_median(hists[k]),
                      "max_area_mm2": float(max_area[k]) * pixel_mm2, "edge_slices": edge[k]}
               for k, name in enumerate(class_names, start=1)}
    return {"scan": _scan_signals(label.shape[0], spacing_mm, body, noise), "classes": classes}


def summarize_reference(stats: Iterable[Mapping]) -> dict:
    """The training cases' distribution from their :func:`label_statistics`: per class the median,
    smallest and largest volume (mL) over the cases holding it, the smallest of their largest
    cross-sections (mm²), their share, the share of them reaching the first or last slice
    (``edge_share``) and the median of their HU medians; per scan quantity the
    median over the cases. Stored in ``model.json``."""
    stats = list(stats)
    if not stats:
        raise ValueError("summarize_reference needs the statistics of at least one training case")
    names = list(stats[0]["classes"])
    classes = {}
    for name in names:
        held = [s["classes"][name] for s in stats if s["classes"][name]["volume_ml"] > 0]
        vols = [c["volume_ml"] for c in held]
        classes[name] = {"present_share": len(held) / len(stats),
                         "volume_ml_median": float(np.median(vols)) if vols else 0.0,
                         "volume_ml_min": float(min(vols)) if vols else 0.0,
                         "volume_ml_max": float(max(vols)) if vols else 0.0,
                         "max_area_mm2_min": float(min(c["max_area_mm2"] for c in held)) if held else 0.0,
                         "edge_share": sum(bool(c.get("edge_slices")) for c in held) / len(held) if held else 0.0,
                         "hu_median": float(np.median([c["hu_median"] for c in held])) if held else float("nan")}
    scan = {key: float(np.nanmedian([s["scan"].get(key, np.nan) for s in stats]))
            for key in ("slice_thickness_mm", "pixel_mm", "z_extent_mm", "body_hu_median", "noise_hu")}
    return {"n_cases": len(stats), "classes": classes, "scan": scan}
