"""One training run's parts, built once: device, network, optimizer, loss, cases, sampler, fingerprint."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import select_device
from ..errors import ConfigError
from ..model.unet import UNetConfig, build_unet
from ..plan.plan import Plan
from .augment import AugmentConfig
from .checkpoint import run_fingerprint
from .losses import make_loss
from .sampler import PatchSampler, load_training_cases
from .settings import TrainConfig

__all__ = ["Run", "build_run"]

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one training run holds, built once by :func:`build_run`."""

    cfg: TrainConfig
    mcfg: UNetConfig
    plan: Plan  # patch size as trained (the unpadded U-Net's output tile)
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


def build_run(train_pairs, val_pairs, plan: Plan, out_dir: Path, *, model_config: Mapping | UNetConfig,
              train_config: TrainConfig, augment_config: AugmentConfig, loss_options: Mapping | None) -> Run:
    """Device, network, optimizer, loss, cases, sampler and fingerprint of a run
    (see :func:`unet_pipeline.train.loop.train`)."""
    if plan.patch_size is None or plan.num_classes is None:
        raise ValueError("plan: training needs patch_size and num_classes (a plan.json written by the plan stage)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if device.type == "cpu" and cfg.device not in ("auto", "cpu"):
        log.warning("no usable GPU: training on the CPU")
    _seed_everything(cfg.seed, cfg.deterministic)
    num_classes = plan.num_classes
    mcfg = model_config if isinstance(model_config, UNetConfig) else UNetConfig.from_dict(
        {**dict(model_config), "num_classes": num_classes})
    model = build_unet(mcfg).to(device)
    margin = model.margin() if not mcfg.padded else 0
    patch = plan.patch_size
    if not mcfg.padded:  # the unpadded U-Net only produces certain output sizes: take the next one up
        valid = tuple(model.valid_output_size(p) for p in patch)
        if valid != patch:
            log.info("unpadded U-Net: output tile %s -> %s px (input tile %s px with the %d px margin)",
                     list(patch), list(valid), [v + 2 * margin for v in valid], margin)
            patch = valid
            plan = plan.with_patch_size(patch)  # model.json records the tile inference uses
    loss_options = dict(loss_options or {})
    train_cases = load_training_cases(train_pairs, need_weights=cfg.loss == "weighted_ce")
    val_cases = load_training_cases(val_pairs) if val_pairs else []
    np_rng = np.random.default_rng(cfg.seed)
    sampler = PatchSampler(train_cases, (patch[0] + 2 * margin, patch[1] + 2 * margin), in_slices=mcfg.in_channels,
                           foreground_fraction=cfg.foreground_fraction, rng=np_rng, num_classes=num_classes)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    model = model.to(memory_format=torch.channels_last)  # the convolutions' fast layout on CPU and GPU alike
    label_values = plan.label_values  # class index k stands for label_values[k - 1]
    fingerprint = run_fingerprint(model=mcfg, loss=loss_options, augment=augment_config, training=cfg,
                                  plan=plan.to_dict(), train_ids=[c.case_id for c in train_cases],
                                  val_ids=[c.case_id for c in val_cases])
    return Run(cfg=cfg, mcfg=mcfg, plan=plan, out_dir=out_dir, device=device, model=model,
               step_model=torch.compile(model) if cfg.compile else model,
               optimizer=_make_optimizer(cfg, model.parameters()),
               scaler=torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None,
               use_amp=use_amp, amp_dtype=amp_dtype, loss_fn=make_loss(cfg.loss, **loss_options),
               loss_options=loss_options, augment_config=augment_config,
               net_augment=_pairs_as_class_indices(augment_config, label_values),  # model.json keeps the user's values
               margin=margin, patch=patch, train_cases=train_cases, val_cases=val_cases, label_values=label_values,
               label_names=plan.label_names, np_rng=np_rng,
               aug_gen=torch.Generator().manual_seed(cfg.seed + 1), sampler=sampler, fingerprint=fingerprint)


def _seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
