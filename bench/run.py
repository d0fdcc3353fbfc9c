"""Run every benchmark, print a summary table, write the full figures as JSON.

Usage (repository root, project venv active)::

    python -m bench            # full sizes (512 x 512 x 300 volumes; tens of minutes on 2 cores)
    python -m bench --quick    # small sizes, under 5 minutes on 2 cores
    python -m bench --only metrics elastic --out bench/results.json
    python -m bench --device cuda   # forward, training and prediction on the GPU (slices/s, GFLOP/s,
                                    # the share of training time spent waiting for data)

Each benchmark module ``bench/bench_<name>.py`` has ``run(quick) -> dict`` and can run alone
(``python bench/bench_<name>.py --quick``). The project and the reference library run
alternately in the same process on the same data; the table shows each speed ratio
(reference time / ours: above 1 means we are faster) next to its target.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: name -> (module, headline keys: (label, key in the result, target key or number, "higher"/"lower" is better))
BENCHMARKS: dict[str, tuple[str, list[tuple[str, str, str | float | None]]]] = {
    "elastic": ("bench.bench_elastic", [("elastic deformation vs MONAI Rand2DElasticd (x faster)", "speedup",
                                        "target_speedup")]),
    "postprocess": ("bench.bench_postprocess", [("largest component: MONAI / ours time (scikit-image needed)",
                                                "largest_component_ratio", None),
                                               ("fill holes: MONAI / ours time", "fill_holes_ratio",
                                                None)]),
    "metrics": ("bench.bench_metrics", [("Dice/HD95/ASSD/NSD vs MONAI (x faster)", "speedup", "target_speedup"),
                                        ("largest relative difference to MONAI", "max_relative_difference", 1e-4)]),
    "preprocess": ("bench.bench_preprocess", [("read + preprocess image and label vs MONAI transforms (x faster)",
                                              "speedup", "target_speedup"),
                                             ("label voxels equal to MONAI's (share)", "label_agreement", None)]),
    "inference": ("bench.bench_inference", [("tiled inference vs MONAI sliding_window_inference (x throughput)",
                                            "throughput_ratio", "target_ratio"),
                                           ("the same at the predictor's precision (bfloat16 on CPUs with AMX)",
                                            "throughput_ratio_predictor_precision", "target_ratio"),
                                           ("largest probability difference to MONAI", "max_abs_probability_difference",
                                            1e-4)]),
    "predict": ("bench.bench_predict", [("predict one case end to end vs MONAI pipeline (x faster)", "speedup",
                                        "target_speedup"),
                                       ("peak RSS, ours / MONAI", "memory_ratio", "target_memory_ratio"),
                                       ("predict one case: voxels equal to the MONAI pipeline's (share)",
                                        "voxel_agreement", None)]),
    "training": ("bench.bench_training", [("training loop, slices/s, ours / a MONAI loop (same network and batch)",
                                           "vs_monai", "target_vs_monai"),
                                          ("training loop overhead vs a plain PyTorch loop (share)", "overhead",
                                           "target_overhead"),
                                          ("training loop: share of step time waiting for data", "data_wait_share_ours",
                                           None)]),
    "forward": ("bench.bench_forward", [("forward pass, demo network, CPU GFLOP/s at batch 1", "gflops_b1",
                                         "target_gflops"),
                                        ("forward pass, demo network, CPU GFLOP/s at the predictor's batch (4)",
                                         "gflops_predictor_batch", "target_gflops"),
                                        ("forward pass: predictor's path / the former one (torch InstanceNorm2d, "
                                         "frozen graph), x throughput", "speedup_vs_before", None),
                                        ("forward pass: demo model slices/s (512 x 512, tiles at overlap 0.5)",
                                         "demo_slices_per_s_tiled", None),
                                        ("forward pass: channels-last / contiguous throughput, batch 1",
                                         "channels_last_vs_contiguous_b1", None),
                                        ("forward pass: paper-size U-Net (base 64), estimated s per 512 x 512 slice",
                                         "paper_s_per_slice_estimate", None),
                                        ("forward pass on CUDA: best GFLOP/s (fp16 autocast)", "gflops_best_cuda_fp16",
                                         None),
                                        ("forward pass on CUDA: demo model slices/s (512 x 512, one pass)",
                                         "cuda_demo_slices_per_s", None)]),
    "memory": ("bench.bench_memory", []),
    "realdata": ("bench.bench_realdata", [("real CT: liver Dice on dcmqi-ct-3slice (other scanner), ours", "liver_dice_dcmqi",
                                           "target_liver_dice"),
                                          ("real CT: liver Dice on dcmqi-ct-3slice, MONAI recipe", "liver_dice_dcmqi_monai",
                                           None),
                                          ("real CT: liver Dice, simulated portal-venous phase, ours", "liver_dice_venous",
                                           "target_liver_dice"),
                                          ("real CT: liver Dice, simulated portal-venous phase, MONAI recipe",
                                           "liver_dice_venous_monai", None),
                                          ("real CT: mean Dice of 4 organs, portal-venous phase, ours / MONAI",
                                           "mean_dice_venous", "mean_dice_venous_monai"),
                                          ("real CT: classes where ours trails MONAI", "classes_behind_monai", None),
                                          ("real CT: liver Dice on dcmqi-ct-3slice, nnU-Net v2 (2d)",
                                           "liver_dice_dcmqi_nnunet", None),
                                          ("real CT: liver Dice, simulated portal-venous phase, nnU-Net v2 (2d)",
                                           "liver_dice_venous_nnunet", None),
                                          ("real CT: mean Dice of 4 organs, portal-venous phase, nnU-Net v2 (2d)",
                                           "mean_dice_venous_nnunet", None),
                                          ("real CT: classes where ours trails nnU-Net", "classes_behind_nnunet",
                                           None)]),
    "qc": ("bench.bench_qc", [("review list: Spearman of predicted vs true Dice, ours", "spearman", "target_spearman"),
                              ("review list: Spearman, baseline (mean max-softmax in the structure)",
                               "spearman_baseline", None),
                              ("review list: Spearman within each class (mean), ours / baseline",
                               "spearman_within_class", "spearman_within_class_baseline"),
                              ("review list: share of bad rows (Dice < 0.7) in the top 20 %, ours", "bad_in_top20",
                               "target_bad_in_top20"),
                              ("review list: share of bad rows in the top 20 %, baseline", "bad_in_top20_baseline",
                               None),
                              ("review list: share of bad rows among the first n_bad rows, ours / baseline",
                               "recall_at_n_bad", "recall_at_n_bad_baseline"),
                              ("review list: ahead of the baseline on both", "ahead_of_baseline_on_both", None),
                              ("review list: rows scored (case x class with a reference)", "n_rows", None)]),
    "cohort": ("bench.bench_cohort", []),  # rows from bench_cohort.table: snakemake -n per cohort size and profile
}


#: benchmarks whose ``run`` takes ``device`` (``python -m bench --device cuda`` runs these)
DEVICE_BENCHMARKS = ("forward", "training", "predict")


def _headline(name: str, result: dict) -> list[tuple[str, str, str]]:
    rows = []
    for label, key, target in BENCHMARKS[name][1]:
        value = result.get(key)
        if value is None and key not in result:
            continue  # a figure this run does not produce (a CUDA one on the CPU, or the reverse)
        goal = result.get(target) if isinstance(target, str) else target
        rows.append((label, f"{value}", "" if goal is None else f"{goal}"))
    if name == "cohort":
        from bench.bench_cohort import table

        rows.extend(table(result))
    if name == "memory":
        for size in result.get("sizes", []):
            if "infer" in size:
                n_infer = size["infer"].get("slices", size.get("slices"))
                rows.append((f"inference peak RSS, {n_infer} slices of 512 x 512 (MB)",
                             f"{size['infer']['peak_mb']}", "< 2000"))
            for stage in ("preprocess", "reassemble"):
                fig = size.get(stage, {})
                rows.append((f"{stage} peak RSS, {size.get('slices')} slices (x float32 volume, net)",
                             f"{fig.get('net_ratio')}", f"< {result.get('target_ratio')}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under 5 minutes on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON file for all figures")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="cuda: run the benchmarks that take a device (forward, training, predict) on the GPU")
    args = parser.parse_args(argv)

    import torch

    results: dict = {"quick": args.quick, "python": platform.python_version(), "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "benchmarks": {}}
    table: list[tuple[str, str, str]] = []
    failed = []
    names = args.only or [n for n in BENCHMARKS if args.device != "cuda" or n in DEVICE_BENCHMARKS]
    results["device"] = args.device or "cpu"
    for name in names:
        module = importlib.import_module(BENCHMARKS[name][0])
        start = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            kwargs = {"device": args.device} if args.device and name in DEVICE_BENCHMARKS else {}
            result = module.run(quick=args.quick, **kwargs)
        except Exception:  # one failing benchmark must not hide the others' figures
            failed.append(name)
            results["benchmarks"][name] = {"error": traceback.format_exc()}
            print(traceback.format_exc(), file=sys.stderr)
            continue
        result["wall_s"] = round(time.perf_counter() - start, 1)
        results["benchmarks"][name] = result
        table.extend(_headline(name, result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    width = max((len(r[0]) for r in table), default=10)
    print(f"| {'benchmark'.ljust(width)} | measured | target |")
    print(f"| {'-' * width} | -------- | ------ |")
    for label, value, target in table:
        print(f"| {label.ljust(width)} | {value} | {target} |")
    print(f"\nall figures: {args.out}")
    if failed:
        sys.exit(f"benchmark(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
