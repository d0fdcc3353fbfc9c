"""Benchmark: forward throughput of the U-Net and the GFLOP/s it achieves, channels-last vs contiguous.

No reference library here: the figures to compare with are the target of 100 GFLOP/s on 2 CPU
cores (what this machine reaches for this family of 2D U-Nets with batch norm, channels-last) and
the predictor's former path (``b1_before``). Two networks, seeded random weights, 5 classes, one
input channel, in inference mode:

* the demo model: the architecture of ``config/demo.yaml`` with the schema's defaults (padded U-Net,
  base 16, depth 4, instance norm), tiles of the plan's patch (256 x 256; quick: 128 x 128);
* the paper-size network: the same padded variant with ``base_channels`` 64 (what setting
  ``model.base_channels: 64`` gives; the paper's channel counts, zero-padded convolutions so any
  tile size works). Its FLOPs are counted always; it is timed in full mode only, on the CPU at
  batch 1 (a batch of 8 would take tens of seconds a pass there).

FLOPs are counted once (not timed) with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device: convolutions and up-convolutions as 2 x multiply-accumulates; normalisation, ReLU and
pooling are not counted, so GFLOP/s = counted FLOPs / seconds. Counted per tile, per 512 x 512
slice in one pass, and per slice as tiled inference covers it (overlap 0.5: 9 tiles of 256), and
for the paper's exact unpadded network (572 x 572 in, 388 x 388 out, no normalisation, 2 classes).

Timed variants, alternated in one process after a warm-up pass of each (the order rotates every
repeat; each sample runs the same number of tiles): batch 1, the predictor's CPU batch (4) and
batch 8, ``contiguous`` and ``channels_last`` (model and input; the predictor runs channels-last);
for the demo model also ``b1_before``, the path the predictor took before instance norm became a
group norm per channel: the network with torch's ``nn.InstanceNorm2d``, traced, frozen and
optimised for oneDNN, one tile a pass (``speedup_vs_before`` = the predictor's variant over it); on a
CPU with AMX bfloat16 also ``b4_channels_last_bf16``, the predictor's variant there
(``inference.precision: auto``). On
CUDA the same batch/format variants run under fp16 autocast; ``--device cuda`` times the GPU only. Medians over the repeats give tiles/s and
GFLOP/s; slices/s is that GFLOP/s over the FLOPs of a slice (one 512 x 512 pass; ``_tiled``: the
plan's 256 x 256 tiles at overlap 0.5, 9 a slice), so quick mode's smaller tiles extrapolate to the
real ones at the rate they achieved. Reported too: the largest difference between the channels-last
and contiguous logits, and the estimated seconds per 512 x 512 slice of the paper-size network on
this machine (its FLOPs / the GFLOP/s it achieved; in quick mode, where it is not timed, from the
demo model's GFLOP/s, which overestimates the time).
Run ``python bench/bench_forward.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from unet_pipeline.model.tiling import autocast_dtype, tile_starts
from unet_pipeline.model.unet import UNetConfig, build_unet
from unet_pipeline.cohort.naming import DEMO_LABELS

__all__ = ["run", "count_flops", "check", "demo_config", "paper_config", "PAPER_UNPADDED"]

CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
NUM_CLASSES = 1 + len(DEMO_LABELS)
SLICE = 512
OVERLAP = 0.5
BATCHES = (1, 4, 8)
PREDICTOR_BATCH_CPU = 4       # predict_slices' default tile batch on the CPU
TARGET_GFLOPS = 100.0
FORMATS = ("contiguous", "channels_last")
TILES_PER_SAMPLE = 8          # every timed sample runs this many tiles, whatever the batch
CUDA_TILES_PER_SAMPLE = 256
#: The paper's network exactly: unpadded, no normalisation, 2 classes, 572 x 572 -> 388 x 388.
PAPER_UNPADDED = UNetConfig(num_classes=2, in_channels=1, base_channels=64, depth=4, padded=False, norm="none")
PAPER_UNPADDED_INPUT = 572


def demo_config(path: Path = CONFIG) -> tuple[UNetConfig, int]:
    """The demo's model (its config with the schema's defaults; 5 classes as the demo cohort) and its
    tile side (plan patch)."""
    from unet_pipeline.config import load_config

    cfg = load_config(path)
    model = {k: v for k, v in (cfg.get("model") or {}).items() if k in UNetConfig.__dataclass_fields__}
    plan = cfg.get("plan") or {}
    patch = plan.get("patch_size") or [plan.get("max_patch", 256)] * 2
    return UNetConfig.from_dict({**model, "num_classes": NUM_CLASSES}), int(max(patch))


def paper_config(demo: UNetConfig) -> UNetConfig:
    """The paper's channel counts (base 64, depth 4) in the demo's padded variant."""
    return UNetConfig.from_dict({**demo.to_dict(), "base_channels": 64, "depth": 4, "padded": True})


def count_flops(config: UNetConfig, size: int, batch: int = 1) -> int:
    """FLOPs (FlopCounterMode: 2 x MACs of the convolutions) of one forward pass on ``(batch, C, size, size)``.

    Runs on the meta device: shapes only, no arithmetic, so even the paper's network costs
    milliseconds.
    """
    with torch.device("meta"):
        model = build_unet(config).eval()
        x = torch.empty(batch, config.in_channels, size, size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _tiles_per_slice(tile: int) -> int:
    return len(tile_starts(SLICE, tile, OVERLAP)) ** 2


def _flop_figures(config: UNetConfig, tile: int, plan_tile: int) -> dict:
    """FLOPs of a timed tile, of one 512 x 512 pass and of a slice tiled with the plan's tiles at overlap 0.5."""
    per_tile, per_plan_tile = count_flops(config, tile), count_flops(config, plan_tile)
    per_slice = count_flops(config, SLICE)
    n_tiles = _tiles_per_slice(plan_tile)
    return {"architecture": config.to_dict(), "tile_px": tile, "gflop_per_tile": round(per_tile / 1e9, 3),
            "plan_tile_px": plan_tile, "gflop_per_plan_tile": round(per_plan_tile / 1e9, 3),
            "gflop_per_slice": round(per_slice / 1e9, 3), "tiles_per_slice_tiled": n_tiles,
            "gflop_per_slice_tiled": round(n_tiles * per_plan_tile / 1e9, 3), "_flops_tile": per_tile,
            "_flops_slice": per_slice, "_flops_slice_tiled": n_tiles * per_plan_tile}


def _before(model: torch.nn.Module, shape: tuple[int, ...]) -> Any:
    """The former CPU path of the predictor: ``model`` with torch's ``nn.InstanceNorm2d`` in place of
    ours (same weights), traced for one input shape, frozen and optimised for inference (oneDNN)."""
    import copy
    import warnings

    from unet_pipeline.model.unet import InstanceNorm

    old = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    for module in list(old.modules()):
        for name, child in module.named_children():
            if isinstance(child, InstanceNorm):
                ref = torch.nn.InstanceNorm2d(child.num_channels, affine=True)
                ref.load_state_dict(child.state_dict())
                setattr(module, name, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(old.eval(), torch.zeros(shape), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def _models(config: UNetConfig, device: torch.device, formats=FORMATS) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base = build_unet(config).eval().to(device)
    models = {}
    for fmt in formats:
        m = build_unet(config).eval().to(device)
        m.load_state_dict(base.state_dict())
        models[fmt] = m.to(memory_format=torch.channels_last) if fmt == "channels_last" else m
    return models


def _input(batch: int, config: UNetConfig, tile: int, fmt: str, device: torch.device) -> torch.Tensor:
    x = torch.randn(batch, config.in_channels, tile, tile, generator=torch.Generator().manual_seed(batch)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x.contiguous()


def check(config: UNetConfig, size: int = 32, batch: int = 2) -> dict:
    """Correctness side of the benchmark, no timing: FLOPs counted, and channels-last vs contiguous logits.

    Returns ``flops`` (one pass on ``(batch, C, size, size)``), ``max_abs_diff_channels_last``
    (largest difference between the logits of the two memory formats, same weights and input),
    ``max_abs_logit`` and ``channels_last_output`` (whether that variant's output is channels-last).
    """
    models = _models(config, torch.device("cpu"))
    with torch.inference_mode():
        a = models["contiguous"](_input(batch, config, size, "contiguous", torch.device("cpu")))
        b = models["channels_last"](_input(batch, config, size, "channels_last", torch.device("cpu")))
    return {"flops": count_flops(config, size, batch), "max_abs_diff_channels_last": float((a - b).abs().max()),
            "max_abs_logit": float(a.abs().max()), "output_shape": list(a.shape),
            "channels_last_output": bool(b.is_contiguous(memory_format=torch.channels_last))}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(config: UNetConfig, tile: int, device: torch.device, batches: tuple[int, ...], repeats: int,
          tiles_per_sample: int, before: bool) -> tuple[dict[str, tuple[float, float]], float]:
    """Median and least seconds per tile of each variant, and the largest channels-last vs contiguous logit
    difference."""
    models = _models(config, device)
    default_amp = torch.float16 if device.type == "cuda" else None
    variants: dict[str, tuple[Any, torch.Tensor, int, torch.dtype | None]] = {}
    for batch in batches:
        for fmt in FORMATS:
            variants[f"b{batch}_{fmt}"] = (models[fmt], _input(batch, config, tile, fmt, device),
                                           max(1, tiles_per_sample // batch), default_amp)
    if before and device.type == "cpu":
        x = _input(1, config, tile, "contiguous", device)
        variants["b1_before"] = (_before(models["contiguous"], tuple(x.shape)), x, tiles_per_sample, None)
    predictor_amp = autocast_dtype("auto", device)
    if device.type == "cpu" and predictor_amp is not None:  # what the predictor runs on this CPU: bfloat16
        b = PREDICTOR_BATCH_CPU
        variants[f"b{b}_channels_last_bf16"] = (models["channels_last"], _input(b, config, tile, "channels_last", device),
                                                max(1, tiles_per_sample // b), predictor_amp)
    names = list(variants)
    samples: dict[str, list[float]] = {k: [] for k in names}

    def forward(name: str) -> torch.Tensor:
        model, x, _, amp = variants[name]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return model(x)

    with torch.inference_mode():
        outputs = {}
        for name in names:  # warm-up (oneDNN primitive creation, cuDNN autotuning, graph optimisation)
            outputs[name] = forward(name).float()
            _sync(device)
        diff = max(float((outputs[f"b{b}_channels_last"] - outputs[f"b{b}_contiguous"]).abs().max()) for b in batches)
        del outputs
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every repeat
                passes, n = variants[name][2], variants[name][1].shape[0]
                _sync(device)
                start = time.perf_counter()
                for _ in range(passes):
                    forward(name)
                _sync(device)
                samples[name].append((time.perf_counter() - start) / (passes * n))
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}, diff


def _rates(seconds_per_tile: dict[str, tuple[float, float]], flops: dict) -> dict:
    """Per variant, from the median sample: ms/tile, tiles/s, GFLOP/s, and slices/s = GFLOP/s / GFLOP per
    slice (one 512 x 512 pass; ``_tiled``: the plan's tiles at overlap 0.5), i.e. at the GFLOP/s achieved
    on the timed tiles; ``gflops_fastest``: from the fastest sample (less sensitive to other processes on a
    shared machine)."""
    out = {}
    for name, (s, fastest) in seconds_per_tile.items():
        rate = flops["_flops_tile"] / s
        out[name] = {"ms_per_tile": round(1e3 * s, 2), "tiles_per_s": round(1 / s, 2),
                     "gflops": round(rate / 1e9, 1), "gflops_fastest": round(flops["_flops_tile"] / fastest / 1e9, 1),
                     "slices_per_s": round(rate / flops["_flops_slice"], 3),
                     "slices_per_s_tiled": round(rate / flops["_flops_slice_tiled"], 3)}
    return out


def _ratio(rates: dict, batch: int) -> float | None:
    a, b = rates.get(f"b{batch}_contiguous"), rates.get(f"b{batch}_channels_last")
    return round(b["tiles_per_s"] / a["tiles_per_s"], 3) if a and b else None


def run(quick: bool = False, device: str | None = None) -> dict:
    """FLOPs of both networks; tiles/s, slices/s and GFLOP/s of each timed variant; the paper-size estimate.

    ``device``: None times the CPU and, when present, CUDA; ``"cuda"`` times the GPU only."""
    demo, plan_tile = demo_config()
    paper = paper_config(demo)
    tile = 128 if quick else plan_tile
    repeats = 3 if quick else 5
    figures = {"demo": _flop_figures(demo, tile, plan_tile), "paper_padded": _flop_figures(paper, tile, plan_tile)}
    unpadded_out = build_unet(PAPER_UNPADDED).output_size(PAPER_UNPADDED_INPUT)
    unpadded_tiles = math.ceil(SLICE / unpadded_out) ** 2  # overlap-tile strategy, output tiles side by side
    unpadded_flops = count_flops(PAPER_UNPADDED, PAPER_UNPADDED_INPUT)
    figures["paper_unpadded"] = {"architecture": PAPER_UNPADDED.to_dict(), "input_px": PAPER_UNPADDED_INPUT,
                                 "output_px": unpadded_out, "gflop_per_tile": round(unpadded_flops / 1e9, 3),
                                 "tiles_per_slice": unpadded_tiles,
                                 "gflop_per_slice": round(unpadded_tiles * unpadded_flops / 1e9, 3),
                                 "gflop_per_output_megapixel": round(unpadded_flops / unpadded_out ** 2 / 1e3, 3)}

    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no usable GPU (torch.cuda.is_available() is False)")
        devices = [torch.device("cuda")]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() and device is None else [])
    for device in devices:
        cuda = device.type == "cuda"
        for name, config in (("demo", demo), ("paper_padded", paper)):
            if name == "paper_padded" and quick and not cuda:
                continue
            batches = BATCHES if cuda or name == "demo" else (1,)
            per_sample = CUDA_TILES_PER_SAMPLE if cuda else (TILES_PER_SAMPLE if name == "demo" else 1)
            seconds, diff = _time(config, tile, device, batches, repeats, per_sample, before=name == "demo")
            figures[name][device.type] = _rates(seconds, figures[name])
            figures[name][f"{device.type}_max_abs_diff_channels_last"] = float(f"{diff:.3g}")

    if "cpu" not in figures["demo"]:
        return _cuda_result(figures, quick)
    demo_cpu = figures["demo"]["cpu"]
    predictor = next(k for k in (f"b{PREDICTOR_BATCH_CPU}_channels_last_bf16", f"b{PREDICTOR_BATCH_CPU}_channels_last")
                     if k in demo_cpu)  # the predictor's variant: bfloat16 where the CPU has AMX
    best = max(demo_cpu, key=lambda k: demo_cpu[k]["gflops"])
    if "cpu" in figures["paper_padded"]:
        paper_cpu = figures["paper_padded"]["cpu"]
        basis_name = max(paper_cpu, key=lambda k: paper_cpu[k]["gflops"])
        basis, basis_label = paper_cpu[basis_name]["gflops"], f"paper-size model's own best CPU GFLOP/s ({basis_name})"
        fastest = max(v["gflops_fastest"] for v in paper_cpu.values())
    else:
        basis, basis_label = demo_cpu[best]["gflops"], (f"demo model's best CPU GFLOP/s ({best}; quick mode: the "
                                                        "paper-size model is not timed, so this overestimates)")
        fastest = max(v["gflops_fastest"] for v in demo_cpu.values())
    for fig in figures.values():
        for key in ("_flops_tile", "_flops_slice", "_flops_slice_tiled"):
            fig.pop(key, None)
    gflops_all = {f"{f}/{k}": v["gflops"] for f in ("demo", "paper_padded")
                  for k, v in figures[f].get("cpu", {}).items()}
    best_all = max(gflops_all, key=gflops_all.get)
    result = {
        "gflops_best_cpu": gflops_all[best_all],
        "gflops_best_cpu_variant": best_all,
        "gflops_fastest_sample_cpu": max(v["gflops_fastest"] for f in ("demo", "paper_padded")
                                         for v in figures[f].get("cpu", {}).values()),
        "demo_slices_per_s": demo_cpu[best]["slices_per_s"],
        "demo_slices_per_s_tiled": max(v["slices_per_s_tiled"] for v in demo_cpu.values()),
        "gflops_b1": demo_cpu["b1_channels_last"]["gflops"],
        "gflops_predictor_batch": demo_cpu[predictor]["gflops"],
        "predictor_variant": predictor,
        "target_gflops": TARGET_GFLOPS,
        "speedup_vs_before": round(demo_cpu[predictor]["tiles_per_s"] / demo_cpu["b1_before"]["tiles_per_s"], 2),
        "channels_last_vs_contiguous_b1": _ratio(demo_cpu, 1),
        "channels_last_vs_contiguous_b8": _ratio(demo_cpu, 8),
        "demo_gflops_cpu": {k: v["gflops"] for k, v in demo_cpu.items()},
        "paper_s_per_slice_estimate": round(figures["paper_padded"]["gflop_per_slice"] / basis, 2),
        "paper_s_per_slice_tiled_estimate": round(figures["paper_padded"]["gflop_per_slice_tiled"] / basis, 2),
        "paper_estimate_basis": f"{basis} GFLOP/s: {basis_label}",
        # the same from the fastest sample: what the machine gives when nothing else runs on it
        "paper_s_per_slice_estimate_fastest": round(figures["paper_padded"]["gflop_per_slice"] / fastest, 2),
        "models": figures,
        "slice_px": [SLICE, SLICE],
        "overlap": OVERLAP,
        "tiles_per_sample": TILES_PER_SAMPLE,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "devices": [d.type for d in devices],
    }
    if "cuda" in figures["demo"]:
        result["gpu"] = torch.cuda.get_device_name(0)
        result["gflops_best_cuda_fp16"] = max(v["gflops"] for f in ("demo", "paper_padded")
                                              for v in figures[f]["cuda"].values())
    return result


def _cuda_result(figures: dict, quick: bool) -> dict:
    """The figures of a GPU-only run (``--device cuda``): GFLOP/s and slices/s per variant under fp16."""
    for fig in figures.values():
        for key in ("_flops_tile", "_flops_slice", "_flops_slice_tiled"):
            fig.pop(key, None)
    demo = figures["demo"]["cuda"]
    best = max(demo, key=lambda k: demo[k]["gflops"])
    return {"gpu": torch.cuda.get_device_name(0), "quick": quick,
            "gflops_best_cuda_fp16": max(v["gflops"] for f in ("demo", "paper_padded") for v in figures[f]["cuda"].values()),
            "cuda_demo_slices_per_s": demo[best]["slices_per_s"],
            "cuda_demo_slices_per_s_tiled": demo[best]["slices_per_s_tiled"],
            "demo_best_variant": best, "models": figures, "devices": ["cuda"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiles of 128, 3 repeats, paper-size FLOPs counted only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cuda: time the GPU only")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, device=args.device), indent=2))


if __name__ == "__main__":
    main()
