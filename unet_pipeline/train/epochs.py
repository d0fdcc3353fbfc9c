"""The epochs of a training run: steps, validation, best epoch, early stopping, time budget.

Batches come from a :class:`~unet_pipeline.train.sampler.BatchStream` that draws the next ones in one
background thread (``prefetch``, the default; no worker processes); the checkpoint holds the
sampler's generator state after the last batch used, so a resumed run draws the same batches.

A checkpoint (:func:`unet_pipeline.train.checkpoint.save_checkpoint`) is written at the end of every
epoch, every ``checkpoint_minutes``, and when SIGTERM or SIGUSR1 arrives; after a signal,
:class:`TrainingInterrupted` is raised. The epoch's row goes to ``train_log.csv``, the best
epoch's weights to ``best.safetensors``.
"""

from __future__ import annotations

import csv
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_path
from ..model.tiling import class_argmax, iter_volume_probabilities
from .augment import augment_batch
from .checkpoint import SignalFlag, TrainState, save_checkpoint
from .run import Run
from .sampler import BatchStream
from .settings import TrainConfig

__all__ = ["TrainingInterrupted", "run_epochs", "select_best_epoch", "should_stop", "write_log", "save_weights"]

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Raised after a signal-triggered checkpoint; rerunning training resumes from it."""


def _update_best(state: TrainState, score: float, smoothing: float) -> bool:
    """Fold one finished epoch's score (validation Dice, or minus the training loss) into ``state``.

    The smoothed score is ``smoothing * previous + (1 - smoothing) * score`` (the first epoch's
    score as it is); the epoch is the new best when its smoothed score beats every earlier one
    (ties keep the earlier epoch). ``state.epoch`` is the epoch just finished (0-based).
    Returns True for a new best.
    """
    state.smoothed = score if state.smoothed is None else smoothing * state.smoothed + (1 - smoothing) * score
    if state.best_score is None or state.smoothed > state.best_score:
        state.best_score, state.best_epoch, state.stale_epochs = state.smoothed, state.epoch + 1, 0
        return True
    state.stale_epochs += 1
    return False


def should_stop(state: TrainState, patience: int) -> bool:
    """Early stopping: ``patience`` epochs in a row without a new best smoothed score (0 = never)."""
    return bool(patience) and state.stale_epochs >= patience


def select_best_epoch(scores: Sequence[float], *, smoothing: float = 0.5, patience: int = 0) -> dict:
    """Replay the best-epoch selection and early stopping of :func:`unet_pipeline.train.loop.train` on per-epoch scores.

    Returns ``{"best_epoch": 1-based, "best_smoothed": ..., "epochs_run": ..., "smoothed": [...]}``;
    ``epochs_run`` is where early stopping ends training (``len(scores)`` when it does not).
    """
    state = TrainState()
    smoothed = []
    for score in scores:
        _update_best(state, float(score), smoothing)
        smoothed.append(state.smoothed)
        state.epoch += 1
        if should_stop(state, patience):
            break
    return {"best_epoch": state.best_epoch, "best_smoothed": state.best_score, "epochs_run": state.epoch,
            "smoothed": smoothed}


def run_epochs(run: Run, state: TrainState, batches: BatchStream, signals: SignalFlag) -> None:
    """Train epoch after epoch until ``training.epochs``, early stopping or the time budget ends the run;
    a checkpoint after every epoch (and within one: :func:`_run_epoch`)."""
    cfg = run.cfg
    while state.epoch < cfg.epochs and not should_stop(state, cfg.early_stopping_patience) \
            and not state.budget_spent:
        seconds = _run_epoch(run, state, batches, signals)
        _end_epoch(run, state, seconds)
        save_checkpoint(run.ckpt, run.model, run.optimizer, run.scaler, state, batches.rng_state, run.aug_gen,
                        run.fingerprint)
        if should_stop(state, cfg.early_stopping_patience):
            log.info("early stopping: no improvement of the smoothed score for %d epochs", state.stale_epochs)
        elif state.budget_spent:
            log.info("training.max_minutes: the budget of %g min is spent after %d step(s) (%.1f min)",
                     cfg.max_minutes, state.step, state.train_seconds / 60)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return cfg.lr * (1.0 - min(step, total - 1) / total) ** cfg.poly_power


def _backward_and_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler,
                       grad_clip: float) -> float:
    """Backward pass, gradient clipping to the global L2 norm ``grad_clip`` (0 = off), optimizer step.

    Returns the gradient norm before clipping (``nan`` when clipping is off).
    """
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    norm = float("nan")
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm


def _planned_steps(run: Run, state: TrainState, elapsed: float) -> int:
    """Optimizer steps the learning-rate schedule runs to: ``epochs x iterations_per_epoch``, or
    with ``max_minutes`` as many as the budget allows at the rate measured so far (``elapsed``
    seconds of this run, validation included, over ``state.step`` steps), re-estimated every step."""
    total = run.total_steps
    if not run.cfg.max_minutes or state.step < 1 or elapsed <= 0:
        return total
    per_step = elapsed / state.step
    return int(min(total, max(state.step + 1, round(60 * run.cfg.max_minutes / per_step))))


def _budget_left(run: Run, state: TrainState, elapsed: float) -> bool:
    """Whether another step fits the budget, keeping the time of the last validation for the epoch's end."""
    if not run.cfg.max_minutes:
        return True
    per_step = elapsed / state.step if state.step else 0.0
    return elapsed + per_step + state.last_val_seconds < 60 * run.cfg.max_minutes


def _train_step(run: Run, batch) -> torch.Tensor:
    """One optimizer step on a batch (augmented on the device); returns the loss."""
    x = batch.image.to(run.device, non_blocking=True)
    y = batch.label.to(run.device, non_blocking=True)
    w = batch.weight.to(run.device, non_blocking=True) if batch.weight is not None else None
    x, y, w = augment_batch(x, y, run.net_augment, weight=w, generator=run.aug_gen,
                            hu_per_unit=run.plan.intensity.std)
    m = run.margin
    if m:  # unpadded U-Net: the loss covers the output (centre) region only
        y = y[:, m:-m, m:-m]
        w = w[:, m:-m, m:-m] if w is not None else None
    x = x.contiguous(memory_format=torch.channels_last)
    run.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        logits = run.step_model(x)
    loss = run.loss_fn(logits.float(), y, weight_map=w)
    if not torch.isfinite(loss):  # before the step: the weights stay finite
        raise FloatingPointError(f"training loss is {loss.item()}; lower training.lr")
    _backward_and_step(loss, run.model, run.optimizer, run.scaler, run.cfg.grad_clip)
    return loss


def _run_epoch(run: Run, state: TrainState, batches: BatchStream, signals: SignalFlag) -> float:
    """The iterations of one epoch (from ``state.iteration`` on); returns its training seconds.

    Ends early, setting ``state.budget_spent``, when ``max_minutes`` leaves no time for another
    step. On a signal: checkpoint, then :class:`TrainingInterrupted`.
    """
    from tqdm.auto import tqdm

    cfg = run.cfg
    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=cfg.iterations_per_epoch, initial=state.iteration, disable=not show_bar,
               desc=f"epoch {state.epoch + 1}/{cfg.epochs}", unit="it", leave=False)
    t0, w0 = time.perf_counter(), batches.wait_seconds
    last_ckpt = time.monotonic()

    def checkpoint() -> None:
        nonlocal t0, w0, last_ckpt
        now = time.perf_counter()
        state.epoch_wait_seconds += batches.wait_seconds - w0
        w0 = batches.wait_seconds
        state.epoch_seconds += now - t0
        state.train_seconds += now - t0
        t0, last_ckpt = now, time.monotonic()
        save_checkpoint(run.ckpt, run.model, run.optimizer, run.scaler, state, batches.rng_state, run.aug_gen,
                         run.fingerprint)

    while state.iteration < cfg.iterations_per_epoch:
        elapsed = state.train_seconds + time.perf_counter() - t0
        if not _budget_left(run, state, elapsed):
            state.budget_spent = True
            break
        lr = _lr_at(cfg, state.step, _planned_steps(run, state, elapsed))
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        loss = float(_train_step(run, next(batches)).item())
        state.iteration += 1
        state.step += 1
        state.epoch_loss_sum += loss
        state.last_lr = lr
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        if cfg.stop_after_iterations and state.step >= cfg.stop_after_iterations and signals.received is None:
            signals.received = signal.SIGTERM
        if signals.received is not None:
            checkpoint()
            bar.close()
            log.warning("signal %s received: checkpoint written to %s (epoch %d, iteration %d); "
                        "rerun to resume", signals.name, run.ckpt, state.epoch + 1, state.iteration)
            raise TrainingInterrupted(f"interrupted by signal {signals.name}; checkpoint saved to {run.ckpt}")
        if cfg.checkpoint_minutes and time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes:
            checkpoint()
    bar.close()
    now = time.perf_counter()
    state.train_seconds += now - t0
    state.epoch_wait_seconds += batches.wait_seconds - w0
    return state.epoch_seconds + now - t0


def _end_epoch(run: Run, state: TrainState, seconds: float) -> None:
    """Validate, pick the best epoch, log the epoch's row (``train_log.csv``) and reset the epoch counters."""
    cfg = run.cfg
    done = max(state.iteration, 1)  # iterations of this epoch (fewer when the budget ended it)
    train_loss = state.epoch_loss_sum / done
    # The learning rate of the epoch's last step (also when resumed right after it).
    row: dict[str, Any] = {"epoch": state.epoch + 1, "train_loss": round(train_loss, 6), "lr": state.last_lr}
    t_val = time.perf_counter()
    if run.val_cases:
        val = _validate(run.step_model, run.val_cases, num_classes=len(run.label_values) + 1, patch_size=run.patch,
                        in_slices=run.mcfg.in_channels, device=run.device, margin=run.margin)
        row["val_dice_mean"] = round(val["mean"], 6)
        for name, d in zip(run.label_names, val["per_class"]):
            row[f"val_dice_{name}"] = "" if np.isnan(d) else round(d, 6)  # "": class in no case
        score = val["mean"]
    else:
        row["val_dice_mean"] = ""
        row.update({f"val_dice_{name}": "" for name in run.label_names})
        score = -train_loss
    state.last_val_seconds = time.perf_counter() - t_val
    state.train_seconds += state.last_val_seconds
    row["seconds"] = round(seconds, 3)
    row["slices_per_s"] = round(done * cfg.batch_size / max(seconds, 1e-9), 3)
    row["data_wait_share"] = round(state.epoch_wait_seconds / max(seconds, 1e-9), 3)  # the step idle, waiting for data
    if _update_best(state, score, cfg.val_smoothing):
        save_weights(run.model, run.out_dir / "best.safetensors")
    state.history.append(row)
    log.info("epoch %d/%d: loss %.4f, val Dice %s, %.1f s, %.1f slices/s", state.epoch + 1, cfg.epochs, train_loss,
             row["val_dice_mean"] if run.val_cases else "n/a", seconds, row["slices_per_s"])
    state.epoch += 1
    state.iteration = 0
    state.epoch_loss_sum = 0.0
    state.epoch_seconds = 0.0
    state.epoch_wait_seconds = 0.0
    write_log(run.out_dir / "train_log.csv", state.history)


def _validate(model, cases, *, num_classes: int, patch_size, in_slices: int, device, margin: int) -> dict:
    """Validation Dice of each foreground class over ``cases``, averaged as :func:`_summarize_dice` says."""
    model.eval()
    inter, ref_n, pred_n = (np.zeros((len(cases), num_classes - 1)) for _ in range(3))
    for ci, case in enumerate(cases):
        for z0, probs in iter_volume_probabilities(model, case.image, in_slices=in_slices, num_classes=num_classes,
                                                   patch_size=patch_size, overlap=0.25, batch_size=8, device=device,
                                                   margin=margin, pad_value=case.pad_value):
            pred = class_argmax(probs)
            ref = np.asarray(case.label[z0:z0 + pred.shape[0]])
            for k in range(1, num_classes):
                p, r = pred == k, ref == k
                inter[ci, k - 1] += np.count_nonzero(p & r)
                ref_n[ci, k - 1] += np.count_nonzero(r)
                pred_n[ci, k - 1] += np.count_nonzero(p)
    model.train()
    return _summarize_dice(inter, ref_n, pred_n)


def _summarize_dice(inter, ref_n, pred_n) -> dict:
    """Per-class and mean Dice from voxel counts of the validation cases.

    Parameters
    ----------
    inter, ref_n, pred_n
        ``(cases, classes)`` voxel counts of each foreground class in each case: reference and
        prediction overlapping, in the reference, in the prediction.

    Returns
    -------
    dict
        ``per_class``: for each class, the mean Dice over the cases where the class is in the
        reference or the prediction (NaN when it is in neither in every case). A class absent from
        both says nothing about the network and is left out, so predicting nothing earns nothing;
        a class predicted where the reference has none counts (Dice 0). ``mean``: the mean of the
        classes that are not NaN, or 1.0 when none is left (validation cases without any
        foreground, and none predicted: nothing to find and nothing found).
    """
    inter, ref_n, pred_n = (np.asarray(a, dtype=float) for a in (inter, ref_n, pred_n))
    denom = ref_n + pred_n
    counted = denom > 0
    dice = np.where(counted, 2 * inter / np.where(counted, denom, 1.0), 0.0)
    n = counted.sum(0)
    per_class = np.where(n > 0, dice.sum(0) / np.maximum(n, 1), np.nan)
    present = per_class[~np.isnan(per_class)]
    return {"per_class": per_class.tolist(), "mean": float(present.mean()) if present.size else 1.0}


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        columns = list(dict.fromkeys(k for row in rows for k in row))  # a run resumed from an older version adds some
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
