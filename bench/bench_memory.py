"""Benchmark: peak memory of preprocessing and of reassembly for large CT volumes.

For each volume size an int16 CT ``512 x 512 x N`` (0.8 x 0.8 x 1.0 mm, stored RAS, gzip NIfTI like
an imported case) is written, then two stages each run in a *fresh* Python process, so the
figures are independent:

* preprocessing: :func:`unet_pipeline.preprocess.transform.preprocess_image` (canonical reorientation,
  in-plane resampling to the target spacing, normalisation, ``image.npy`` written in chunks);
* inference (first size only): :func:`unet_pipeline.stages.infer` with the demo model's
  architecture, tiles of 256 x 256, probabilities written as float16 ``(Z, K, Y', X')``; target:
  peak under 2 GB for 512 x 512 x 300;
* reassembly: :func:`unet_pipeline.infer.reassembly.reassemble_case` from a ``(Z, K, Y', X')`` float16
  probabilities ``.npy`` (K = 5: background + 4 classes) back to a uint8 NIfTI on the input grid.

The child reports its peak resident set size (``VmHWM`` from ``/proc/self/status``, which
counts file pages mapped by ``np.load(mmap_mode="r")`` too) and its resident size right after
the imports (``baseline``: Python, numpy, torch, nibabel). The target is a peak below 4 x the
float32 size of the volume; it is judged on the peak above the baseline ("net"), because the
baseline of ~250 MB does not grow with the volume, and the absolute ratio is reported too.
Growth is at most linear when ``net(large) / net(small)`` is no more than the ratio of slice
counts (chunked stages hold a bounded number of slices, so they grow less).

Run ``python -m bench.bench_memory [--quick] [--target-mm 0.8] [--no-infer]``; prints a JSON dict.
``--quick`` uses 100 and 200 slices instead of 300 and 600 (and measures inference on 32
slices). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["run", "TARGET_RATIO"]

#: Peak memory target, as a multiple of the volume's float32 size.
TARGET_RATIO = 4.0
NUM_CLASSES = 5
IN_PLANE = 512
SPACING = (0.8, 0.8, 1.0)  # mm along the stored axes (i, j, k) = (R, A, S)

_CHILD = r"""
import json, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
import numpy as np
from unet_pipeline.io.files import load_json
from unet_pipeline.preprocess.transform import preprocess_image
from unet_pipeline.infer.reassembly import reassemble_case
args = json.loads(sys.argv[1])
baseline = status("VmRSS")
if args["stage"] == "preprocess":
    preprocess_image(args["image"], args["plan"], args["out_dir"], case_id="bench")
elif args["stage"] == "infer":
    from unet_pipeline.stages import infer
    infer([args["model"]], args["pre"], args["out"], inference={"device": "cpu", "batch_size": 8})
else:
    reassemble_case(args["probs"], args["meta"], args["image"], args["out"], num_classes=args["num_classes"])
print(json.dumps({"peak_bytes": status("VmHWM"), "baseline_bytes": baseline}))
"""


def _write_ct(path: Path, n_slices: int, seed: int = 0) -> None:
    """An int16 CT-like volume ``(512, 512, n_slices)`` in HU: air, a body ellipse, noise."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(IN_PLANE), np.arange(IN_PLANE), indexing="ij")
    body = ((i - 256) / 200.0) ** 2 + ((j - 256) / 150.0) ** 2 < 1
    data = np.empty((IN_PLANE, IN_PLANE, n_slices), np.int16)
    for k in range(n_slices):  # slice by slice: keep this process small
        data[..., k] = np.where(body, 40, -1000) + rng.integers(-20, 20, body.shape)
    affine = np.diag([*SPACING, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _write_probs(path: Path, shape_zyx: tuple[int, int, int], seed: int = 0) -> None:
    """Random softmax-like float16 probabilities ``(Z, K, Y', X')``, written slab by slab."""
    from unet_pipeline.io.npy import NpyWriter

    rng = np.random.default_rng(seed)
    n_z, n_y, n_x = shape_zyx
    with NpyWriter(path, (n_z, NUM_CLASSES, n_y, n_x), np.float16) as writer:
        for z0 in range(0, n_z, 16):
            n = min(16, n_z - z0)
            logits = rng.standard_normal((n, NUM_CLASSES, n_y, n_x), dtype=np.float32)
            e = np.exp(logits)
            writer.write((e / e.sum(axis=1, keepdims=True)).astype(np.float16))


def _measure(args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args['stage']} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _figures(measured: dict, volume_bytes: int) -> dict:
    peak, base = measured["peak_bytes"], measured["baseline_bytes"]
    return {
        "peak_mb": round(peak / 1e6, 1),
        "baseline_mb": round(base / 1e6, 1),
        "net_peak_mb": round((peak - base) / 1e6, 1),
        "ratio": round(peak / volume_bytes, 2),
        "net_ratio": round((peak - base) / volume_bytes, 2),
        "meets_target": bool((peak - base) < TARGET_RATIO * volume_bytes),
    }


def demo_model(folder: Path, plan: dict) -> Path:
    """A model folder with the demo's architecture (padded U-Net, base 16, depth 4; seeded random weights)."""
    import torch
    from safetensors.torch import save_file

    from unet_pipeline.io.files import save_json
    from unet_pipeline.model.unet import UNetConfig, build_unet
    from unet_pipeline.model.folder import MODEL_FORMAT

    torch.manual_seed(0)
    config = UNetConfig(num_classes=NUM_CLASSES, base_channels=16, depth=4)
    model = build_unet(config)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    labels = {str(k): f"class_{k}" for k in range(1, NUM_CLASSES)}
    save_json({"format": MODEL_FORMAT, "architecture": config.to_dict(), "labels": labels,
               "plan": {**plan, "labels": labels, "patch_size": [256, 256]}}, folder / "model.json")
    return folder


def _one_size(work: Path, n_slices: int, target_mm: float, infer: bool = False) -> dict:
    case = work / f"z{n_slices}"
    case.mkdir()
    image = case / "image.nii.gz"
    _write_ct(image, n_slices)
    plan = {"target_spacing_mm": [target_mm, target_mm], "num_classes": NUM_CLASSES,
            "intensity": {"p00_5": -1000.0, "p99_5": 1000.0, "mean": 0.0, "std": 300.0}}
    volume_bytes = IN_PLANE * IN_PLANE * n_slices * 4
    pre = _measure({"stage": "preprocess", "image": str(image), "plan": plan, "out_dir": str(case / "pre")})
    meta = json.loads((case / "pre" / "meta.json").read_text(encoding="utf-8"))
    inference = None
    if infer:  # tiled inference of the whole volume with the demo model, probabilities to disk
        model = demo_model(work / "model", plan)
        inference = _measure({"stage": "infer", "model": str(model), "pre": str(case / "pre"),
                              "out": str(case / "probs.npy")})
    else:
        _write_probs(case / "probs.npy", tuple(meta["resampled_shape"]))
    probs_bytes = (case / "probs.npy").stat().st_size
    (case / "pre" / "image.npy").unlink()
    post = _measure({"stage": "reassemble", "probs": str(case / "probs.npy"), "meta": str(case / "pre" / "meta.json"),
                     "image": str(image), "out": str(case / "seg.nii.gz"), "num_classes": NUM_CLASSES})
    for p in (case / "probs.npy", case / "seg.nii.gz", image):
        p.unlink(missing_ok=True)
    return {
        "slices": n_slices,
        "shape": [IN_PLANE, IN_PLANE, n_slices],
        "resampled_shape": meta["resampled_shape"],
        "float32_mb": round(volume_bytes / 1e6, 1),
        "int16_mb": round(volume_bytes / 2e6, 1),
        "probs_mb": round(probs_bytes / 1e6, 1),
        "preprocess": _figures(pre, volume_bytes),
        "reassemble": _figures(post, volume_bytes),
        **({"infer": {**_figures(inference, volume_bytes), "under_2_gb": inference["peak_bytes"] < 2e9}}
           if inference else {}),
    }


def run(quick: bool = False, target_mm: float = 0.8, infer: bool = True) -> dict:
    """Measure peak memory of preprocessing and reassembly for two volume sizes.

    Parameters
    ----------
    quick
        100 and 200 slices instead of 300 and 600.
    target_mm
        In-plane target spacing of the plan in mm (0.8 = the volume's own: no resampling).
    infer
        Also measure tiled inference (first size only; minutes on a CPU).

    Returns
    -------
    dict
        Per size: peak, baseline and net (peak - baseline) RSS in MB, the float32 volume size,
        ratios and whether the target holds; per stage: ``growth`` (net peak ratio large/small)
        next to ``slice_ratio`` and ``at_most_linear`` (growth no more than 15 % above the slice
        ratio: chunked stages hold a bounded number of slices and grow less than linearly).
    """
    if target_mm <= 0:
        raise ValueError(f"target_mm must be > 0, got {target_mm}")
    sizes = (100, 200) if quick else (300, 600)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        # Inference is slow on a CPU and its memory does not grow with the slices (it holds one
        # chunk): measured on the first size in full mode, on a 32-slice volume in quick mode.
        results = [_one_size(Path(tmp), n, target_mm, infer=infer and i == 0 and not quick)
                   for i, n in enumerate(sizes)]
        if infer and quick:
            small = _one_size(Path(tmp), 32, target_mm, infer=True)
            results[0]["infer"] = {**small["infer"], "slices": 32}
    out: dict = {"target_ratio": TARGET_RATIO, "num_classes": NUM_CLASSES, "spacing_mm": list(SPACING),
                 "target_spacing_mm": target_mm, "sizes": results}
    slice_ratio = sizes[1] / sizes[0]
    for stage in ("preprocess", "reassemble"):
        small, large = results[0][stage]["net_peak_mb"], results[1][stage]["net_peak_mb"]
        growth = large / small if small > 0 else float("nan")
        # The target: memory grows no faster than the volume (chunked stages may not grow at all).
        out[f"{stage}_growth"] = {"net_peak_ratio": round(growth, 2), "slice_ratio": slice_ratio,
                                  "at_most_linear": bool(growth <= 1.15 * slice_ratio)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 and 200 slices instead of 300 and 600")
    parser.add_argument("--target-mm", type=float, default=0.8, help="in-plane target spacing (mm)")
    parser.add_argument("--no-infer", action="store_true", help="skip the (slow) inference measurement")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.target_mm, infer=not args.no_infer), indent=2))


if __name__ == "__main__":
    main()
