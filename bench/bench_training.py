"""Benchmark: throughput of the project's training loop vs a MONAI training loop and a minimal
plain-PyTorch loop.

Same network (the demo's padded U-Net: base 16, depth 4, instance norm, 5 classes), same batch
(8 patches of 128 x 160), same loss (Dice + CE), same optimiser (AdamW), on the CPU:

* ours: :func:`unet_pipeline.train.loop.train` for one epoch without validation: patches sampled
  from memory-mapped preprocessed cases with foreground oversampling, batched augmentation (the
  paper's elastic deformation and the schema's default transforms), gradient clipping, the
  per-epoch log and checkpoint;
* MONAI: the loop a MONAI user writes: the same slices as a list of dictionaries, a
  ``monai.data.DataLoader`` (batch 8, shuffled, in-process as ours) over MONAI's dictionary
  transforms with the same probabilities (``RandCropByPosNegLabeld`` 2:1 foreground,
  ``Rand2DElasticd``, ``RandRotated``, ``RandZoomd``, ``RandAdjustContrastd``,
  ``RandGaussianNoised``, ``RandScaleIntensityd``, ``RandShiftIntensityd``), MONAI's ``DiceCELoss``;
  the network as built (contiguous memory, as a user gets it);
* plain: a ``for`` loop over batches prepared in memory beforehand: forward, loss, backward, step,
  channels-last as ours (the compute alone, no data or augmentation).

All are timed in the same process, after a warm-up. Reported: slices/s of each, ours / MONAI
(target: above 1) and the pipeline's overhead ``1 - ours / plain`` (target: under 15 %).
Run ``python bench/bench_training.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unet_pipeline.train.augment import AugmentConfig
from unet_pipeline.io.files import save_json
from unet_pipeline.train.losses import make_loss
from unet_pipeline.model.unet import UNetConfig, build_unet
from unet_pipeline.preprocess.slice_index import build_slice_index
from unet_pipeline.train.loop import TrainConfig, train

__all__ = ["run"]

PATCH = (128, 160)
BATCH = 8
NUM_CLASSES = 5
TARGET_OVERHEAD = 0.15
TARGET_VS_MONAI = 1.0
AUGMENT = {"elastic_p": 0.5, "rotate_p": 0.2, "scale_p": 0.2, "gamma_p": 0.2, "noise_p": 0.1, "contrast_p": 0.15,
           "brightness_p": 0.15, "mirror_p": 0.0}


def _cases(root: Path, n: int = 3, seed: int = 0) -> list[tuple[Path, Path]]:
    """``n`` preprocessed cases (30 slices of 140 x 180 z-scores with 4 organ blobs) and their slice index."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:140, 0:180]
    pairs = []
    for i in range(n):
        image = rng.normal(0, 0.3, (30, 140, 180)).astype(np.float32) - 1.5
        label = np.zeros((30, 140, 180), np.uint8)
        for value, (cy, cx, r) in enumerate([(60, 60, 30), (60, 130, 15), (100, 60, 10), (100, 120, 10)], start=1):
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
            label[5:25][:, m] = value
            image[5:25][:, m] += 1.0 + 0.4 * value
        pre, sl = root / f"pre{i}", root / f"sl{i}"
        pre.mkdir()
        np.save(pre / "image.npy", image)
        np.save(pre / "label.npy", label)
        save_json({"case_id": f"c{i}", "intensity": {"p00_5": -1.5, "p99_5": 3.0, "mean": 0.0, "std": 1.0}},
                  pre / "meta.json")
        build_slice_index(pre, sl, num_classes=NUM_CLASSES)
        pairs.append((pre, sl))
    return pairs


def _ours(pairs, out: Path, iterations: int, device: str = "cpu") -> tuple[float, float]:
    plan = {"num_classes": NUM_CLASSES, "patch_size": list(PATCH), "target_spacing_mm": [1.5, 1.5],
            "labels": {str(k): f"c{k}" for k in range(1, NUM_CLASSES)},
            "intensity": {"p00_5": -1.5, "p99_5": 3.0, "mean": 0.0, "std": 1.0}}
    cfg = TrainConfig(epochs=1, iterations_per_epoch=iterations, batch_size=BATCH, optimizer="adamw", lr=0.003,
                      foreground_fraction=0.67, checkpoint_minutes=0, progress=False, seed=0, device=device)
    train(pairs, [], plan, out, model_config={"base_channels": 16, "depth": 4}, train_config=cfg,
          augment_config=AugmentConfig.from_dict(AUGMENT), loss_options={"batch_dice": True})
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    # the epoch's training time (without writing the model files) and the share of it spent waiting for data
    return float(row["seconds"]), float(row["data_wait_share"])


def _monai(pairs, iterations: int, device: str = "cpu") -> float:
    """Seconds of ``iterations`` steps of a MONAI training loop (after a one-batch warm-up)."""
    import warnings

    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.transforms import (Compose, Rand2DElasticd, RandAdjustContrastd, RandCropByPosNegLabeld,
                                  RandGaussianNoised, RandRotated, RandScaleIntensityd, RandShiftIntensityd, RandZoomd)

    warnings.filterwarnings("ignore", module="monai")
    keys, p = ["image", "label"], AUGMENT
    slices = [{"image": np.load(pre / "image.npy", mmap_mode="r")[z][None].copy(),
               "label": np.load(pre / "label.npy", mmap_mode="r")[z][None].copy()}
              for pre, _ in pairs for z in range(30)]
    transform = Compose([
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=PATCH, pos=2, neg=1, num_samples=1),
        Rand2DElasticd(keys, spacing=(PATCH[0] // 2, PATCH[1] // 2), magnitude_range=(0.0, 10.0),
                       prob=p["elastic_p"], mode=("bilinear", "nearest")),
        RandRotated(keys, range_x=0.26, prob=p["rotate_p"], mode=("bilinear", "nearest")),
        RandZoomd(keys, min_zoom=0.85, max_zoom=1.15, prob=p["scale_p"], mode=("bilinear", "nearest")),
        RandAdjustContrastd("image", prob=p["gamma_p"], gamma=(0.7, 1.5)),
        RandGaussianNoised("image", prob=p["noise_p"], std=0.1),
        RandScaleIntensityd("image", factors=0.25, prob=p["contrast_p"]),
        RandShiftIntensityd("image", offsets=0.1, prob=p["brightness_p"])])
    transform.set_random_state(seed=0)
    loader = DataLoader(Dataset(slices, transform), batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=NUM_CLASSES, base_channels=16, depth=4)).train().to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    done, start = -1, None
    while done < iterations:
        for batch in loader:
            if done == 0:
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            x, y = batch["image"].as_tensor().to(device), batch["label"].as_tensor().to(device)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            done += 1
            if done == iterations:
                break
    _sync(device)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _plain(iterations: int, device: str = "cpu") -> float:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=NUM_CLASSES, base_channels=16, depth=4)).train()
    model = model.to(device, memory_format=torch.channels_last)
    loss_fn = make_loss("dice_ce", batch_dice=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(BATCH, 1, *PATCH, generator=gen).to(device).contiguous(memory_format=torch.channels_last),
                torch.randint(0, NUM_CLASSES, (BATCH, *PATCH), generator=gen).to(device)) for _ in range(iterations)]
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def run(quick: bool = False, device: str | None = None) -> dict:
    """Time the three loops on ``device`` (default the CPU); slices/s, ours / MONAI and the overhead of ours."""
    device = device or "cpu"
    iterations = 6 if quick else 30
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        tmp = Path(tmp)
        pairs = _cases(tmp)
        _plain(2, device)  # warm-up
        plain_s = _plain(iterations, device)
        ours_s, wait_share = _ours(pairs, tmp / "model", iterations, device)
        monai_s = _monai(pairs, iterations, device)
    plain_rate, ours_rate, monai_rate = (iterations * BATCH / t for t in (plain_s, ours_s, monai_s))
    return {
        "training_ours_slices_per_s": round(ours_rate, 2),
        "training_monai_slices_per_s": round(monai_rate, 2),
        "vs_monai": round(ours_rate / monai_rate, 2),
        "target_vs_monai": TARGET_VS_MONAI,
        "training_plain_slices_per_s": round(plain_rate, 2),
        "data_wait_share_ours": wait_share,
        "overhead": round(1.0 - ours_rate / plain_rate, 3),
        "target_overhead": TARGET_OVERHEAD,
        "iterations": iterations,
        "batch": BATCH,
        "patch_px": list(PATCH),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 iterations instead of 30")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, device=args.device), indent=2))


if __name__ == "__main__":
    main()
