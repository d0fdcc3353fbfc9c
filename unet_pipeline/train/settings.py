"""The ``training`` section of the config as :class:`TrainConfig` (defaults from the config schema)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..schema import with_schema_defaults

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
@with_schema_defaults("training")  # defaults: the config schema's training section
class TrainConfig:
    """Training settings (the ``training`` section of the config; defaults from the config schema).

    ``iterations_per_epoch`` batches of ``batch_size`` patches make an epoch; the learning rate
    follows ``lr * (1 - step / total_steps) ** poly_power``.
    """

    epochs: int
    iterations_per_epoch: int
    batch_size: int
    optimizer: str  # "sgd" (Nesterov, momentum 0.99) | "adamw"
    lr: float
    momentum: float
    weight_decay: float
    poly_power: float
    grad_clip: float  # max. global L2 norm of the gradients; 0 = no clipping
    loss: str = "dice_ce"  # set from the loss section by stages.train
    foreground_fraction: float
    seed: int
    device: str
    amp: bool
    deterministic: bool
    checkpoint_minutes: float
    val_smoothing: float  # exponential smoothing of the validation Dice (best epoch)
    early_stopping_patience: int  # epochs without improvement; 0 = off
    compile: bool
    threads: int  # torch intra-op threads; 0 = torch's default
    progress: bool | None  # tqdm bar; None = only on a terminal
    prefetch: bool  # draw the next batches in a background thread; same batches
    max_minutes: float  # time budget of the whole run, 0 = none; the LR schedule follows it
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
