"""At the end of training: the training cases' distribution and the calibration of the review signals.

:func:`review_record` is what ``model.json`` stores under ``review``:

* ``reference``: the training cases' per-class volume and HU and their scans' thickness, extent
  and body HU (:func:`unet_pipeline.quality.signals.summarize_reference`), measured on their labels;
* ``calibration``: the fit of :mod:`unet_pipeline.quality.calibration` on cases with references
  the model did not train on (the validation cases; the training cases, said so in
  ``fitted_on``, when there are none), each segmented as it is and as degraded copies
  (:data:`DEGRADATIONS`: noise, in-plane blur, HU shifts), so the fit sees a range of Dice;
* ``feature_spearman``: the Spearman correlation of every candidate feature with the true Dice on
  those rows, the measurement behind the choice of features;
* ``context`` (:func:`model_review`): the reference of the context signals
  (:mod:`unet_pipeline.quality.context`), its arrays in the model folder.

:func:`review_record` takes the model under test as a function (no network code);
:func:`model_review` also hands the network to :mod:`unet_pipeline.quality.context`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .calibration import FEATURES, features, fit_calibration
from .signals import accumulate_signals, final_labels, label_statistics, summarize_reference

__all__ = ["DEGRADATIONS", "MAX_CALIBRATION_CASES", "degradation_kind", "degrade", "model_review", "review_record"]

log = logging.getLogger(__name__)

#: name -> (Gaussian noise sigma in HU, in-plane Gaussian blur sigma in px, HU shift of the whole image)
DEGRADATIONS: dict[str, tuple[float, float, float]] = {
    "none": (0.0, 0.0, 0.0), "noise_30hu": (30.0, 0.0, 0.0), "noise_80hu": (80.0, 0.0, 0.0),
    "noise_150hu": (150.0, 0.0, 0.0),
    "blur_1px": (0.0, 1.0, 0.0), "blur_2px": (0.0, 2.0, 0.0), "shift_+60hu": (0.0, 0.0, 60.0),
    "shift_-60hu": (0.0, 0.0, -60.0), "noise_50hu_blur_1px": (50.0, 1.0, 0.0),
}
#: At most this many cases are segmented (each once per degradation) for the calibration.
MAX_CALIBRATION_CASES = 3

#: ``predict(image, pad_value)`` -> iterator of ``(z0, probs (n, K, Y', X'))`` over a ``(Z, Y', X')`` volume.
Predict = Callable[[np.ndarray, float], Iterator[tuple[int, np.ndarray]]]
#: ``describe(image, labels, pad_value)`` -> per class the context signals of a segmentation
#: (:func:`unet_pipeline.quality.context.class_context`).
Describe = Callable[[np.ndarray, np.ndarray, float], Mapping[str, Mapping]]


def degrade(image: np.ndarray, name: str, hu_per_unit: float, seed: int = 0) -> np.ndarray:
    """A degraded float32 copy of a ``(Z, Y', X')`` z-score volume (:data:`DEGRADATIONS` ``name``);
    ``hu_per_unit`` is the plan's intensity ``std`` (HU per z-score unit)."""
    from scipy import ndimage

    if name not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {sorted(DEGRADATIONS)}, got {name!r}")
    if not hu_per_unit > 0:
        raise ValueError(f"hu_per_unit must be > 0, got {hu_per_unit}")
    noise_hu, blur_px, shift_hu = DEGRADATIONS[name]
    out = np.array(image, dtype=np.float32)
    if blur_px:
        out = ndimage.gaussian_filter(out, sigma=(0.0, blur_px, blur_px))
    if noise_hu:
        out += np.random.default_rng(seed).normal(0.0, noise_hu / hu_per_unit, out.shape).astype(np.float32)
    return out + np.float32(shift_hu / hu_per_unit)


def degradation_kind(name: str) -> str:
    """The kind of a :data:`DEGRADATIONS` entry: ``"none"`` or its parts joined by ``+`` in
    alphabetical order (``"noise"``, ``"blur+noise"``, ``"shift"``); the calibration's
    cross-validation leaves one kind out at a time."""
    noise_hu, blur_px, shift_hu = DEGRADATIONS[name]
    parts = sorted(p for p, on in (("noise", noise_hu), ("blur", blur_px), ("shift", shift_hu)) if on)
    return "+".join(parts) or "none"


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    n = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 1.0 if n == 0 else 2.0 * np.count_nonzero(pred & ref) / n


def _case_rows(predict: Predict, case, names: Sequence[str], spacing: Sequence[float], intensity: Mapping,
               reference: Mapping, postprocess: Mapping | None, scratch: Path,
               describe: Describe | None = None) -> list[dict]:
    """One row per degradation and predicted class of one case: true Dice and :data:`FEATURES`, of the
    segmentation after ``postprocess`` as inference judges it (the probabilities pass through a
    float16 ``.npy`` in ``scratch``, as at inference)."""
    from ..io.npy import NpyReader, NpyWriter

    rows = []
    label = np.asarray(case.label)
    for d, name in enumerate(DEGRADATIONS):
        # HU per z-score unit as preprocessing divides by it (a constant foreground has std 0)
        image = degrade(np.asarray(case.image), name, max(float(intensity["std"]), 1e-6), seed=d)
        path = scratch / "probs.npy"
        with NpyWriter(path, (image.shape[0], len(names) + 1, *image.shape[1:]), np.float16) as writer:
            for _z0, probs in predict(image, case.pad_value):
                writer.write(np.asarray(probs).astype(np.float16))
        probs = NpyReader(path)
        final = final_labels(probs, spacing, names, postprocess)
        signals = accumulate_signals(probs, image, names, spacing, intensity, final)
        for cls, values in (describe(image, final, case.pad_value) if describe else {}).items():
            signals["classes"][cls].update(values)
        for k, cls in enumerate(names, start=1):
            if not signals["classes"][cls]["volume_ml"]:
                continue  # nothing predicted: no signals (the review list ranks empty classes apart)
            rows.append({"case": case.case_id, "degradation": name, "kind": degradation_kind(name), "class": cls,
                         "dice": _dice(final == k, label == k),
                         **features(signals["classes"][cls], signals["scan"], reference, cls)})
    return rows


def review_record(predict: Predict, train_cases: Sequence, val_cases: Sequence, *, class_names: Sequence[str],
                  spacing_of: Callable[[str], Sequence[float]], intensity: Mapping,
                  postprocess: Mapping | None = None, describe: Describe | None = None) -> dict:
    """``model.json``'s ``review``: ``reference``, ``calibration`` (None when fewer than 3 rows) and
    ``feature_spearman`` (see the module's docstring).

    ``train_cases`` and ``val_cases`` are :class:`unet_pipeline.train.sampler.TrainingCase` objects
    (``case_id``, ``image`` z-scores and ``label`` class indices ``(Z, Y', X')``, ``pad_value``);
    ``spacing_of(case_id)`` gives a case's ``(z, y, x)`` preprocessed spacing in mm; ``postprocess``
    the postprocessing the model's segmentations get (the calibration judges them after it);
    ``describe`` adds the context signals to each segmented copy (None: they are 0).
    """
    import tempfile

    from scipy.stats import spearmanr

    names = list(class_names)
    reference = summarize_reference(label_statistics(c.label, c.image, spacing_of(c.case_id), intensity, names)
                                    for c in train_cases)
    cases, fitted_on = (val_cases, "validation cases") if val_cases else (
        train_cases, "training cases (no validation cases: the fit is optimistic)")
    with tempfile.TemporaryDirectory(prefix="review_fit_") as scratch:
        rows = [r for c in list(cases)[:MAX_CALIBRATION_CASES]
                for r in _case_rows(predict, c, names, spacing_of(c.case_id), intensity, reference, postprocess,
                                    Path(scratch), describe)]
    y = np.array([r["dice"] for r in rows])
    rho = {}
    for f in FEATURES:
        x = np.array([r[f] for r in rows])
        ok = len(rows) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0
        rho[f] = round(float(spearmanr(x, y).statistic), 4) if ok else None
    calibration = fit_calibration(rows, fitted_on=fitted_on, degradations=list(DEGRADATIONS)) if len(rows) >= 3 \
        else None
    if calibration:
        log.info("review calibration on %d %s (%d rows): features %s, cross-validated (%s) MAE %.3f, Spearman %s",
                 calibration["n_cases"], fitted_on, len(rows), calibration["features"], calibration["cv"],
                 calibration["cv_mae"], calibration["cv_spearman"])
    return {"reference": reference, "calibration": calibration, "feature_spearman": rho}


def model_review(predict: Predict, model, out_dir: str | Path, train_cases: Sequence, val_cases: Sequence, *,
                 class_names: Sequence[str], spacing_of: Callable[[str], Sequence[float]], intensity: Mapping,
                 postprocess: Mapping | None, device="cpu") -> dict:
    """What training's export stores under ``review``: :func:`review_record`, plus ``context``, the
    reference of :mod:`unet_pipeline.quality.context` fitted on ``train_cases`` with the network
    ``model``, whose arrays are written into the model folder ``out_dir``."""
    from .context import class_context, fit_context, save_context

    context, tensors = fit_context(model, train_cases, class_names, device)
    save_context(out_dir, tensors)
    log.info("review context: %s", "; ".join(f"{n}: threshold {c['threshold']} on {c['n_slices']} slices"
                                             for n, c in context["classes"].items()) or "no class")

    def describe(image: np.ndarray, labels: np.ndarray, pad_value: float) -> dict:
        return class_context(model, image, labels, context, tensors, class_names, pad_value, device)

    record = review_record(predict, train_cases, val_cases, class_names=class_names, spacing_of=spacing_of,
                           intensity=intensity, postprocess=postprocess, describe=describe)
    return {**record, "context": context}
