"""Benchmark: throughput of the project's training loop vs a minimal plain-PyTorch loop.

Same network (the demo's padded U-Net: base 16, depth 4, instance norm, 5 classes), same batch
(8 patches of 128 x 160), same loss (Dice + CE), same optimiser (AdamW), on the CPU:

* ours: :func:`unet_pipeline.train.loop.train` for one epoch without validation: patches sampled
  from memory-mapped preprocessed cases with foreground oversampling, batched augmentation (the
  paper's elastic deformation and the shipped config's other transforms), gradient clipping, the
  per-epoch log and checkpoint;
* plain: a ``for`` loop over batches prepared in memory beforehand: forward, loss, backward, step.

Both are timed in the same process, after a warm-up. Reported: slices/s of each and the
pipeline's overhead ``1 - ours / plain`` (target: under 15 %).
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


def _ours(pairs, out: Path, iterations: int) -> float:
    plan = {"num_classes": NUM_CLASSES, "patch_size": list(PATCH), "target_spacing_mm": [1.5, 1.5],
            "labels": {str(k): f"c{k}" for k in range(1, NUM_CLASSES)}, "intensity": {}}
    cfg = TrainConfig(epochs=1, iterations_per_epoch=iterations, batch_size=BATCH, optimizer="adamw", lr=0.003,
                      foreground_fraction=0.67, checkpoint_minutes=0, progress=False, seed=0)
    train(pairs, [], plan, out, model_config={"base_channels": 16, "depth": 4}, train_config=cfg,
          augment_config=AugmentConfig.from_dict(AUGMENT), loss_options={"batch_dice": True})
    with open(out / "train_log.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    return float(row["seconds"])  # the epoch's training time (without writing the model files)


def _plain(iterations: int) -> float:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=NUM_CLASSES, base_channels=16, depth=4)).train()
    loss_fn = make_loss("dice_ce", batch_dice=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(BATCH, 1, *PATCH, generator=gen),
                torch.randint(0, NUM_CLASSES, (BATCH, *PATCH), generator=gen)) for _ in range(iterations)]
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def run(quick: bool = False) -> dict:
    """Time both loops; return slices/s and the overhead of ours."""
    iterations = 6 if quick else 30
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        tmp = Path(tmp)
        pairs = _cases(tmp)
        _plain(2)  # warm-up
        plain_s = _plain(iterations)
        ours_s = _ours(pairs, tmp / "model", iterations)
    plain_rate, ours_rate = iterations * BATCH / plain_s, iterations * BATCH / ours_s
    return {
        "training_ours_slices_per_s": round(ours_rate, 2),
        "training_plain_slices_per_s": round(plain_rate, 2),
        "overhead": round(1.0 - ours_rate / plain_rate, 3),
        "target_overhead": TARGET_OVERHEAD,
        "iterations": iterations,
        "batch": BATCH,
        "patch_px": list(PATCH),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 iterations instead of 30")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
