"""Benchmark: batched elastic deformation (unet_pipeline.train.augment) vs MONAI's Rand2DElasticd.

Both deform an image and its label, 256 x 256 px, elastic deformation only, probability 1:

* ours: :func:`unet_pipeline.train.augment.augment_batch` on a batch of 16 (one ``grid_sample`` per
  tensor for the whole batch), time divided by 16;
* MONAI: ``Rand2DElasticd`` called once per sample (its dictionary transforms work on one sample),
  with the closest parameters to the paper's 3 x 3 lattice with sigma = 10 px: control-point
  ``spacing`` = (256 - 1) / (3 - 1) = 127.5 px (the node spacing of a 3 x 3 lattice spanning the
  patch; MONAI adds nodes beyond the border and interpolates bicubically too) and
  ``magnitude_range=(10, 10)`` (MONAI draws node offsets ~ N(0, 1) times the magnitude, i.e.
  sigma = 10 px), bilinear/nearest, reflection padding like ours.

The two run alternately in one process on the CPU, after a warm-up; the medians over the repeats
are reported. Run ``python bench/bench_elastic.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unet_pipeline.train.augment import AugmentConfig, augment_batch

__all__ = ["run", "check"]

BATCH = 16
SIZE = (256, 256)
GRID = 3
SIGMA_PX = 10.0
TARGET_SPEEDUP = 5.0


def _ours(image: torch.Tensor, label: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> float:
    start = time.perf_counter()
    augment_batch(image, label, config, generator=gen)
    return (time.perf_counter() - start) / image.shape[0]


def _monai(samples: list[dict], transform) -> float:
    start = time.perf_counter()
    for sample in samples:
        transform(sample)
    return (time.perf_counter() - start) / len(samples)


def _inputs(batch: int, size: tuple[int, int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, 1, H, W)`` image (label + noise), ``(batch, H, W)`` int64 label: two boxes (256 px layout, scaled)."""
    sy, sx = size[0] / 256, size[1] / 256
    label = torch.zeros(batch, *size, dtype=torch.long)
    label[:, int(64 * sy):int(160 * sy), int(48 * sx):int(128 * sx)] = 1
    label[:, int(100 * sy):int(200 * sy), int(150 * sx):int(230 * sx)] = 2
    image = label.float()[:, None] + 0.1 * torch.randn(batch, 1, *size, generator=gen)
    return image, label


def _config() -> AugmentConfig:
    return AugmentConfig(elastic_p=1.0, elastic_grid=GRID, elastic_sigma_px=SIGMA_PX, rotate_p=0.0, scale_p=0.0,
                         mirror_p=0.0, gamma_p=0.0, noise_p=0.0, contrast_p=0.0, brightness_p=0.0)


def _monai_transform(size: tuple[int, int]):
    from monai.transforms import Rand2DElasticd

    spacing = (size[0] - 1) / (GRID - 1)
    transform = Rand2DElasticd(keys=["image", "label"], spacing=(spacing, spacing),
                               magnitude_range=(SIGMA_PX, SIGMA_PX), prob=1.0, mode=("bilinear", "nearest"),
                               padding_mode="reflection")
    transform.set_random_state(seed=0)
    return transform


def check(batch: int = 4, size: tuple[int, int] = SIZE) -> dict:
    """Correctness side only (no timing): both deformations of a small batch, as the benchmark sets them up.

    Returns the inputs ``image`` ``(N, 1, H, W)`` and ``label`` ``(N, H, W)``, ``ours`` and
    ``monai`` (each a pair ``(image, label)`` of the deformed batch, MONAI's stacked from its
    per-sample outputs, label as int64).
    """
    from monai.data import set_track_meta

    gen = torch.Generator().manual_seed(0)
    image, label = _inputs(batch, size, gen)
    ours_image, ours_label, _ = augment_batch(image, label, _config(), generator=gen)
    transform = _monai_transform(size)
    set_track_meta(False)
    try:
        outs = [transform({"image": image[i], "label": label[i:i + 1].float()}) for i in range(batch)]
    finally:
        set_track_meta(True)
    monai_image = torch.stack([torch.as_tensor(o["image"]) for o in outs])
    monai_label = torch.stack([torch.as_tensor(o["label"])[0] for o in outs]).round().long()
    return {"image": image, "label": label, "ours": (ours_image, ours_label), "monai": (monai_image, monai_label)}


def run(quick: bool = False) -> dict:
    """Time both implementations; return per-sample milliseconds and the speedup (MONAI / ours).

    Parameters
    ----------
    quick
        3 repeats instead of 25 (a smoke run).

    Returns
    -------
    dict
        ``elastic_ours_ms_per_sample``, ``elastic_monai_ms_per_sample``, ``speedup``,
        ``target_speedup``, the per-sample minima over the repeats and the settings used.
    """
    from monai.data import set_track_meta

    repeats = 3 if quick else 25
    gen = torch.Generator().manual_seed(0)
    image, label = _inputs(BATCH, SIZE, gen)
    config = _config()
    transform = _monai_transform(SIZE)
    samples = [{"image": image[i], "label": label[i:i + 1].float()} for i in range(BATCH)]

    set_track_meta(False)  # MONAI's fastest path: plain tensors, no metadata bookkeeping
    try:
        _ours(image, label, config, gen)  # warm-up
        _monai(samples[:2], transform)
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(_ours(image, label, config, gen))
            theirs.append(_monai(samples, transform))
    finally:
        set_track_meta(True)
    ours_ms = 1e3 * statistics.median(ours)
    monai_ms = 1e3 * statistics.median(theirs)
    return {
        "elastic_ours_ms_per_sample": round(ours_ms, 4),
        "elastic_monai_ms_per_sample": round(monai_ms, 4),
        "speedup": round(monai_ms / ours_ms, 2),
        "target_speedup": TARGET_SPEEDUP,
        # best of the repeats: less sensitive to other processes on a shared machine
        "elastic_ours_ms_per_sample_min": round(1e3 * min(ours), 4),
        "elastic_monai_ms_per_sample_min": round(1e3 * min(theirs), 4),
        "batch": BATCH,
        "size_px": list(SIZE),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 25")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
