"""Benchmark: tiled slice-wise inference (unet_pipeline.model.tiling) vs MONAI's sliding_window_inference.

The same network (the demo model's architecture: padded U-Net, base 16, depth 4, instance norm,
5 classes; seeded random weights) on the same stack of 512 x 512 slices (full: 300 slices, as a
512 x 512 x 300 CT; quick: 16), tiles of 256 x 256 with overlap 0.5 and Gaussian weighting
(sigma = 1/8 of the tile), on the CPU:

* ours: :func:`unet_pipeline.model.tiling.predict_slices` with its default batching (4 tiles a pass
  on the CPU, channels-last), softmax blended, in float32 (so the probabilities can be compared);
  also timed at the predictor's default precision (``auto``: bfloat16 on CPUs with AMX), reported
  as ``throughput_ratio_predictor_precision``;
* MONAI: ``sliding_window_inference(slices, roi_size=(256, 256), sw_batch_size=8, overlap=0.5,
  mode="gaussian", sigma_scale=0.125)`` with the softmax of the network as the predictor, so both
  blend probabilities.

Slices are processed in chunks of 16 by both (bounded memory). Reports slices/s of each, the
throughput ratio (ours / MONAI) and the largest absolute difference of the probabilities (must
be <= 1e-4). Run ``python bench/bench_inference.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from unet_pipeline.model.tiling import predict_slices
from unet_pipeline.model.unet import UNetConfig, build_unet

__all__ = ["run", "check"]

TILE = (256, 256)
OVERLAP = 0.5
BATCH = 8
CHUNK = 16
NUM_CLASSES = 5
TARGET_RATIO = 1.5


def _slices(n: int, seed: int = 0, size: int = 512) -> np.ndarray:
    """``(n, 1, size, size)`` float32 CT-like z-scores: a body ellipse with blobs and noise (512 px layout, scaled)."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) * (512.0 / size))
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 240) ** 2 < 1
    base = np.where(body, 0.0, -3.0).astype(np.float32)
    out = np.empty((n, 1, size, size), np.float32)
    for z in range(n):
        organ = ((yy - 220 - z % 20) / 70) ** 2 + ((xx - 200) / 90) ** 2 < 1
        out[z, 0] = base + np.where(organ, 1.5, 0.0) + rng.normal(0, 0.3, (size, size)).astype(np.float32)
    return out


def check(n: int = 2, size: int = 320, tile: int = 256, base_channels: int = 4, depth: int = 2) -> dict:
    """Correctness side only (no timing): both inferers on ``n`` small slices with a small network.

    Same settings as the benchmark otherwise (tiles of 256, here 2 x 2 a slice; overlap 0.5,
    Gaussian sigma 1/8 of the tile, our default batching, MONAI's ``sw_batch_size=8``). Returns
    ``ours`` and ``monai`` probabilities ``(n, K, size, size)`` and
    ``max_abs_probability_difference`` (the bench's criterion: <= 1e-4). Smaller tiles differ
    more (7e-4 with tiles of 64): MONAI's Gaussian map is discretised differently at small sigma
    (with our map passed as its ``roi_weight_map`` the two are identical).
    """
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=NUM_CLASSES, base_channels=base_channels, depth=depth)).eval()
    slices = _slices(n, size=size)
    with torch.inference_mode():
        ours = predict_slices(model, slices, num_classes=NUM_CLASSES, patch_size=(tile, tile), overlap=OVERLAP,
                              batch_size=None, precision="float32")
        theirs = np.asarray(sliding_window_inference(torch.from_numpy(slices), roi_size=(tile, tile),
                                                     sw_batch_size=BATCH,
                                                     predictor=lambda x: torch.softmax(model(x), dim=1),
                                                     overlap=OVERLAP, mode="gaussian", sigma_scale=0.125))
    return {"ours": ours, "monai": theirs, "max_abs_probability_difference": float(np.abs(ours - theirs).max())}


def run(quick: bool = False) -> dict:
    """Time both on the same slices; return slices/s, the ratio and the largest probability difference."""
    from monai.inferers import sliding_window_inference

    n = 16 if quick else 300
    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=NUM_CLASSES, base_channels=16, depth=4)).eval()
    slices = _slices(n)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    with torch.inference_mode():
        predict_slices(model, slices[:2], num_classes=NUM_CLASSES, patch_size=TILE, overlap=OVERLAP)
        ours_s = monai_s = auto_s = 0.0
        max_diff = 0.0
        for z0 in range(0, n, CHUNK):
            chunk = slices[z0:z0 + CHUNK]
            t = time.perf_counter()
            predict_slices(model, chunk, num_classes=NUM_CLASSES, patch_size=TILE, overlap=OVERLAP, batch_size=None)
            t0 = time.perf_counter()
            auto_s += t0 - t
            ours = predict_slices(model, chunk, num_classes=NUM_CLASSES, patch_size=TILE, overlap=OVERLAP,
                                  batch_size=None, precision="float32")
            t1 = time.perf_counter()
            theirs = sliding_window_inference(torch.from_numpy(chunk), roi_size=TILE, sw_batch_size=BATCH,
                                              predictor=predictor, overlap=OVERLAP, mode="gaussian",
                                              sigma_scale=0.125)
            t2 = time.perf_counter()
            ours_s += t1 - t0
            monai_s += t2 - t1
            max_diff = max(max_diff, float(np.abs(ours - np.asarray(theirs)).max()))
    return {
        "inference_ours_slices_per_s": round(n / ours_s, 3),
        "inference_monai_slices_per_s": round(n / monai_s, 3),
        "throughput_ratio": round(monai_s / ours_s, 2),
        "inference_ours_predictor_precision_slices_per_s": round(n / auto_s, 3),
        "throughput_ratio_predictor_precision": round(monai_s / auto_s, 2),
        "target_ratio": TARGET_RATIO,
        "max_abs_probability_difference": float(f"{max_diff:.3g}"),
        "slices": n,
        "slice_px": [512, 512],
        "tile_px": list(TILE),
        "overlap": OVERLAP,
        "monai_sw_batch_size": BATCH,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 slices instead of 300")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
