"""The training loop: sampling, batched augmentation, loss, validation, export of the model.

Checkpoints, the run's fingerprint and resuming live in :mod:`unet_pipeline.train.checkpoint`;
this module runs the epochs and writes the model folder.

Nothing is lost: a checkpoint (weights, optimizer, scaler, every RNG state, epoch and
iteration) is written atomically at the end of every epoch, every ``checkpoint_minutes``, and
when SIGTERM or SIGUSR1 arrives (what SLURM sends before a time limit or preemption). Calling
:func:`train` again with the same output folder resumes from that checkpoint; with
``deterministic: true`` on the CPU the resumed run ends with exactly the weights of an
uninterrupted run. After a signal, :class:`TrainingInterrupted` is raised (exit status 1 of a
rule script), so the job counts as unfinished.

Batches come from a :class:`~unet_pipeline.train.sampler.BatchStream` that draws the next ones in one
background thread (``prefetch``, the default; no worker processes); the checkpoint holds the
sampler's generator state after the last batch used, so a resumed run draws the same batches.

A checkpoint only continues the run it was written for: it carries a fingerprint of the settings
that shape the run (config sections model, loss, augment and training, the plan, the training
and validation case ids; see :func:`run_fingerprint`). When a rerun's fingerprint differs, or the
checkpoint has none (older versions), the old run's files are renamed to
``<name>.stale-<UTC time><ext>`` (e.g. ``checkpoint.stale-20261202T063000Z.pt``), a WARNING names
what changed, and training starts afresh. A rerun of a finished run with the same fingerprint
trains no further; it writes the outputs again from the checkpoint and ``best.safetensors``.

Outputs in ``out_dir``: ``model.safetensors`` (weights of the best epoch by smoothed validation
Dice, no pickle), ``model.json`` (architecture, plan, labels, training config, versions, data
fingerprint), ``train_log.csv`` (one row per epoch), ``curves.png``, ``checkpoint.pt``,
``best.safetensors`` (a copy of the best weights, kept for reruns of a finished run).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..io.files import atomic_path
from ..model.card import write_model_card
from ..device import select_device
from ..model.tiling import class_argmax, iter_volume_probabilities
from ..model.unet import UNetConfig, build_unet
from ..schema import section_defaults
from .augment import AugmentConfig, augment_batch, mirroring_record
from .checkpoint import SignalFlag, TrainState, resume_or_start, run_fingerprint, save_checkpoint
from .losses import make_loss
from .sampler import BatchStream, PatchSampler, load_training_cases

__all__ = ["TrainConfig", "train", "TrainingInterrupted"]

log = logging.getLogger(__name__)

_DEFAULTS = section_defaults("training")  # the one place the defaults are written: the config schema


class TrainingInterrupted(RuntimeError):
    """Raised after a signal-triggered checkpoint; rerunning training resumes from it."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (the ``training`` section of the config; defaults from the config schema).

    ``iterations_per_epoch`` batches of ``batch_size`` patches make an epoch; the learning rate
    follows ``lr * (1 - step / total_steps) ** poly_power``.
    """

    epochs: int = _DEFAULTS["epochs"]
    iterations_per_epoch: int = _DEFAULTS["iterations_per_epoch"]
    batch_size: int = _DEFAULTS["batch_size"]
    optimizer: str = _DEFAULTS["optimizer"]  # "sgd" (Nesterov, momentum 0.99) | "adamw"
    lr: float = _DEFAULTS["lr"]
    momentum: float = _DEFAULTS["momentum"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    poly_power: float = _DEFAULTS["poly_power"]
    grad_clip: float = _DEFAULTS["grad_clip"]  # max. global L2 norm of the gradients; 0 = no clipping
    loss: str = "dice_ce"  # set from the loss section by stages.train
    foreground_fraction: float = _DEFAULTS["foreground_fraction"]
    seed: int = _DEFAULTS["seed"]
    device: str = _DEFAULTS["device"]
    amp: bool = _DEFAULTS["amp"]
    deterministic: bool = _DEFAULTS["deterministic"]
    checkpoint_minutes: float = _DEFAULTS["checkpoint_minutes"]
    val_smoothing: float = _DEFAULTS["val_smoothing"]  # exponential smoothing of the validation Dice (best epoch)
    early_stopping_patience: int = _DEFAULTS["early_stopping_patience"]  # epochs without improvement; 0 = off
    compile: bool = _DEFAULTS["compile"]
    threads: int = _DEFAULTS["threads"]  # torch intra-op threads; 0 = torch's default
    progress: bool | None = _DEFAULTS["progress"]  # tqdm bar; None = only on a terminal
    prefetch: bool = _DEFAULTS["prefetch"]  # draw the next batches in a background thread; same batches
    max_minutes: float = _DEFAULTS["max_minutes"]  # time budget of the whole run, 0 = none; the LR schedule follows it
    stop_after_iterations: int = 0  # testing aid: simulate a SIGTERM after this many iterations in total (0 = off)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"training: unknown key(s) {unknown}; allowed: {sorted(names)}")
        cfg = cls(**d)
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"training.optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
        for key in ("epochs", "iterations_per_epoch", "batch_size"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"training.{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.lr <= 0:
            raise ValueError(f"training.lr must be > 0, got {cfg.lr}")
        if cfg.grad_clip < 0:
            raise ValueError(f"training.grad_clip must be >= 0 (0 = off), got {cfg.grad_clip}")
        if not 0.0 <= cfg.val_smoothing < 1.0:
            raise ValueError(f"training.val_smoothing must be in [0, 1), got {cfg.val_smoothing}")
        if cfg.max_minutes < 0:
            raise ValueError(f"training.max_minutes must be >= 0 (0 = no budget), got {cfg.max_minutes}")
        if cfg.early_stopping_patience < 0:
            raise ValueError("training.early_stopping_patience must be >= 0 (0 = off), "
                             f"got {cfg.early_stopping_patience}")
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def _should_stop(state: TrainState, patience: int) -> bool:
    """Early stopping: ``patience`` epochs in a row without a new best smoothed score (0 = never)."""
    return bool(patience) and state.stale_epochs >= patience


def select_best_epoch(scores: Sequence[float], *, smoothing: float = 0.5, patience: int = 0) -> dict:
    """Replay the best-epoch selection and early stopping of :func:`train` on per-epoch scores.

    Returns ``{"best_epoch": 1-based, "best_smoothed": ..., "epochs_run": ..., "smoothed": [...]}``;
    ``epochs_run`` is where early stopping ends training (``len(scores)`` when it does not).
    """
    state = TrainState()
    smoothed = []
    for score in scores:
        _update_best(state, float(score), smoothing)
        smoothed.append(state.smoothed)
        state.epoch += 1
        if _should_stop(state, patience):
            break
    return {"best_epoch": state.best_epoch, "best_smoothed": state.best_score, "epochs_run": state.epoch,
            "smoothed": smoothed}


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


def _seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return cfg.lr * (1.0 - min(step, total - 1) / total) ** cfg.poly_power


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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


def _write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        columns = list(dict.fromkeys(k for row in rows for k in row))  # a run resumed from an older version adds some
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class _Run:
    """Everything one training run holds, built once by :func:`_build_run`."""

    cfg: TrainConfig
    mcfg: UNetConfig
    plan: dict
    out_dir: Path
    device: torch.device
    model: torch.nn.Module
    step_model: torch.nn.Module  # ``model``, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scaler: Any
    use_amp: bool
    amp_dtype: torch.dtype
    loss_fn: Any
    loss_options: dict
    augment_config: AugmentConfig
    net_augment: AugmentConfig  # lr_label_pairs as class indices
    margin: int  # unpadded U-Net: px cropped from each side of the input tile
    patch: tuple[int, int]
    train_cases: list
    val_cases: list
    label_values: list[int]
    label_names: list[str]
    np_rng: np.random.Generator
    aug_gen: torch.Generator
    sampler: PatchSampler
    fingerprint: dict

    @property
    def ckpt(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.cfg.iterations_per_epoch


def train(train_pairs: Sequence[tuple[str | Path, str | Path]], val_pairs: Sequence[tuple[str | Path, str | Path]],
          plan: Mapping, out_dir: str | Path, *, model_config: Mapping | UNetConfig, train_config: TrainConfig,
          augment_config: AugmentConfig, loss_options: Mapping | None = None) -> dict:
    """Train a U-Net; resume from ``out_dir/checkpoint.pt`` when it was written for the same run.

    A checkpoint of another run (other settings, plan or cases; see :func:`run_fingerprint`) is
    moved aside with the old run's files, and training starts afresh (:func:`resume_or_start`).
    With ``training.max_minutes`` the run ends, with a finished model, when that much time (the
    checkpointed total over every resumed part) is spent; the learning-rate schedule follows the
    budget (:func:`_planned_steps`).

    Parameters
    ----------
    train_pairs, val_pairs
        ``(preprocessed_dir, slice_dir)`` per case; validation may be empty.
    plan
        The plan from :func:`unet_pipeline.plan.fingerprint.make_plan`.
    out_dir
        Output folder (model files, log, curves, checkpoint).

    Returns
    -------
    dict
        The ``model.json`` content.
    """
    run = _build_run(train_pairs, val_pairs, plan, Path(out_dir), model_config=model_config, train_config=train_config,
                     augment_config=augment_config, loss_options=loss_options)
    cfg = run.cfg
    state = resume_or_start(run.ckpt, run.fingerprint, run.model, run.optimizer, run.scaler, run.np_rng, run.aug_gen)
    # The sampler's generator is only used by the stream from here on; the checkpoint takes the
    # generator state after the last batch used (batches drawn ahead are drawn again on resume).
    batches = BatchStream(run.sampler, cfg.batch_size, count=max(run.total_steps - state.step, 0), prefetch=cfg.prefetch,
                          pin_memory=run.device.type == "cuda")
    run.model.train()
    with SignalFlag() as signals, batches:
        while state.epoch < cfg.epochs and not _should_stop(state, cfg.early_stopping_patience) \
                and not state.budget_spent:
            seconds = _run_epoch(run, state, batches, signals)
            _end_epoch(run, state, seconds)
            save_checkpoint(run.ckpt, run.model, run.optimizer, run.scaler, state, batches.rng_state, run.aug_gen,
                             run.fingerprint)
            if _should_stop(state, cfg.early_stopping_patience):
                log.info("early stopping: no improvement of the smoothed score for %d epochs", state.stale_epochs)
            elif state.budget_spent:
                log.info("training.max_minutes: the budget of %g min is spent after %d step(s) (%.1f min)",
                         cfg.max_minutes, state.step, state.train_seconds / 60)
    return _export(run, state)


def _build_run(train_pairs, val_pairs, plan: Mapping, out_dir: Path, *, model_config: Mapping | UNetConfig,
               train_config: TrainConfig, augment_config: AugmentConfig, loss_options: Mapping | None) -> _Run:
    """Device, network, optimizer, loss, cases, sampler and fingerprint of a run (see :func:`train`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if device.type == "cpu" and cfg.device not in ("auto", "cpu"):
        log.warning("no usable GPU: training on the CPU")
    _seed_everything(cfg.seed, cfg.deterministic)
    num_classes = int(plan["num_classes"])
    mcfg = model_config if isinstance(model_config, UNetConfig) else UNetConfig.from_dict(
        {**dict(model_config), "num_classes": num_classes})
    model = build_unet(mcfg).to(device)
    margin = model.margin() if not mcfg.padded else 0
    patch = tuple(int(p) for p in plan["patch_size"])
    if not mcfg.padded:  # the unpadded U-Net only produces certain output sizes: take the next one up
        valid = tuple(model.valid_output_size(p) for p in patch)
        if valid != patch:
            log.info("unpadded U-Net: output tile %s -> %s px (input tile %s px with the %d px margin)",
                     list(patch), list(valid), [v + 2 * margin for v in valid], margin)
            patch = valid
            plan = {**dict(plan), "patch_size": list(patch)}  # model.json records the tile inference uses
    loss_options = dict(loss_options or {})
    train_cases = load_training_cases(train_pairs, need_weights=cfg.loss == "weighted_ce")
    val_cases = load_training_cases(val_pairs) if val_pairs else []
    np_rng = np.random.default_rng(cfg.seed)
    sampler = PatchSampler(train_cases, (patch[0] + 2 * margin, patch[1] + 2 * margin), in_slices=mcfg.in_channels,
                           foreground_fraction=cfg.foreground_fraction, rng=np_rng, num_classes=num_classes)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    model = model.to(memory_format=torch.channels_last)  # the convolutions' fast layout on CPU and GPU alike
    label_values = sorted(int(v) for v in plan["labels"])  # class index k stands for label_values[k - 1]
    fingerprint = run_fingerprint(model=mcfg, loss=loss_options, augment=augment_config, training=cfg, plan=plan,
                                   train_ids=[c.case_id for c in train_cases], val_ids=[c.case_id for c in val_cases])
    return _Run(cfg=cfg, mcfg=mcfg, plan=dict(plan), out_dir=out_dir, device=device, model=model,
                step_model=torch.compile(model) if cfg.compile else model,
                optimizer=_make_optimizer(cfg, model.parameters()),
                scaler=torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None,
                use_amp=use_amp, amp_dtype=amp_dtype, loss_fn=make_loss(cfg.loss, **loss_options),
                loss_options=loss_options, augment_config=augment_config,
                net_augment=_pairs_as_class_indices(augment_config, label_values),  # model.json keeps the user's values
                margin=margin, patch=patch, train_cases=train_cases, val_cases=val_cases, label_values=label_values,
                label_names=[plan["labels"][str(v)] for v in label_values], np_rng=np_rng,
                aug_gen=torch.Generator().manual_seed(cfg.seed + 1), sampler=sampler, fingerprint=fingerprint)


def _planned_steps(run: _Run, state: TrainState, elapsed: float) -> int:
    """Optimizer steps the learning-rate schedule runs to: ``epochs x iterations_per_epoch``, or
    with ``max_minutes`` as many as the budget allows at the rate measured so far (``elapsed``
    seconds of this run, validation included, over ``state.step`` steps), re-estimated every step."""
    total = run.total_steps
    if not run.cfg.max_minutes or state.step < 1 or elapsed <= 0:
        return total
    per_step = elapsed / state.step
    return int(min(total, max(state.step + 1, round(60 * run.cfg.max_minutes / per_step))))


def _budget_left(run: _Run, state: TrainState, elapsed: float) -> bool:
    """Whether another step fits the budget, keeping the time of the last validation for the epoch's end."""
    if not run.cfg.max_minutes:
        return True
    per_step = elapsed / state.step if state.step else 0.0
    return elapsed + per_step + state.last_val_seconds < 60 * run.cfg.max_minutes


def _train_step(run: _Run, batch) -> torch.Tensor:
    """One optimizer step on a batch (augmented on the device); returns the loss."""
    x = batch.image.to(run.device, non_blocking=True)
    y = batch.label.to(run.device, non_blocking=True)
    w = batch.weight.to(run.device, non_blocking=True) if batch.weight is not None else None
    x, y, w = augment_batch(x, y, run.net_augment, weight=w, generator=run.aug_gen,
                            hu_per_unit=float(run.plan["intensity"]["std"]))
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


def _run_epoch(run: _Run, state: TrainState, batches: BatchStream, signals: SignalFlag) -> float:
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


def _end_epoch(run: _Run, state: TrainState, seconds: float) -> None:
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
        _save_weights(run.model, run.out_dir / "best.safetensors")
    state.history.append(row)
    log.info("epoch %d/%d: loss %.4f, val Dice %s, %.1f s, %.1f slices/s", state.epoch + 1, cfg.epochs, train_loss,
             row["val_dice_mean"] if run.val_cases else "n/a", seconds, row["slices_per_s"])
    state.epoch += 1
    state.iteration = 0
    state.epoch_loss_sum = 0.0
    state.epoch_seconds = 0.0
    state.epoch_wait_seconds = 0.0
    _write_log(run.out_dir / "train_log.csv", state.history)


def _export(run: _Run, state: TrainState) -> dict:
    """Write ``model.safetensors`` (best epoch), ``train_log.csv``, ``curves.png`` and ``model.json``."""
    from .curves import plot_training_curves

    _write_outputs(run.out_dir, run.model, state.history)
    plot_training_curves(run.out_dir / "train_log.csv", run.out_dir / "curves.png")
    postprocess_choice = _choose_postprocessing(run)
    review = _review_record(run)
    cfg = run.cfg
    if state.budget_spent:
        ended_by = "max_minutes"
    elif _should_stop(state, cfg.early_stopping_patience):
        ended_by = "early_stopping"
    else:
        ended_by = "epochs"
    train_ids = [c.case_id for c in run.train_cases]
    val_ids = [c.case_id for c in run.val_cases]
    meta = {
        "architecture": run.mcfg.to_dict(),
        "plan": run.plan,
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
        "data_fingerprint": _data_fingerprint(run.plan, train_ids, val_ids),
        "postprocess_choice": postprocess_choice,
        "review": review,
    }
    return write_model_card(run.out_dir, meta).meta


def _choose_postprocessing(run: _Run) -> dict:
    """Postprocessing chosen by the data (:func:`unet_pipeline.postprocess.choose_postprocessing`):
    the final model's argmax of the validation cases (the training cases when there are none)
    against their labels, on the preprocessed grid. Returns ``{"decided_on", "config", "table"}``."""
    from safetensors.torch import load_file

    from ..postprocess import choose_postprocessing

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
    log.info("postprocessing chosen on the %s: %s", decided_on,
             "; ".join(f"{n}: largest component {'kept' if t['adopted'] else 'not used'} "
                       f"(Dice {t['before']} -> {t['after']})" for n, t in table.items()))
    return {"decided_on": decided_on, "config": config, "table": table}


def _review_record(run: _Run) -> dict:
    """``model.json``'s ``review``: training distribution and calibration of the review list
    (:func:`unet_pipeline.quality.fit.review_record`), with the final model of :func:`_choose_postprocessing`."""
    from ..quality.fit import review_record

    def predict(image: np.ndarray, pad_value: float):
        return iter_volume_probabilities(run.model, image, in_slices=run.mcfg.in_channels,
                                         num_classes=len(run.label_values) + 1, patch_size=run.patch, overlap=0.25,
                                         batch_size=8, device=run.device, margin=run.margin, pad_value=pad_value)

    fallback = (float(run.plan.get("median_slice_thickness_mm", 1.0)), *run.plan["target_spacing_mm"])
    spacing = {c.case_id: c.spacing_mm or fallback for c in [*run.train_cases, *run.val_cases]}
    run.model.eval()
    with torch.inference_mode():
        return review_record(predict, run.train_cases, run.val_cases, class_names=run.label_names,
                             spacing_of=spacing.__getitem__, intensity=run.plan["intensity"])


def _write_outputs(out_dir: Path, model: torch.nn.Module, history: list[dict]) -> None:
    """Write ``train_log.csv`` (from ``history``) and ``model.safetensors`` (a copy of ``best.safetensors``).

    Both again when a finished run is rerun: Snakemake deletes a rule's outputs before it runs it,
    and the checkpoint only holds the last epoch's weights, so ``best.safetensors`` is kept.
    """
    _write_log(out_dir / "train_log.csv", history)
    best = out_dir / "best.safetensors"
    if best.exists():
        with atomic_path(out_dir / "model.safetensors") as tmp:
            shutil.copyfile(best, tmp)
    else:
        log.warning("%s is missing: model.safetensors holds the last epoch's weights", best)
        _save_weights(model, out_dir / "model.safetensors")


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _pairs_as_class_indices(cfg: AugmentConfig, label_values: Sequence[int]) -> AugmentConfig:
    """``lr_label_pairs`` are given as label values (the user's); the network sees class indices."""
    index = {v: k for k, v in enumerate(label_values, start=1)}
    pairs = []
    for a, b in cfg.lr_label_pairs:
        if a not in index or b not in index:
            raise ConfigError(f"augment.lr_label_pairs: [{a}, {b}] names a label value that is not a class "
                              f"(classes: {list(label_values)})")
        pairs.append((index[a], index[b]))
    return dataclasses.replace(cfg, lr_label_pairs=tuple(pairs))
