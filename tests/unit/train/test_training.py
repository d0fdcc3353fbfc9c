"""Training: outputs, learning an easy task, kill-and-resume determinism, stale checkpoints, validation Dice,
model loading, config checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import prepare_cases
from unet_pipeline import stages
from unet_pipeline.train.loop import TrainConfig, TrainingInterrupted
from unet_pipeline.model.folder import load_model

LABELS = {1: "organ_a", 2: "organ_b"}
MODEL = {"base_channels": 4, "depth": 2}
NO_AUG = {"elastic_p": 0.0, "rotate_p": 0.0, "scale_p": 0.0, "mirror_p": 0.0, "gamma_p": 0.0, "noise_p": 0.0,
          "contrast_p": 0.0, "brightness_p": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """The tiny runs use one torch thread (far faster on busy shared cores); other modules keep theirs."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Three tiny cases run through import -> fingerprint -> preprocess -> slice: ``(root, plan path)``."""
    root = tmp_path_factory.mktemp("prepared")
    plan = prepare_cases(root, {c: (32, 28, 6) for c in ("a", "b", "c")}, LABELS, plan_cases=("a", "b"))
    return root, plan


def _train_args(prepared, out_dir: Path, *, val=("c",), model=None, loss="dice_ce", slices="slices", **training):
    """Keyword arguments of ``stages.train`` for a tiny deterministic CPU run (JSON-able, for subprocesses too)."""
    root, plan = prepared
    settings = {"epochs": 2, "iterations_per_epoch": 4, "batch_size": 2, "optimizer": "adamw", "lr": 0.003,
                "seed": 3, "deterministic": True, "checkpoint_minutes": 0, "threads": 1, **training}
    return {"train_ids": ["a", "b"], "val_ids": list(val), "preprocessed_root": str(root / "preprocessed"),
            "slices_root": str(root / slices), "plan_path": str(plan), "out_dir": str(out_dir),
            "model": {**MODEL, **(model or {})}, "training": settings, "augment": NO_AUG, "loss": {"name": loss}}


def _train(prepared, out_dir: Path, **kwargs):
    return stages.train(**_train_args(prepared, out_dir, **kwargs))


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """The model folder of one uninterrupted run with ``_train``'s defaults (prefetch off)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _train(prepared, out, prefetch=False)
    return out


def _assert_same_run(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with open(a_dir / "train_log.csv", encoding="utf-8") as fh1, open(b_dir / "train_log.csv", encoding="utf-8") as fh2:
        la, lb = list(csv.DictReader(fh1)), list(csv.DictReader(fh2))
    for col in ("train_loss", "lr", "val_dice_mean"):
        assert [r[col] for r in la] == [r[col] for r in lb], col


def test_training_writes_the_model_folder(prepared, tmp_path):
    out = tmp_path / "model"
    _train(prepared, out)
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["architecture"]["base_channels"] == 4 and meta["architecture"]["num_classes"] == 3
    assert {str(k): v for k, v in meta["labels"].items()} == {"1": "organ_a", "2": "organ_b"}
    assert meta["plan"]["target_spacing_mm"] == [1.5, 1.5]
    assert meta["mirroring"] == {"axes": [], "lr_class_pairs": []}  # mirror_p 0: mirror_tta adds no flips
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for col in ("train_loss", "lr", "val_dice_mean", "val_dice_organ_a", "seconds", "slices_per_s", "data_wait_share"):
        assert col in rows[0]
    assert all(0.0 <= float(r["data_wait_share"]) <= 1.0 for r in rows)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_loss_goes_down_on_an_easy_task(prepared, tmp_path):
    out = tmp_path / "model"
    _train(prepared, out, epochs=6, iterations_per_epoch=6, batch_size=4, lr=0.01)
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("stop_after", [5, 4])  # in the middle of epoch 2; right after the last step of epoch 1
def test_killed_and_resumed_run_equals_an_uninterrupted_one(prepared, uninterrupted, tmp_path, stop_after):
    """Deterministic mode on CPU: a SIGTERM mid-epoch, then a rerun, gives identical weights.

    The interrupted run prefetches batches (the default), the uninterrupted one does not.
    """
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        _train(prepared, cut, stop_after_iterations=stop_after, prefetch=True)
    assert (cut / "checkpoint.pt").exists() and not (cut / "model.safetensors").exists()
    assert _checkpoint_state(cut)["step"] == stop_after
    _train(prepared, cut)  # the rerun resumes from the checkpoint by itself
    _assert_same_run(uninterrupted, cut)


def test_load_model_gives_the_trained_network(prepared, tmp_path):
    out = tmp_path / "model"
    _train(prepared, out, epochs=1)
    model, meta = load_model(out)
    assert not model.training and meta["architecture"]["depth"] == 2
    x = torch.randn(1, 1, 32, 32)
    again, _ = load_model(out)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (out / "model.safetensors").unlink()
        load_model(out)


@pytest.mark.parametrize("bad,match", [({"epochs": 0}, "training.epochs"), ({"optimizer": "rmsprop"}, "optimizer"),
                                       ({"lr": 0}, "training.lr"), ({"epoch": 3}, "unknown key")])
def test_train_config_errors_name_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(bad)


def test_left_right_pairs_are_label_values_mapped_to_class_indices():
    from unet_pipeline.train.augment import AugmentConfig
    from unet_pipeline.errors import ConfigError
    from unet_pipeline.train.run import _pairs_as_class_indices

    cfg = AugmentConfig(mirror_p=0.5, lr_label_pairs=[[9, 3]])
    assert _pairs_as_class_indices(cfg, [1, 3, 9]).lr_label_pairs == ((3, 2),)
    assert cfg.lr_label_pairs == ((9, 3),)  # the user's config is left as it was
    with pytest.raises(ConfigError, match=r"lr_label_pairs: \[9, 3\].*classes: \[1, 3\]"):
        _pairs_as_class_indices(cfg, [1, 3])


def _checkpoint_state(out_dir: Path) -> dict:
    payload = torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return json.loads(payload["state"])


# A rule-script-like training process; it sleeps before each step's augmentation (main thread
# only: the batches and every random stream stay as they are) so a signal finds it mid-run.
_SIGNAL_SCRIPT = r"""
import json, sys, time
from unet_pipeline import stages
from unet_pipeline.train import epochs as training
from unet_pipeline.runlog import rule_logging

args = json.loads(sys.argv[1])
_augment = training.augment_batch

def slow_augment(*a, **k):
    time.sleep(args["sleep"])
    return _augment(*a, **k)

training.augment_batch = slow_augment
with rule_logging(args["log"]):
    stages.train(**args["train"])
"""


@pytest.mark.slow  # trains in a subprocess, twice
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_real_signal_checkpoints_exits_and_resumes_to_the_same_weights(prepared, uninterrupted, tmp_path, signame):
    """A training process gets a real signal after its first epoch: it writes the checkpoint, exits
    promptly with status 1 (``TrainingInterrupted``), and a rerun ends with the uninterrupted weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} on this platform")
    cut, log_path = tmp_path / "cut", tmp_path / "train.log"
    args = {"sleep": 0.3, "log": str(log_path), "train": _train_args(prepared, cut)}  # prefetch on (default)
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_SCRIPT, json.dumps(args)], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (cut / "train_log.csv").exists():  # epoch 1 is done; 4 throttled steps remain
            assert proc.poll() is None, f"training exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no epoch finished within 60 s"
            time.sleep(0.01)
        sent = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr[-2000:]
    assert took < 10, f"{took:.1f} s from the signal to the exit"
    assert "TrainingInterrupted" in stderr
    assert f"signal {signame} received: checkpoint written" in log_path.read_text(encoding="utf-8")
    state = _checkpoint_state(cut)
    assert state["epoch"] == 1 and 1 <= state["iteration"] < 4, state  # the position inside epoch 2
    assert state["step"] == 4 * state["epoch"] + state["iteration"]
    assert len(state["history"]) == 1 and not (cut / "model.safetensors").exists()
    _train(prepared, cut)  # the rerun (in this process) resumes from the checkpoint
    _assert_same_run(uninterrupted, cut)


def test_timed_checkpoint_is_written_mid_epoch(prepared, tmp_path, monkeypatch):
    from unet_pipeline.train import epochs as training

    positions = []
    real = training.save_checkpoint

    def spy(path, model, optimizer, scaler, state, *rest):
        positions.append((state.epoch, state.iteration))
        return real(path, model, optimizer, scaler, state, *rest)

    monkeypatch.setattr(training, "save_checkpoint", spy)  # as the epoch loop calls it
    _train(prepared, tmp_path / "off", epochs=1, iterations_per_epoch=3, checkpoint_minutes=0)
    assert positions == [(1, 0)]  # only the end of the epoch
    positions.clear()
    _train(prepared, tmp_path / "often", epochs=1, iterations_per_epoch=3, checkpoint_minutes=1e-7)
    assert positions == [(0, 1), (0, 2), (0, 3), (1, 0)]  # after every step (6 us), and the epoch's end
    positions.clear()
    _train(prepared, tmp_path / "rare", epochs=1, iterations_per_epoch=3, checkpoint_minutes=60)
    assert positions == [(1, 0)]


def test_defaults_are_adamw_and_sgd_is_nesterov_with_momentum_0_99():
    """The default optimiser is AdamW at 0.003 (measured best on real CT, README "Real CT"); the
    schema's other choice is nnU-Net's Nesterov SGD with momentum 0.99."""
    from unet_pipeline.train.run import _make_optimizer

    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.poly_power, cfg.grad_clip, cfg.prefetch) == \
        ("adamw", 0.99, 0.003, 0.9, 12.0, True)
    assert TrainConfig.from_dict({}) == cfg
    adamw = _make_optimizer(cfg, torch.nn.Linear(2, 1).parameters())
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["lr"] == 0.003
    opt = _make_optimizer(TrainConfig(optimizer="sgd", lr=0.01), torch.nn.Linear(2, 1).parameters())
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.99 and group["weight_decay"] == cfg.weight_decay


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_polynomial_learning_rate_decay(power):
    from unet_pipeline.train.epochs import _lr_at

    cfg = TrainConfig(lr=0.01, poly_power=power)
    total = 200
    for step in (0, 1, 50, 100, 199):
        assert _lr_at(cfg, step, total) == pytest.approx(0.01 * (1 - step / total) ** power, rel=1e-12)
    assert _lr_at(cfg, 100, total) == pytest.approx(0.01 * 0.5 ** power)
    assert _lr_at(cfg, 250, total) == _lr_at(cfg, 199, total) > 0  # never 0 or negative past the end


def test_training_log_follows_the_schedule(prepared, tmp_path):
    """SGD (the default optimizer) end to end: the logged rate is that of each epoch's last step."""
    out = tmp_path / "model"
    _train(prepared, out, optimizer="sgd", lr=0.01, epochs=2, iterations_per_epoch=2)
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01 * (1 - 1 / 4) ** 0.9, 0.01 * (1 - 3 / 4) ** 0.9])
    assert json.loads((out / "model.json").read_text(encoding="utf-8"))["training"]["optimizer"] == "sgd"


def test_gradient_clipping_clips_a_huge_gradient():
    from unet_pipeline.train.epochs import _backward_and_step

    def step(grad_clip):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        loss = 1e6 * model(torch.ones(3, 4)).sum()
        norm = _backward_and_step(loss, model, opt, None, grad_clip)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return norm, grads.norm().item(), (after - before).norm().item()

    norm, grad_norm, moved = step(12.0)
    assert norm == pytest.approx(3e6 * 5 ** 0.5, rel=1e-5)  # d/dw = 3e6 per weight (4) and bias (1)
    assert grad_norm == pytest.approx(12.0, rel=1e-4) and moved == pytest.approx(12.0, rel=1e-4)
    norm, grad_norm, moved = step(0.0)  # 0 = off
    assert norm != norm and grad_norm == pytest.approx(3e6 * 5 ** 0.5, rel=1e-5)


def test_best_epoch_by_smoothed_score_and_early_stopping():
    from unet_pipeline.train.loop import select_best_epoch

    # smoothing 0.5: 0.1, 0.5, 0.3, 0.55, 0.675, 0.7375: the spike of epoch 2 loses to the plateau.
    r = select_best_epoch([0.1, 0.9, 0.1, 0.8, 0.8, 0.8], smoothing=0.5)
    assert r["smoothed"] == pytest.approx([0.1, 0.5, 0.3, 0.55, 0.675, 0.7375])
    assert (r["best_epoch"], r["epochs_run"]) == (6, 6) and r["best_smoothed"] == pytest.approx(0.7375)
    raw = select_best_epoch([0.1, 0.9, 0.1, 0.8, 0.8, 0.8], smoothing=0.0)
    assert (raw["best_epoch"], raw["best_smoothed"]) == (2, 0.9)
    # 0.2, 0.4, 0.45, 0.675 (best, epoch 4), then 0.3875, 0.24375, 0.171875: no improvement.
    scores = [0.2, 0.6, 0.5, 0.9, 0.1, 0.1, 0.1, 0.1]
    assert select_best_epoch(scores, patience=0)["epochs_run"] == 8
    for patience, stop in ((1, 5), (2, 6), (3, 7), (4, 8)):
        r = select_best_epoch(scores, patience=patience)
        assert (r["best_epoch"], r["epochs_run"]) == (4, stop), patience
        assert r["best_smoothed"] == pytest.approx(0.675)
    tie = select_best_epoch([0.5, 0.5, 0.5], smoothing=0.5, patience=2)
    assert (tie["best_epoch"], tie["epochs_run"]) == (1, 3)  # a tie is no improvement
    assert select_best_epoch([-3.0, -2.5])["best_epoch"] == 2  # scores below -1 (minus a loss) count too


def test_training_keeps_the_best_epoch_and_stops_early(prepared, tmp_path, monkeypatch):
    """Scripted validation scores (the hand-computed sequence above): model.safetensors holds the
    weights of epoch 4, and patience 2 stops training after epoch 6."""
    from unet_pipeline.train import epochs as training

    scores = iter([0.2, 0.6, 0.5, 0.9, 0.1, 0.1, 0.1, 0.1])
    snapshots = []

    def scripted(model, cases, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        s = next(scores)
        return {"per_class": [s, s], "mean": s}

    monkeypatch.setattr(training, "_validate", scripted)
    out = tmp_path / "model"
    meta = _train(prepared, out, epochs=8, iterations_per_epoch=1, early_stopping_patience=2)
    assert (meta["best_epoch"], meta["epochs_run"], len(snapshots)) == (4, 6, 6)
    assert meta["best_smoothed_val_dice"] == pytest.approx(0.675)
    best = load_file(str(out / "model.safetensors"))
    for name, t in best.items():
        assert torch.equal(t, snapshots[3][name]), name
    assert not torch.equal(best["head.weight"], snapshots[5]["head.weight"])  # not simply the last weights
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    # A rerun after early stopping does not train on: the checkpoint says it stopped. Like Snakemake,
    # delete the rule's outputs first: the rerun writes them again, with the best epoch's weights.
    for name in ("model.safetensors", "model.json", "train_log.csv", "curves.png"):
        (out / name).unlink()
    meta = _train(prepared, out, epochs=8, iterations_per_epoch=1, early_stopping_patience=2, threads=2)
    assert meta["epochs_run"] == 6
    for name, t in load_file(str(out / "model.safetensors")).items():
        assert torch.equal(t, snapshots[3][name]), name
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    assert not list(out.glob("*.stale-*"))


def test_without_validation_the_best_epoch_is_by_training_loss(prepared, tmp_path):
    """No validation cases: minus the training loss picks the epoch, also when the loss is above 1."""
    meta = _train(prepared, tmp_path / "model", val=(), loss="ce", epochs=2, iterations_per_epoch=2)
    assert meta["best_epoch"] in (1, 2) and meta["val_cases"] == [] and meta["best_smoothed_val_dice"] is None
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def weight_slices(prepared):
    """The fixture's cases sliced again with the paper's weight maps (``slices_w/``)."""
    root, plan = prepared
    for cid in ("a", "b", "c"):
        stages.slice_case(root / "preprocessed" / cid, plan, root / "slices_w" / cid, weight_map=True)
    return "slices_w"


def _losses(out: Path) -> list[float]:
    import math

    with open(out / "train_log.csv", encoding="utf-8") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert losses and all(math.isfinite(v) for v in losses), losses
    return losses


def test_weighted_ce_trains_with_the_weight_maps(prepared, weight_slices, tmp_path, monkeypatch):
    from unet_pipeline.train import run as training

    seen = []
    real = training.make_loss

    def spy(name, **kwargs):
        fn = real(name, **kwargs)

        def loss(logits, target, weight_map=None, **kw):
            seen.append((tuple(target.shape), None if weight_map is None else weight_map.clone()))
            return fn(logits, target, weight_map=weight_map, **kw)
        return loss

    monkeypatch.setattr(training, "make_loss", spy)
    out = tmp_path / "model"
    meta = _train(prepared, out, loss="weighted_ce", slices=weight_slices, epochs=1, iterations_per_epoch=3)
    _losses(out)
    assert meta["loss"]["name"] == "weighted_ce" and (out / "model.safetensors").exists()
    assert len(seen) == 3
    for shape, w in seen:
        assert w is not None and tuple(w.shape) == shape
    weights = torch.cat([w.flatten() for _, w in seen])
    assert weights.min() > 0 and weights.max() > 1.5 and weights.std() > 0  # the border and class terms
    with pytest.raises(ValueError, match="no weight map stored"):  # the plain slices have none
        _train(prepared, tmp_path / "no_maps", loss="weighted_ce", epochs=1, iterations_per_epoch=1)


def test_unpadded_paper_unet_trains(prepared, tmp_path):
    out = tmp_path / "model"
    meta = _train(prepared, out, model={"padded": False, "norm": "none"}, epochs=1, iterations_per_epoch=2)
    _losses(out)
    assert meta["architecture"]["padded"] is False
    model, meta = load_model(out)
    tile = meta["plan"]["patch_size"]
    margin = model.margin()
    with torch.no_grad():
        y = model(torch.zeros(1, 1, tile[0] + 2 * margin, tile[1] + 2 * margin))
    assert tuple(y.shape) == (1, 3, *tile)  # output tile = the plan's (inference) tile


def test_2_5d_input_trains(prepared, tmp_path):
    out = tmp_path / "model"
    meta = _train(prepared, out, model={"in_channels": 3}, epochs=1, iterations_per_epoch=2)
    _losses(out)
    assert meta["architecture"]["in_channels"] == 3
    model, _ = load_model(out)
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 32, 32)).shape) == (1, 3, 32, 32)


# --- Stale checkpoints: a rerun resumes only the run its checkpoint was written for ---------------


def _interrupted(prepared, out: Path, **kwargs) -> None:
    """A run of ``_train`` killed after 5 steps (epoch 1 logged, in the middle of epoch 2)."""
    with pytest.raises(TrainingInterrupted):
        _train(prepared, out, stop_after_iterations=5, **kwargs)
    assert _checkpoint_state(out)["step"] == 5 and (out / "train_log.csv").exists()


def _stale(out: Path, stem: str) -> list[Path]:
    return sorted(out.glob(f"{stem}.stale-*"))


def _assert_fresh_run_replaced_the_old(out: Path, fresh: Path, caplog, *changes: str) -> None:
    """``out`` (rerun after a kill, with other settings) ends as ``fresh`` (a run from scratch with the
    new settings): the old checkpoint and log were moved aside and the WARNING names the changes."""
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "not from this run" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    for change in changes:
        assert change in warnings[0], warnings[0]
    [old_ckpt], [old_log] = _stale(out, "checkpoint"), _stale(out, "train_log")
    assert json.loads(torch.load(old_ckpt, weights_only=True)["state"])["step"] == 5  # the old run, kept
    with open(old_log, encoding="utf-8") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1]
    assert _checkpoint_state(out)["step"] == 8
    _assert_same_run(fresh, out)  # weights and every log row: nothing of the old run is left
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]


def test_changed_learning_rate_moves_the_checkpoint_aside_and_starts_afresh(prepared, tmp_path, caplog):
    cut, fresh = tmp_path / "cut", tmp_path / "fresh"
    _interrupted(prepared, cut)
    _train(prepared, fresh, lr=0.005)
    with caplog.at_level("INFO", logger="unet_pipeline"):
        meta = _train(prepared, cut, lr=0.005)
    _assert_fresh_run_replaced_the_old(cut, fresh, caplog, "training.lr changed (0.003 -> 0.005)")
    assert "resuming" not in caplog.text and meta["training"]["lr"] == 0.005 and meta["epochs_run"] == 2


def test_changed_split_moves_the_checkpoint_aside_and_starts_afresh(prepared, tmp_path, caplog):
    """Case b moves from training to validation: the old run must not go on with it."""
    cut, fresh = tmp_path / "cut", tmp_path / "fresh"
    _interrupted(prepared, cut)
    split = {"train_ids": ["a", "c"], "val_ids": ["b"]}
    stages.train(**{**_train_args(prepared, fresh), **split})
    with caplog.at_level("INFO", logger="unet_pipeline"):
        meta = stages.train(**{**_train_args(prepared, cut), **split})
    _assert_fresh_run_replaced_the_old(cut, fresh, caplog, "training cases changed (added: c; removed: b)",
                                       "validation cases changed (added: b; removed: c)")
    assert (meta["train_cases"], meta["val_cases"]) == (["a", "c"], ["b"])


def test_checkpoint_without_fingerprint_is_moved_aside(prepared, uninterrupted, tmp_path, caplog):
    cut = tmp_path / "cut"
    _interrupted(prepared, cut)
    payload = torch.load(cut / "checkpoint.pt", weights_only=True)
    del payload["fingerprint"]  # as written by older versions
    torch.save(payload, cut / "checkpoint.pt")
    with caplog.at_level("INFO", logger="unet_pipeline"):
        _train(prepared, cut)
    _assert_fresh_run_replaced_the_old(cut, uninterrupted, caplog, "no fingerprint")


def test_same_settings_resume_across_threads_and_stop_after(prepared, uninterrupted, tmp_path, caplog):
    """Keys outside the fingerprint (threads, stop_after_iterations, prefetch, ...) may change: it resumes."""
    cut = tmp_path / "cut"
    _interrupted(prepared, cut)
    with caplog.at_level("INFO", logger="unet_pipeline"), pytest.raises(TrainingInterrupted):
        _train(prepared, cut, threads=2, stop_after_iterations=7, prefetch=False, checkpoint_minutes=30)
    assert "resuming from" in caplog.text and "not from this run" not in caplog.text
    state = _checkpoint_state(cut)
    assert state["step"] == 7 and len(state["history"]) == 1 and not list(cut.glob("*.stale-*"))
    meta = _train(prepared, cut)
    assert meta["epochs_run"] == 2 and not list(cut.glob("*.stale-*"))
    with open(cut / "train_log.csv", encoding="utf-8") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]


def test_finished_run_rerun_with_other_settings_trains_again(prepared, tmp_path, caplog):
    """A finished model folder (checkpoint at the last epoch) rerun with a new setting: the old model
    is moved aside and a new one trained, also when Snakemake deleted the old outputs first."""
    out, fresh = tmp_path / "model", tmp_path / "fresh"
    _train(prepared, out, epochs=1)
    old_weights = load_file(str(out / "model.safetensors"))
    _train(prepared, fresh, epochs=1, model={"base_channels": 6})
    for name in ("model.safetensors", "model.json", "train_log.csv", "curves.png"):  # what Snakemake deletes
        (out / name).unlink()
    with caplog.at_level("INFO", logger="unet_pipeline"):
        meta = _train(prepared, out, epochs=1, model={"base_channels": 6})
    assert "model.base_channels changed (4 -> 6)" in caplog.text
    assert meta["architecture"]["base_channels"] == 6 and meta["epochs_run"] == 1
    assert [p.name.split(".")[0] for p in sorted(out.glob("*.stale-*"))] == ["best", "checkpoint"]
    _assert_same_run(fresh, out)
    [old_best] = _stale(out, "best")
    assert load_file(str(old_best)).keys() == old_weights.keys()  # the old run's best weights, kept aside


def test_finished_model_folder_with_all_outputs_is_moved_aside_whole(prepared, tmp_path):
    out = tmp_path / "model"
    _train(prepared, out, epochs=1)
    _train(prepared, out, epochs=1, seed=4)
    stems = sorted(p.name.split(".stale-")[0] for p in out.glob("*.stale-*"))
    assert stems == ["best", "checkpoint", "curves", "model", "model", "train_log"]
    assert json.loads((out / "model.json").read_text(encoding="utf-8"))["training"]["seed"] == 4


def test_stale_files_get_one_tag_and_are_never_overwritten(tmp_path):
    from datetime import datetime, timezone

    from unet_pipeline.train.checkpoint import move_run_aside as _move_run_aside

    when = datetime(2026, 12, 2, 6, 30, 0, tzinfo=timezone.utc)
    for run in ("first", "second", "third"):
        (tmp_path / "checkpoint.pt").write_text(run)
        (tmp_path / "train_log.csv").write_text(run)
        _move_run_aside(tmp_path, now=when)
    (tmp_path / "train_log.csv").write_text("fourth")  # only a log: the tag still moves on
    assert [p.name for p in _move_run_aside(tmp_path, now=when)] == ["train_log.stale-20261202T063000Z-4.csv"]
    got = {p.name: p.read_text() for p in tmp_path.iterdir()}
    tag = "stale-20261202T063000Z"
    assert got == {f"checkpoint.{tag}.pt": "first", f"train_log.{tag}.csv": "first",
                   f"checkpoint.{tag}-2.pt": "second", f"train_log.{tag}-2.csv": "second",
                   f"checkpoint.{tag}-3.pt": "third", f"train_log.{tag}-3.csv": "third",
                   f"train_log.{tag}-4.csv": "fourth"}


def test_fingerprint_names_what_changed_and_ignores_speed_settings():
    from unet_pipeline.train.augment import AugmentConfig
    from unet_pipeline.model.unet import UNetConfig
    from unet_pipeline.train.checkpoint import FINGERPRINT_EXCLUDED as _FINGERPRINT_EXCLUDED
    from unet_pipeline.train.checkpoint import fingerprint_changes as _fingerprint_changes
    from unet_pipeline.train.checkpoint import run_fingerprint as _run_fingerprint

    def fp(training=None, plan=None, train=("a", "b"), val=("c",), loss=None, augment=None):
        return _run_fingerprint(model=UNetConfig(num_classes=3), loss=loss or {},
                                augment=AugmentConfig(**(augment or {})), training=TrainConfig(**(training or {})),
                                plan=plan or {"patch_size": [32, 32]}, train_ids=list(train), val_ids=list(val))

    base = fp()
    assert set(base) == {"model", "loss", "augment", "training", "plan", "training cases", "validation cases"}
    speed = {"threads": 4, "progress": True, "prefetch": False, "checkpoint_minutes": 1.0,
             "stop_after_iterations": 9, "device": "cpu", "compile": True}
    assert set(speed) | {"loss"} == set(_FINGERPRINT_EXCLUDED)
    assert _fingerprint_changes(base, fp(training=speed)) == []
    assert _fingerprint_changes(base, fp(val=("c",))) == []
    assert _fingerprint_changes(json.loads(json.dumps(base)), base) == []  # as stored in the checkpoint
    assert _fingerprint_changes(base, fp(training={"lr": 0.02, "epochs": 40})) == [
        "training.epochs changed (100 -> 40)", "training.lr changed (0.003 -> 0.02)"]
    assert _fingerprint_changes(base, fp(training={"loss": "ce"}, loss={"smooth": 1.0})) == [
        'loss.name changed ("dice_ce" -> "ce")', "loss.smooth changed (unset -> 1.0)"]
    assert _fingerprint_changes(base, fp(augment={"rotate_p": 0.0})) == ["augment.rotate_p changed (0.2 -> 0.0)"]
    assert _fingerprint_changes(base, fp(plan={"patch_size": [48, 48]})) == [
        "plan.patch_size changed ([32, 32] -> [48, 48])"]
    assert _fingerprint_changes(base, fp(train=("b", "a"))) == ["training cases changed (same cases, another order)"]
    assert _fingerprint_changes(base, fp(val=("c", "d"))) == ["validation cases changed (added: d)"]
    assert _fingerprint_changes(None, base) == ["it has no fingerprint (written by an older version of unet_pipeline)"]
    no_plan = {k: v for k, v in base.items() if k != "plan"}
    assert _fingerprint_changes(no_plan, base) == ["plan not recorded in the checkpoint"]


# --- Validation Dice: a class absent from both the reference and the prediction is not counted ----


@pytest.mark.parametrize("inter,ref_n,pred_n,per_class,mean", [
    # 3 cases x 3 classes. Class 1: 6/8 = 0.75 and 2/4 = 0.5, absent from case 3 -> 0.625.
    # Class 2: absent from case 1; 1.0, then all missed (0) -> 0.5. Class 3: predicted in case 1 only,
    # where the reference has none (0); absent elsewhere -> 0. Mean of the three: 0.375.
    # (The old rule, absent = 1: 0.75, 0.667, 0.667.)
    ([[3, 0, 0], [1, 2, 0], [0, 0, 0]], [[4, 0, 0], [2, 2, 0], [0, 4, 0]], [[4, 0, 5], [2, 2, 0], [0, 0, 0]],
     [0.625, 0.5, 0.0], 0.375),
    # Predicting nothing earns nothing: class 1 missed in case 1 and absent from case 2 -> 0, not 0.5.
    ([[0], [0]], [[7], [0]], [[0], [0]], [0.0], 0.0),
    # A class in no reference and no prediction of any case: NaN, left out of the mean.
    ([[5, 0], [0, 0]], [[5, 0], [5, 0]], [[5, 0], [0, 0]], [0.5, None], 0.5),
    # No foreground anywhere and none predicted: nothing to score; the mean is 1 (nothing missed).
    ([[0, 0]], [[0, 0]], [[0, 0]], [None, None], 1.0),
])
def test_validation_dice_leaves_out_classes_absent_from_reference_and_prediction(inter, ref_n, pred_n, per_class,
                                                                                  mean):
    import math

    from unet_pipeline.train.epochs import _summarize_dice

    got = _summarize_dice(inter, ref_n, pred_n)
    assert [None if math.isnan(v) else pytest.approx(v) for v in got["per_class"]] == per_class
    assert got["mean"] == pytest.approx(mean)


def test_class_without_validation_cases_is_an_empty_log_cell(prepared, tmp_path, monkeypatch):
    from unet_pipeline.train import epochs as training

    monkeypatch.setattr(training, "_validate", lambda *a, **k: {"per_class": [0.5, float("nan")], "mean": 0.5})
    out = tmp_path / "model"
    meta = _train(prepared, out, epochs=2, iterations_per_epoch=1)
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cells = [(r["val_dice_mean"], r["val_dice_organ_a"], r["val_dice_organ_b"]) for r in rows]
    assert cells == [("0.5", "0.5", "")] * 2
    assert meta["best_smoothed_val_dice"] == 0.5 and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_time_budget_ends_training_with_a_finished_model_and_the_schedule_follows_it(prepared, tmp_path):
    """max_minutes far below what 5,000 epochs need: a finished model, the budget named as the
    reason, and a learning rate that decayed over the budget (not over the 5,000 epochs)."""
    out = tmp_path / "model"
    meta = _train(prepared, out, epochs=5000, max_minutes=0.02)
    assert meta["ended_by"] == "max_minutes" and 1 <= meta["epochs_run"] < 5000
    assert meta["steps_run"] < 5000 * 4 and meta["training"]["max_minutes"] == 0.02
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == meta["epochs_run"] and (out / "model.safetensors").exists()
    assert float(rows[-1]["lr"]) < 0.6 * 0.003  # a 5,000-epoch schedule would still be at ~0.99 x lr here
    load_model(out)  # loadable
    # A rerun with the same settings trains no further: the budget was spent.
    again = _train(prepared, out, epochs=5000, max_minutes=0.02)
    assert again["steps_run"] == meta["steps_run"] and again["ended_by"] == "max_minutes"


def test_planned_steps_follow_the_measured_rate():
    from types import SimpleNamespace

    from unet_pipeline.train.checkpoint import TrainState as _State
    from unet_pipeline.train.epochs import _budget_left, _planned_steps

    run = SimpleNamespace(cfg=TrainConfig(epochs=10, iterations_per_epoch=100, max_minutes=1.0), total_steps=1000)
    state = _State(step=20)
    assert _planned_steps(run, state, elapsed=6.0) == 200  # 0.3 s a step: 60 s hold 200 steps
    assert _planned_steps(run, state, elapsed=0.6) == 1000  # faster than the epochs need: the epochs' total
    assert _planned_steps(run, _State(step=0), elapsed=0.0) == 1000  # no rate measured yet
    assert _budget_left(run, state, elapsed=50.0) and not _budget_left(run, state, elapsed=59.8)
    assert not _budget_left(run, _State(step=20, last_val_seconds=5.0), elapsed=55.0)  # the validation must fit too
    no_budget = SimpleNamespace(cfg=TrainConfig(epochs=10, iterations_per_epoch=100), total_steps=1000)
    assert _planned_steps(no_budget, state, elapsed=6.0) == 1000 and _budget_left(no_budget, state, elapsed=1e9)
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig.from_dict({"max_minutes": -1})


def test_postprocessing_is_chosen_on_the_validation_cases_unless_configured(prepared, tmp_path):
    meta = _train(prepared, tmp_path / "auto")
    choice = meta["postprocess_choice"]
    assert choice["decided_on"] == "validation cases" and set(choice["table"]) == {"organ_a", "organ_b"}
    assert meta["postprocess"] == choice["config"] and meta["postprocess_source"] == "postprocess_choice"
    assert all(set(v) <= {"largest_component", "min_volume_ml", "min_volume_extent_mm"} for v in choice["config"].values())
    # Each class's minimum volume: a fraction of its smallest volume in the training and validation labels.
    from unet_pipeline.postprocess import MIN_VOLUME_FRACTION

    root, _ = prepared
    for value, name in ((1, "organ_a"), (2, "organ_b")):
        volumes, extents = [], []
        for cid in ("a", "b", "c"):
            spacing = json.loads((root / "preprocessed" / cid / "meta.json").read_text())["resampled_spacing_mm"]
            mask = np.load(root / "preprocessed" / cid / "label.npy") == value
            volumes.append(int(mask.sum()) * np.prod(spacing) / 1000)
            extents.append(int(mask.any(axis=(1, 2)).sum()) * spacing[0])  # the fixture's organs are boxes
        learned = choice["min_volume"]["classes"][name]
        assert learned["min_volume_ml"] == pytest.approx(MIN_VOLUME_FRACTION * min(volumes))
        assert learned["extent_mm"] == pytest.approx(extents[int(np.argmin(volumes))])
        assert choice["config"][name]["min_volume_ml"] == learned["min_volume_ml"]
        assert choice["config"][name]["min_volume_extent_mm"] == learned["extent_mm"]
        assert choice["table"][name]["final"] is not None
    on_disk = json.loads((tmp_path / "auto" / "model.json").read_text(encoding="utf-8"))
    assert on_disk["postprocess"] == choice["config"]
    # Without validation cases the training cases decide; a configured section wins over the choice,
    # learned minimum volumes included (recorded in postprocess_choice, not applied).
    configured = stages.train(**{**_train_args(prepared, tmp_path / "set", val=()), "postprocess": {"*": {"fill_holes": True}}})
    assert configured["postprocess_choice"]["decided_on"] == "training cases"
    assert configured["postprocess"] == {"*": {"fill_holes": True}} and configured["postprocess_source"] == "config"
