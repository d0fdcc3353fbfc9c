"""Training: one call from the plan and the prepared cases to the model folder.

:func:`train` puts the parts together: the run (:mod:`unet_pipeline.train.run`), checkpoints, the
run's fingerprint and resuming (:mod:`unet_pipeline.train.checkpoint`), the epochs
(:mod:`unet_pipeline.train.epochs`) and the model folder (:mod:`unet_pipeline.train.export`).

Nothing is lost: a checkpoint (weights, optimizer, scaler, every RNG state, epoch and
iteration) is written atomically at the end of every epoch, every ``checkpoint_minutes``, and
when SIGTERM or SIGUSR1 arrives (what SLURM sends before a time limit or preemption). Calling
:func:`train` again with the same output folder resumes from that checkpoint; with
``deterministic: true`` on the CPU the resumed run ends with exactly the weights of an
uninterrupted run. After a signal, :class:`TrainingInterrupted` is raised (exit status 1 of a
rule script), so the job counts as unfinished.

A checkpoint only continues the run it was written for: it carries a fingerprint of the settings
that shape the run (config sections model, loss, augment and training, the plan, the training
and validation case ids; see :func:`unet_pipeline.train.checkpoint.run_fingerprint`). When a rerun's fingerprint differs, or the
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

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..model.unet import UNetConfig
from ..plan.plan import Plan
from .augment import AugmentConfig
from .checkpoint import SignalFlag, resume_or_start
from .epochs import TrainingInterrupted, run_epochs, select_best_epoch
from .export import export_model
from .run import build_run
from .sampler import BatchStream
from .settings import TrainConfig

__all__ = ["TrainConfig", "train", "TrainingInterrupted", "select_best_epoch"]

log = logging.getLogger(__name__)


def train(train_pairs: Sequence[tuple[str | Path, str | Path]], val_pairs: Sequence[tuple[str | Path, str | Path]],
          plan: Plan | Mapping, out_dir: str | Path, *, model_config: Mapping | UNetConfig, train_config: TrainConfig,
          augment_config: AugmentConfig, loss_options: Mapping | None = None) -> dict:
    """Train a U-Net; resume from ``out_dir/checkpoint.pt`` when it was written for the same run.

    A checkpoint of another run (other settings, plan or cases; see :func:`run_fingerprint`) is
    moved aside with the old run's files, and training starts afresh (:func:`resume_or_start`).
    With ``training.max_minutes`` the run ends, with a finished model, when that much time (the
    checkpointed total over every resumed part) is spent; the learning-rate schedule follows the
    budget (:func:`unet_pipeline.train.epochs.run_epochs`).

    Parameters
    ----------
    train_pairs, val_pairs
        ``(preprocessed_dir, slice_dir)`` per case; validation may be empty.
    plan
        The plan (:class:`~unet_pipeline.plan.plan.Plan`, or ``plan.json``'s content).
    out_dir
        Output folder (model files, log, curves, checkpoint).

    Returns
    -------
    dict
        The ``model.json`` content.
    """
    plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    run = build_run(train_pairs, val_pairs, plan, Path(out_dir), model_config=model_config, train_config=train_config,
                    augment_config=augment_config, loss_options=loss_options)
    cfg = run.cfg
    state = resume_or_start(run.ckpt, run.fingerprint, run.model, run.optimizer, run.scaler, run.np_rng, run.aug_gen)
    # The sampler's generator is only used by the stream from here on; the checkpoint takes the
    # generator state after the last batch used (batches drawn ahead are drawn again on resume).
    batches = BatchStream(run.sampler, cfg.batch_size, count=max(run.total_steps - state.step, 0), prefetch=cfg.prefetch,
                          pin_memory=run.device.type == "cuda")
    run.model.train()
    with SignalFlag() as signals, batches:
        run_epochs(run, state, batches, signals)
    return export_model(run, state)
