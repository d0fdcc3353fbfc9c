"""Per-class postprocessing of label volumes: largest component, small components, holes.

One home for three users: training chooses it on the validation cases (:func:`choose_postprocessing`,
called by :mod:`unet_pipeline.train.loop`), reassembly applies it to every segmentation
(:func:`postprocess_labels`, :mod:`unet_pipeline.infer.reassembly`), and the volumes table counts
components with the same rule (:func:`label_components`, :mod:`unet_pipeline.evaluate.volumes`).

Configuration (``postprocess`` section), per class name or ``"*"`` for every class::

    postprocess:
      "*": {min_volume_ml: 0.5}
      liver: {largest_component: true, fill_holes: true}

Left unset (null), the postprocessing is chosen by the data after training
(:func:`choose_postprocessing`, as nnU-Net does): per class, keeping only the largest connected
component is adopted when it does not lower that class's Dice on the validation cases. Each class
also gets a ``min_volume_ml`` learned from the labels (:func:`learn_min_volumes`): a fraction
(:data:`MIN_VOLUME_FRACTION`) of its smallest labelled volume, so that a scan without the organ
(cropped above it, another body region) is not painted with a few mL of it, while a real organ, or
most of one cut by the scan's edge, stays; with ``min_volume_extent_mm`` (the organ's length along
z when labelled) a scan shorter than the organ, a slab of a few slices, gets a proportionally
smaller minimum.

Connected components follow one rule, :data:`CONNECTIVITY`, here and in the volumes table
(:mod:`unet_pipeline.evaluate.volumes`). MONAI gives the same masks (``bench/bench_postprocess.py``)
but is not used here: its largest-component and small-object removal need scikit-image, which the
project does not depend on, and its ``fill_holes`` took twice as long as scipy's on a 512 x 512 x 100
mask, after a 1.6 s import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["postprocess_labels", "POSTPROCESS_KEYS", "choose_postprocessing", "CONNECTIVITY", "label_components",
           "MIN_VOLUME_FRACTION", "class_volumes_ml", "learn_min_volumes", "with_min_volumes", "mean_class_dice"]

POSTPROCESS_KEYS = ("largest_component", "min_volume_ml", "min_volume_extent_mm", "fill_holes")

#: Connectivity of connected components, counted as scipy, scikit-image and MONAI count it: the
#: most orthogonal steps between two neighbours. 3: voxels that share a face, an edge or a corner
#: (26 neighbours in 3-D) are one component, MONAI's default. In 2-D it is capped at 2 (8 neighbours).
CONNECTIVITY = 3

#: The learned ``min_volume_ml`` of a class is this fraction of its smallest volume in the labelled
#: cases (:func:`learn_min_volumes`): a piece of an organ cut by the scan's edge stays when it holds a
#: tenth of the organ (about 12 mm of a kidney's pole). Measured on ``bench/bench_realdata.py`` (660
#: steps, seeds 0 and 1): on the extremity CT, 0.1 to 0.2 removed the spleen (8.7, 1.4 mL) and the
#: left kidney (3.6, 5.0 mL) painted there and changed no Dice of the organs present; 0.05 left the
#: 5.0 mL kidney; 0.3 also removed a 27 mL right kidney, but would drop any piece under 30 % of a kidney.
MIN_VOLUME_FRACTION = 0.1


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean ``mask`` under :data:`CONNECTIVITY`.

    Returns the ``int32`` label array of ``mask``'s shape (0 outside, components numbered from 1 in
    raster order) and the number of components.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, min(CONNECTIVITY, mask.ndim))
    return ndimage.label(mask, structure)


def _kept_components(mask: np.ndarray, *, largest: bool, min_volume_ml: float | None = None,
                     voxel_ml: float = 1.0) -> np.ndarray:
    """The voxels of boolean ``mask`` in the components that stay.

    With ``largest`` only the largest component stays (the first in raster order on a tie); with
    ``min_volume_ml`` only components of at least that many mL (``voxel_ml`` mL per voxel).
    """
    comp, n = label_components(mask)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    keep = np.ones(n, bool)
    if min_volume_ml:
        keep &= sizes * voxel_ml >= float(min_volume_ml)
    if largest and n:
        keep &= np.arange(n) == int(np.argmax(sizes))
    return np.concatenate([[False], keep])[comp]


def _options(cfg: Mapping, name: str) -> dict:
    opts = dict(cfg.get("*", {}) or {})
    opts.update(cfg.get(name, {}) or {})
    unknown = set(opts) - set(POSTPROCESS_KEYS)
    if unknown:
        raise ValueError(f"postprocess.{name}: unknown option(s) {sorted(unknown)}; allowed {list(POSTPROCESS_KEYS)}")
    return opts


def postprocess_labels(labels: np.ndarray, spacing_mm: Sequence[float], cfg: Mapping, names: Mapping[int, str]) -> np.ndarray:
    """Apply the configured postprocessing class by class.

    Parameters
    ----------
    labels
        ``(Z, Y, X)`` integer label volume.
    spacing_mm
        Voxel size ``(z, y, x)`` in mm (for ``min_volume_ml``).
    cfg
        The ``postprocess`` section. ``min_volume_extent_mm`` scales ``min_volume_ml`` down on a
        scan shorter than it along z (axis 0): by ``Z * spacing_mm[0] / min_volume_extent_mm``, as a
        slab of the scan's length can hold only that part of the organ.
    names
        Label value -> class name.

    Returns
    -------
    numpy.ndarray
        A new label volume of the same shape and dtype; removed voxels become background.
    """
    out = labels.copy()
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    for value, name in names.items():
        opts = _options(cfg, name)
        if not any(opts.values()):
            continue
        mask = out == value
        if not mask.any():
            continue
        if opts.get("largest_component") or opts.get("min_volume_ml"):
            min_ml = opts.get("min_volume_ml")
            if min_ml and opts.get("min_volume_extent_mm"):
                scan_mm = out.shape[0] * float(spacing_mm[0])
                min_ml = float(min_ml) * min(1.0, scan_mm / float(opts["min_volume_extent_mm"]))
            kept = _kept_components(mask, largest=bool(opts.get("largest_component")),
                                    min_volume_ml=min_ml, voxel_ml=voxel_ml)
            remove = mask & ~kept
            out[remove] = 0
            mask &= ~remove
        if opts.get("fill_holes"):
            # A hole is background not joined to the border through faces (scipy's default), the
            # counterpart of the foreground's CONNECTIVITY: a diagonal gap in a wall does not open it.
            filled = ndimage.binary_fill_holes(mask)
            out[filled & (out == 0)] = value
    return out


def _dice(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty (the case says nothing about the class)."""
    total = int(pred.sum()) + int(ref.sum())
    return None if total == 0 else 2.0 * int(np.count_nonzero(pred & ref)) / total


def mean_class_dice(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                    names: Mapping[int, str]) -> dict[str, float | None]:
    """Per class name, the mean Dice over the cases where prediction or reference holds it (None
    where none does); ``predictions`` and ``references`` are per-case integer label volumes."""
    out: dict[str, float | None] = {}
    for value, name in names.items():
        dice = [d for p, r in zip(predictions, references)
                if (d := _dice(np.asarray(p) == value, np.asarray(r) == value)) is not None]
        out[name] = round(float(np.mean(dice)), 6) if dice else None
    return out


def choose_postprocessing(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                          names: Mapping[int, str]) -> tuple[dict, dict]:
    """Per class, whether keeping its largest connected component helps, judged on held-out cases.

    Parameters
    ----------
    predictions, references
        Per case, ``(Z, Y, X)`` integer label volumes of one grid each (the network's argmax and
        the reference, e.g. on the preprocessed grid of the validation cases).
    names
        Label value -> class name.

    Returns
    -------
    config, table
        ``config``: the ``postprocess`` section adopted (``{name: {largest_component: true}}`` for
        each class whose mean Dice over the cases where it occurs is not lowered by it; classes
        absent from every case are left alone). ``table``: per class name, the mean Dice
        ``before`` and ``after`` and whether it was ``adopted``. A class's postprocessing never
        changes another class's voxels, so each class is decided on its own.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    config: dict = {}
    table: dict = {}
    for value, name in names.items():
        before, after = [], []
        for pred, ref in zip(predictions, references):
            p, r = np.asarray(pred) == value, np.asarray(ref) == value
            d0 = _dice(p, r)
            if d0 is None:
                continue
            p = _kept_components(p, largest=True)
            before.append(d0)
            after.append(_dice(p, r) or 0.0)
        if not before:
            table[name] = {"before": None, "after": None, "adopted": False, "cases": 0}
            continue
        mean_before, mean_after = float(np.mean(before)), float(np.mean(after))
        adopted = mean_after >= mean_before - 1e-9
        table[name] = {"before": round(mean_before, 6), "after": round(mean_after, 6), "adopted": adopted,
                       "cases": len(before)}
        if adopted:
            config[name] = {"largest_component": True}
    return config, table


def class_volumes_ml(labels: np.ndarray, spacing_mm: Sequence[float], names: Mapping[int, str]) -> dict[str, float]:
    """Volume (mL) of each class of a ``(Z, Y, X)`` integer label volume with voxels of ``spacing_mm``
    ``(z, y, x)`` mm; 0.0 for a class it does not hold."""
    values = np.asarray(labels).ravel()
    counts = np.bincount(values, minlength=max(names, default=0) + 1) if values.size else np.zeros(1, np.int64)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return {name: float(counts[value]) * voxel_ml if value < len(counts) else 0.0 for value, name in names.items()}


def learn_min_volumes(labelled: Iterable[tuple[np.ndarray, Sequence[float]]], names: Mapping[int, str],
                      fraction: float = MIN_VOLUME_FRACTION) -> dict:
    """Per class, the smallest volume a segmented component of it must have: ``fraction`` of the
    class's smallest volume in the labelled cases that hold it.

    A network trained only on scans that hold an organ tends to paint a few mL of it on a scan that
    does not; the organ's real volume is far larger, so components well below its smallest labelled
    volume are removed (``min_volume_ml`` of :func:`postprocess_labels`).

    Parameters
    ----------
    labelled
        ``(labels, spacing_mm)`` per labelled case: ``(Z, Y, X)`` integer class indices and the
        ``(z, y, x)`` voxel size in mm.
    names
        Label value -> class name.
    fraction
        In ``[0, 1]``; 0 learns no minimum.

    Returns
    -------
    dict
        ``{"fraction", "source", "classes": {name: {"smallest_labelled_ml", "cases", "extent_mm",
        "min_volume_ml"}}}``; ``extent_mm``: the length along z (axis 0) of the class in the case
        of its smallest volume, over which the minimum applies in full (``min_volume_extent_mm``:
        a thinner scan, a slab of a few slices, holds only part of the organ and gets a
        proportionally smaller minimum). A class absent from every labelled case has
        ``min_volume_ml`` None (nothing to learn from).
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: {fraction} is not in [0, 1]")
    smallest: dict[str, float | None] = {name: None for name in names.values()}
    extent: dict[str, float | None] = {name: None for name in names.values()}
    cases = {name: 0 for name in names.values()}
    for labels, spacing_mm in labelled:
        labels = np.asarray(labels)
        volumes = class_volumes_ml(labels, spacing_mm, names)
        for value, name in names.items():
            ml = volumes[name]
            if ml > 0:
                cases[name] += 1
                if smallest[name] is None or ml < smallest[name]:
                    z = np.nonzero((labels == value).any(axis=(1, 2)))[0]
                    smallest[name], extent[name] = ml, float(z[-1] - z[0] + 1) * float(spacing_mm[0])
    classes = {name: {"smallest_labelled_ml": None if ml is None else round(ml, 6), "cases": cases[name],
                      "extent_mm": None if ml is None else round(extent[name], 3),
                      "min_volume_ml": None if ml is None or fraction == 0 else round(fraction * ml, 6)}
               for name, ml in smallest.items()}
    return {"fraction": fraction, "source": "labelled cases (training and validation)", "classes": classes}


def with_min_volumes(config: Mapping, record: Mapping) -> dict:
    """``config`` (a ``postprocess`` section) with each class's learned ``min_volume_ml`` (and
    ``min_volume_extent_mm``) of ``record`` (:func:`learn_min_volumes`) added; a class that already
    sets ``min_volume_ml`` keeps its own."""
    out = {name: dict(opts or {}) for name, opts in config.items()}
    for name, learned in (record.get("classes") or {}).items():
        opts = out.get(name) or {}
        if learned.get("min_volume_ml") and "min_volume_ml" not in opts:
            opts = {**opts, "min_volume_ml": learned["min_volume_ml"]}
            if learned.get("extent_mm"):
                opts["min_volume_extent_mm"] = learned["extent_mm"]
            out[name] = opts
    return out
