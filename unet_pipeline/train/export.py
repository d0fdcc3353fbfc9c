"""The end of a training run: the model folder.

Outputs in ``out_dir``: ``model.safetensors`` (weights of the best epoch by smoothed validation
Dice, no pickle), ``model.json`` (architecture, plan, labels, training config, versions, data
fingerprint, the postprocessing chosen on the validation cases), ``train_log.csv`` (one row per
epoch) and ``curves.png``; ``checkpoint.pt`` and ``best.safetensors`` stay for reruns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_path
from ..model.card import write_model_card
from ..model.tiling import class_argmax, iter_volume_probabilities
from .augment import mirroring_record
from .checkpoint import TrainState
from .epochs import save_weights, should_stop, write_log
from .run import Run

__all__ = ["export_model"]

log = logging.getLogger(__name__)


def export_model(run: Run, state: TrainState) -> dict:
    """Write ``model.safetensors`` (best epoch), ``train_log.csv``, ``curves.png`` and ``model.json``."""
    from .curves import plot_training_curves

    _write_outputs(run.out_dir, run.model, state.history)
    plot_training_curves(run.out_dir / "train_log.csv", run.out_dir / "curves.png")
    postprocess_choice = _choose_postprocessing(run)
    review = _review_record(run, postprocess_choice["config"])
    cfg = run.cfg
    if state.budget_spent:
        ended_by = "max_minutes"
    elif should_stop(state, cfg.early_stopping_patience):
        ended_by = "early_stopping"
    else:
        ended_by = "epochs"
    train_ids = [c.case_id for c in run.train_cases]
    val_ids = [c.case_id for c in run.val_cases]
    meta = {
        "architecture": run.mcfg.to_dict(),
        "plan": run.plan.to_dict(),
        "labels": {str(v): name for v, name in zip(run.label_values, run.label_names)},
        "training": cfg.to_dict(),
        "augmentation": run.augment_config.to_dict(),
        "mirroring": mirroring_record(run.net_augment),  # the flips mirror_tta may use (infer/tta.py)
        "loss": {"name": cfg.loss, **run.loss_options},
        "train_cases": train_ids,
        "val_cases": val_ids,
        "best_epoch": state.best_epoch,
        "best_smoothed_val_dice": state.best_score if run.val_cases else None,
        "epochs_run": state.epoch,
        "steps_run": state.step,
        "ended_by": ended_by,
        "training_minutes": round(state.train_seconds / 60, 3),
        "device": str(run.device),
        "versions": _versions(),
        "data_fingerprint": _data_fingerprint(run.plan.to_dict(), train_ids, val_ids),
        "postprocess_choice": postprocess_choice,
        "review": review,
    }
    return write_model_card(run.out_dir, meta).meta


def _choose_postprocessing(run: Run) -> dict:
    """Postprocessing chosen by the data (:func:`unet_pipeline.postprocess.choose_postprocessing`):
    the final model's argmax of the validation cases (the training cases when there are none)
    against their labels, on the preprocessed grid; plus each class's ``min_volume_ml`` learned
    from the labels of the training and validation cases
    (:func:`unet_pipeline.postprocess.learn_min_volumes`). Returns ``{"decided_on", "config",
    "table", "min_volume"}``: ``table`` also holds each class's mean Dice with the whole ``config``
    (``final``), ``min_volume`` where the minimum volumes came from."""
    from safetensors.torch import load_file

    from ..postprocess import (choose_postprocessing, learn_min_volumes, mean_class_dice, postprocess_labels,
                               with_min_volumes)

    cases, decided_on = (run.val_cases, "validation cases") if run.val_cases else (run.train_cases, "training cases")
    run.model.load_state_dict(load_file(str(run.out_dir / "model.safetensors")))
    run.model.eval()
    preds, refs = [], []
    for case in cases:
        pred = np.zeros(case.label.shape, np.uint8)
        for z0, probs in iter_volume_probabilities(run.model, case.image, in_slices=run.mcfg.in_channels,
                                                   num_classes=len(run.label_values) + 1, patch_size=run.patch,
                                                   overlap=0.25, batch_size=8, device=run.device,
                                                   margin=run.margin, pad_value=case.pad_value):
            pred[z0:z0 + probs.shape[0]] = class_argmax(probs)
        preds.append(pred)
        refs.append(np.asarray(case.label))
    names = dict(enumerate(run.label_names, start=1))  # class index -> name
    config, table = choose_postprocessing(preds, refs, names)
    spacing = _spacing_of(run)
    labelled = [*run.train_cases, *run.val_cases]
    min_volume = learn_min_volumes(((np.asarray(c.label), spacing(c)) for c in labelled), names)
    config = with_min_volumes(config, min_volume)
    finals = [postprocess_labels(p, spacing(c), config, names) for p, c in zip(preds, cases)]
    for name, dice in mean_class_dice(finals, refs, names).items():
        table[name]["final"] = dice
    log.info("postprocessing chosen on the %s: %s", decided_on,
             "; ".join(f"{n}: largest component {'kept' if t['adopted'] else 'not used'}, min volume "
                       f"{(config.get(n) or {}).get('min_volume_ml')} mL (Dice {t['before']} -> {t['after']} "
                       f"-> {t['final']})" for n, t in table.items()))
    return {"decided_on": decided_on, "config": config, "table": table, "min_volume": min_volume}


def _spacing_of(run: Run):
    """A case's ``(z, y, x)`` preprocessed spacing in mm (the plan's when the case has none recorded)."""
    plan = run.plan.to_dict()
    fallback = (float(plan.get("median_slice_thickness_mm") or 1.0), *plan["target_spacing_mm"])
    return lambda case: tuple(case.spacing_mm or fallback)


def _review_record(run: Run, postprocess: Mapping) -> dict:
    """``model.json``'s ``review`` (:func:`unet_pipeline.quality.fit.model_review`: training distribution,
    calibration judging segmentations after ``postprocess``, context reference), with the final
    model of :func:`_choose_postprocessing`."""
    from ..quality.fit import model_review

    def predict(image: np.ndarray, pad_value: float):
        return iter_volume_probabilities(run.model, image, in_slices=run.mcfg.in_channels,
                                         num_classes=len(run.label_values) + 1, patch_size=run.patch, overlap=0.25,
                                         batch_size=8, device=run.device, margin=run.margin, pad_value=pad_value)

    plan = run.plan.to_dict()
    spacing_of = _spacing_of(run)
    spacing = {c.case_id: spacing_of(c) for c in [*run.train_cases, *run.val_cases]}
    run.model.eval()
    with torch.inference_mode():
        return model_review(predict, run.model, run.out_dir, run.train_cases, run.val_cases,
                            class_names=run.label_names, spacing_of=spacing.__getitem__, intensity=plan["intensity"],
                            postprocess=postprocess, device=run.device)


def _write_outputs(out_dir: Path, model: torch.nn.Module, history: list[dict]) -> None:
    """Write ``train_log.csv`` (from ``history``) and ``model.safetensors`` (a copy of ``best.safetensors``).

    Both again when a finished run is rerun: Snakemake deletes a rule's outputs before it runs it,
    and the checkpoint only holds the last epoch's weights, so ``best.safetensors`` is kept.
    """
    write_log(out_dir / "train_log.csv", history)
    best = out_dir / "best.safetensors"
    if best.exists():
        with atomic_path(out_dir / "model.safetensors") as tmp:
            shutil.copyfile(best, tmp)
    else:
        log.warning("%s is missing: model.safetensors holds the last epoch's weights", best)
        save_weights(model, out_dir / "model.safetensors")


def _versions() -> dict:
    import nibabel
    import SimpleITK

    from .. import __version__

    return {"unet_pipeline": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "nibabel": nibabel.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
            "python": platform.python_version()}


def _data_fingerprint(plan: Mapping, train_ids: Sequence[str], val_ids: Sequence[str]) -> str:
    """``model.json``'s ``data_fingerprint``: SHA-256 of the plan and the sorted case ids."""
    blob = json.dumps({"plan": plan, "train": sorted(train_ids), "val": sorted(val_ids)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
