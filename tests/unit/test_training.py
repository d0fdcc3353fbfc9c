"""Training: outputs, learning an easy task, kill-and-resume determinism, model loading, config checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_ct, save_nifti
from unet_pipeline import stages
from unet_pipeline.training import TrainConfig, TrainingInterrupted, load_model

LABELS = {1: "organ_a", 2: "organ_b"}
MODEL = {"base_channels": 4, "depth": 2}
NO_AUG = {"elastic_p": 0.0, "rotate_p": 0.0, "scale_p": 0.0, "mirror_p": 0.0, "gamma_p": 0.0, "noise_p": 0.0,
          "contrast_p": 0.0, "brightness_p": 0.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Three tiny cases run through import -> fingerprint -> preprocess -> slice: ``(root, plan path)``."""
    root = tmp_path_factory.mktemp("prepared")
    for i, cid in enumerate(("a", "b", "c")):
        image, label, affine = make_ct(shape=(32, 28, 6), spacing=(1.5, 1.5, 3.0), seed=i)
        ip = save_nifti(root / "src" / f"{cid}_img.nii.gz", image, affine)
        lp = save_nifti(root / "src" / f"{cid}_lab.nii.gz", label, affine)
        imp = root / "imported" / cid
        stages.import_case(cid, ip, lp, imp, labels=LABELS)
        stages.import_label(lp, imp / "image.nii.gz", imp / "label.nii.gz", labels=LABELS)
    plan = root / "plan.json"
    stages.fingerprint([(c, root / "imported" / c) for c in ("a", "b")], plan, labels=LABELS,
                       target_spacing_mm=[1.5, 1.5], patch_size=[32, 32])
    for cid in ("a", "b", "c"):
        pre = root / "preprocessed" / cid
        stages.preprocess(cid, root / "imported" / cid / "image.nii.gz", plan, pre)
        stages.preprocess_label(root / "imported" / cid / "label.nii.gz", pre / "meta.json", pre / "label.npy")
        stages.slice_case(pre, plan, root / "slices" / cid)
    return root, plan


def _train(prepared, out_dir: Path, **training):
    root, plan = prepared
    settings = {"epochs": 2, "iterations_per_epoch": 4, "batch_size": 2, "optimizer": "adamw", "lr": 0.003,
                "seed": 3, "deterministic": True, "checkpoint_minutes": 0, **training}
    return stages.train(["a", "b"], ["c"], preprocessed_root=root / "preprocessed", slices_root=root / "slices",
                        plan_path=plan, out_dir=out_dir, model=MODEL, training=settings, augment=NO_AUG,
                        loss={"name": "dice_ce"})


def test_training_writes_the_model_folder(prepared, tmp_path):
    out = tmp_path / "model"
    _train(prepared, out)
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["architecture"]["base_channels"] == 4 and meta["architecture"]["num_classes"] == 3
    assert {str(k): v for k, v in meta["labels"].items()} == {"1": "organ_a", "2": "organ_b"}
    assert meta["plan"]["target_spacing_mm"] == [1.5, 1.5]
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for col in ("train_loss", "lr", "val_dice_mean", "val_dice_organ_a", "seconds", "slices_per_s"):
        assert col in rows[0]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_loss_goes_down_on_an_easy_task(prepared, tmp_path):
    out = tmp_path / "model"
    _train(prepared, out, epochs=6, iterations_per_epoch=6, batch_size=4, lr=0.01)
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_killed_and_resumed_run_equals_an_uninterrupted_one(prepared, tmp_path):
    """Deterministic mode on CPU: a SIGTERM mid-epoch, then a rerun, gives identical weights."""
    whole = tmp_path / "whole"
    _train(prepared, whole)
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        _train(prepared, cut, stop_after_iterations=5)  # in the middle of epoch 2
    assert (cut / "checkpoint.pt").exists() and not (cut / "model.safetensors").exists()
    _train(prepared, cut)  # the rerun resumes from the checkpoint by itself
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with open(whole / "train_log.csv", encoding="utf-8") as fh1, open(cut / "train_log.csv", encoding="utf-8") as fh2:
        la, lb = list(csv.DictReader(fh1)), list(csv.DictReader(fh2))
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]


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
    from unet_pipeline.augment import AugmentConfig
    from unet_pipeline.errors import ConfigError
    from unet_pipeline.training import _pairs_as_class_indices

    cfg = AugmentConfig(mirror_p=0.5, lr_label_pairs=[[9, 3]])
    assert _pairs_as_class_indices(cfg, [1, 3, 9]).lr_label_pairs == ((3, 2),)
    assert cfg.lr_label_pairs == ((9, 3),)  # the user's config is left as it was
    with pytest.raises(ConfigError, match=r"lr_label_pairs: \[9, 3\].*classes: \[1, 3\]"):
        _pairs_as_class_indices(cfg, [1, 3])
