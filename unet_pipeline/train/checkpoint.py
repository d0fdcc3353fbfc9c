"""Checkpoint and resume of a training run: what a checkpoint holds, whether it continues this run.

:class:`TrainState` is the run's position and scores; :func:`save_checkpoint` writes it with the
weights, optimizer, scaler and every random generator's state (atomically), and
:func:`resume_or_start` reads it back when the checkpoint's :func:`run_fingerprint` matches the
run's, else moves the old run's files aside (:func:`move_run_aside`) and starts afresh, saying
what changed (:func:`fingerprint_changes`). :class:`SignalFlag` turns SIGTERM/SIGUSR1 (Slurm's
time limit and preemption) into a flag the epoch loop checks, so it can checkpoint and stop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_path
from ..model.unet import UNetConfig
from ..schema import speed_only_keys
from .augment import AugmentConfig

__all__ = ["TrainState", "SignalFlag", "save_checkpoint", "resume_or_start", "move_run_aside", "run_fingerprint",
           "fingerprint_changes", "FINGERPRINT_EXCLUDED", "RUN_FILES"]

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    iteration: int = 0  # next iteration within the epoch
    step: int = 0  # total optimizer steps done
    epoch_loss_sum: float = 0.0
    epoch_seconds: float = 0.0
    epoch_wait_seconds: float = 0.0  # of epoch_seconds, the time the step waited for its batch
    best_score: float | None = None  # best smoothed score so far (None before the first epoch)
    best_epoch: int = -1
    smoothed: float | None = None
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0  # time spent training and validating, over every resumed part of the run
    last_val_seconds: float = 0.0  # the last validation's time (kept free at the end of a time budget)
    last_lr: float = 0.0  # learning rate of the last step
    budget_spent: bool = False  # training.max_minutes ended the run

# TrainConfig keys left out of the checkpoint's fingerprint: the schema's speed-only keys (how fast,
# where or how visibly a run goes, not what it computes: threads, progress, prefetch,
# checkpoint_minutes, device, compile), so a checkpoint stays valid when only they change (the rule
# sets ``threads`` from its thread count, for one); the testing aid that simulates a kill; and the
# loss name, fingerprinted in the loss part with the loss options.
FINGERPRINT_EXCLUDED = speed_only_keys("training") | {"stop_after_iterations", "loss"}


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()

def run_fingerprint(*, model: UNetConfig, loss: Mapping, augment: AugmentConfig, training: Any,
                     plan: Mapping, train_ids: Sequence[str], val_ids: Sequence[str]) -> dict[str, dict]:
    """What shapes a training run, part by part: ``{part: {"hash": SHA-256 hex, "value": JSON value}}``.

    ``training`` is the run's :class:`unet_pipeline.train.settings.TrainConfig`.

    Parts: ``model``, ``loss`` (name and options), ``augment``, ``training`` (without the keys of
    ``FINGERPRINT_EXCLUDED``), ``plan``, ``training cases`` (in the sampler's order, which
    decides the batches) and ``validation cases`` (sorted). The checkpoint stores it; a rerun
    resumes only when every part's hash matches. The values let a mismatch be named key by key.
    """
    parts = {
        "model": model.to_dict(),
        "loss": {"name": training.loss, **dict(loss)},
        "augment": augment.to_dict(),
        "training": {k: v for k, v in training.to_dict().items() if k not in FINGERPRINT_EXCLUDED},
        "plan": dict(plan),
        "training cases": list(train_ids),
        "validation cases": sorted(val_ids),
    }
    parts = json.loads(json.dumps(parts, default=str))  # as stored and read back: tuples become lists
    return {name: {"hash": _sha256(value), "value": value} for name, value in parts.items()}

def fingerprint_changes(old: Mapping | None, new: Mapping) -> list[str]:
    """Why a checkpoint fingerprinted ``old`` cannot continue the run ``new`` ([] when it can).

    ``old`` is None for a checkpoint without a fingerprint (written by an older version).
    """
    if old is None:
        return ["it has no fingerprint (written by an older version of unet_pipeline)"]
    changes = []
    for name, part in new.items():
        before = old.get(name)
        if not isinstance(before, Mapping) or "hash" not in before:
            changes.append(f"{name} not recorded in the checkpoint")
        elif before["hash"] != part["hash"]:
            changes.extend(_describe_change(name, before.get("value"), part["value"]))
    return changes

def _describe_change(name: str, old: Any, new: Any) -> list[str]:
    """Readable differences of one fingerprint part, e.g. ``training.lr changed (0.003 -> 0.01)``."""
    def short(obj: Any) -> str:
        text = json.dumps(obj, sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."

    def ids(items: list) -> str:
        return ", ".join(map(str, items[:5])) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")

    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in old.keys() | new.keys()
                      if k not in old or k not in new or _sha256(old[k]) != _sha256(new[k]))
        return [f"{name}.{k} changed ({short(old[k]) if k in old else 'unset'} -> "
                f"{short(new[k]) if k in new else 'unset'})" for k in keys] or [f"{name} changed"]
    if isinstance(old, list) and isinstance(new, list):
        old_set, new_set = set(old), set(new)
        added = [i for i in new if i not in old_set]
        removed = [i for i in old if i not in new_set]
        detail = "; ".join(f"{what}: {ids(items)}" for what, items in (("added", added), ("removed", removed))
                           if items)
        return [f"{name} changed ({detail or 'same cases, another order'})"]
    return [f"{name} changed"]

class SignalFlag:
    """Turns SIGTERM/SIGUSR1 into a flag checked between iterations (restores handlers on exit)."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self) -> SignalFlag:
        if hasattr(signal, "pthread_kill"):
            try:
                for s in self.SIGNALS:
                    self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                self._old.clear()
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.received).name
        except ValueError:
            return str(self.received)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

def save_checkpoint(path: Path, model, optimizer, scaler, state: TrainState, np_rng_state: Mapping,
                     aug_gen: torch.Generator, fingerprint: Mapping) -> None:
    """``np_rng_state``: the sampler generator's state after the last batch *used* (not prefetched);
    ``fingerprint``: the run's :func:`run_fingerprint`."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "state": json.dumps(dataclasses.asdict(state)),
        "numpy_rng": json.dumps(np_rng_state),
        "torch_rng": torch.get_rng_state(),
        "aug_rng": aug_gen.get_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "fingerprint": json.dumps(fingerprint),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)

# The files of one training run in its output folder (moved aside together when it is stale).
RUN_FILES = ("checkpoint.pt", "best.safetensors", "train_log.csv", "model.safetensors", "model.json", "curves.png")

def move_run_aside(out_dir: Path, now: datetime | None = None) -> list[Path]:
    """Rename the run files present in ``out_dir`` to ``<stem>.stale-<UTC time><ext>``; returns the new paths.

    All get one tag, e.g. ``checkpoint.stale-20261202T063000Z.pt`` and
    ``train_log.stale-20261202T063000Z.csv``; when a file with that tag exists already, ``-2``,
    ``-3``, ... is appended to it, so nothing is overwritten. ``now`` (UTC) defaults to the time.
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    present = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()]
    for n in itertools.count(1):
        tag = f"stale-{stamp}" if n == 1 else f"stale-{stamp}-{n}"
        if not any((out_dir / name).with_name(f"{Path(name).stem}.{tag}{Path(name).suffix}").exists()
                   for name in RUN_FILES):
            break
    moved = [p.with_name(f"{p.stem}.{tag}{p.suffix}") for p in present]
    for src, dst in zip(present, moved):
        os.replace(src, dst)
    return moved

def resume_or_start(ckpt: Path, fingerprint: Mapping, model, optimizer, scaler, np_rng: np.random.Generator,
                     aug_gen: torch.Generator) -> TrainState:
    """The state training starts from.

    Without ``ckpt``: a fresh :class:`TrainState`. With a checkpoint of this run (every part of
    ``fingerprint`` matches): weights, optimizer, scaler and RNG states are restored from it and
    its state returned (a finished run's too; training then only writes the outputs again).
    Otherwise the old run's files are moved aside (:func:`move_run_aside`), a WARNING says what
    differs, and a fresh state is returned (``model`` etc. are left as they are: freshly made).
    """
    if not ckpt.exists():
        return TrainState()
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    old = json.loads(payload["fingerprint"]) if "fingerprint" in payload else None
    changes = fingerprint_changes(old, fingerprint)
    if not changes:
        state = _restore_checkpoint(payload, model, optimizer, scaler, np_rng, aug_gen)
        log.info("resuming from %s: epoch %d, iteration %d", ckpt, state.epoch, state.iteration)
        return state
    moved = move_run_aside(ckpt.parent)
    log.warning("%s is not from this run: %s. Moved the old run's files aside (%s); training starts afresh",
                ckpt, "; ".join(changes), ", ".join(p.name for p in moved))
    return TrainState()

def _restore_checkpoint(payload: Mapping, model, optimizer, scaler, np_rng: np.random.Generator,
                        aug_gen: torch.Generator) -> TrainState:
    """Load a checkpoint's ``payload`` (see :func:`save_checkpoint`) into the objects; returns its state."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    np_rng.bit_generator.state = json.loads(payload["numpy_rng"])
    torch.set_rng_state(payload["torch_rng"])
    aug_gen.set_state(payload["aug_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return TrainState(**json.loads(payload["state"]))
