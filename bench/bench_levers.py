"""Benchmark: which accuracy levers win on real CT at an equal training budget, over seeds.

The training scan and the two real tests of :mod:`bench.bench_realdata` (``dcmqi_liver``: another
scanner's liver; ``ts_venous``: a simulated portal-venous phase, four classes). Every variant trains
the same number of optimizer steps (``--steps``, the budget: a step count, not wall-clock time, so a
busy machine takes longer but trains the same models) with ``unet-pipeline train`` and the schema's
defaults plus the variant's overrides, then ``unet-pipeline predict``; Dice per class from
:func:`bench.bench_realdata.score`. Variants (:data:`VARIANTS`):

* ``default``: the schema's recipe;
* ``2.5d``: ``model.in_channels: 3`` (the slice and its two neighbours as channels);
* ``mirror``: mirroring in training (``augment.mirror_p: 0.5`` on both in-plane axes, the kidneys
  swapped on a left-right flip), predicted without test-time augmentation, and ``mirror+tta``: the
  same model predicted with ``--tta`` (the flips of training averaged);
* ``scale_wide``: scaling augmentation as nnU-Net's (p 0.2 -> 0.3, range 0.85..1.15 -> 0.7..1.4);
* ``ensemble2``: two models of half the steps each (two seeds), predicted together (the
  ensemble of folds at the same total budget: with one training scan there are no patient folds).

Run ``python bench/bench_levers.py [--steps N] [--seeds 0 1] [--only NAME ...] [--threads 1]``; prints one JSON
line per trained variant as it finishes and a summary (mean over seeds) at the end. Needs
``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_realdata import CLASSES, DATA, _write_inputs, cli, score  # noqa: E402

__all__ = ["VARIANTS", "run"]

_MIRROR = {"augment": {"mirror_p": 0.5, "mirror_axes": ["x", "y"], "lr_label_pairs": [[3, 4]]}}
#: name -> (config overrides, number of models the budget is shared by, predictions: name -> extra predict args)
VARIANTS: dict[str, tuple[dict, int, dict[str, list[str]]]] = {
    "default": ({}, 1, {"default": []}),
    "mirror": (_MIRROR, 1, {"mirror": ["--no-tta"], "mirror+tta": ["--tta"]}),
    "2.5d": ({"model": {"in_channels": 3}}, 1, {"2.5d": []}),
    "ensemble2": ({}, 2, {"ensemble2": []}),
    "scale_wide": ({"augment": {"scale_p": 0.3, "scale_range": [0.7, 1.4]}}, 1, {"scale_wide": []}),
}


def _train(tmp: Path, name: str, paths: dict, overrides: dict, steps: int, seed: int) -> tuple[Path, float]:
    import yaml

    config = {"cohort": {"label_names": {v: n for v, (n, _) in CLASSES.items()}},
              "split": {"test_fraction": 0.0, "val_fraction": 0.0, "seed": 0},
              "training": {"epochs": 1, "iterations_per_epoch": steps, "max_minutes": 0, "seed": seed}}
    for section, values in overrides.items():
        config[section] = {**(config.get(section) or {}), **values}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    manifest = tmp / "train.csv"
    manifest.write_text(f"case_id,image,label\nts,{paths['train_image']},{paths['train_label']}\n", encoding="utf-8")
    model = tmp / f"{name}_model"
    t0 = time.perf_counter()
    cli(["train", "--manifest", str(manifest), "-c", str(tmp / f"{name}.yaml"), "-o", str(model),
         "--work-dir", str(tmp / f"{name}_work")])
    return model, time.perf_counter() - t0


def _scores(tmp: Path, name: str, models: list[Path], paths: dict, extra: list[str]) -> dict:
    out = tmp / f"pred_{name}"
    cli(["predict", "-m", *map(str, models), "-i", str(paths["dcmqi_dicom"]), "-o", str(out / "dcmqi"), *extra])
    cli(["predict", "-m", *map(str, models), "-i", str(paths["venous_image"]), "-o", str(out / "venous"), *extra])
    dcmqi = score(next((out / "dcmqi").glob("*.nii.gz")), paths["dcmqi_ref"], {1: "liver"})
    venous = score(out / "venous" / "ts_venous.nii.gz", paths["venous_ref"], {v: n for v, (n, _) in CLASSES.items()})
    dice = {"dcmqi_liver": dcmqi["liver"]["dice"], **{f"venous_{k}": v["dice"] for k, v in venous.items()}}
    dice["venous_mean"] = round(float(np.mean([v["dice"] for v in venous.values()])), 4)
    return dice


def run(steps: int, seeds: list[int], only: list[str] | None = None) -> dict:
    if not (DATA / "totalsegmentator-example").is_dir():
        return {"skipped": f"no real data at {DATA}"}
    rows: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_levers_") as tmp:
        tmp = Path(tmp)
        paths = _write_inputs(tmp)["paths"]
        for seed in seeds:
            for variant in only or VARIANTS:
                overrides, n_models, predictions = VARIANTS[variant]
                trained = [_train(tmp, f"{variant}_s{seed}_m{m}", paths, overrides, steps // n_models, seed + 100 * m)
                           for m in range(n_models)]
                for name, extra in predictions.items():
                    dice = _scores(tmp, f"{name}_s{seed}", [m for m, _ in trained], paths, extra)
                    dice["train_s"] = round(sum(s for _, s in trained), 1)
                    rows.setdefault(name, {})[seed] = dice
                    print(json.dumps({"variant": name, "seed": seed, "steps": steps, **dice}), flush=True)
    summary = {}
    for name, by_seed in rows.items():
        keys = [k for k in next(iter(by_seed.values())) if k != "train_s"]
        summary[name] = {k: {"mean": round(float(np.mean([r[k] for r in by_seed.values()])), 4),
                             "spread": round(float(np.ptp([r[k] for r in by_seed.values()])), 4)} for k in keys}
    return {"steps": steps, "seeds": seeds, "per_seed": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1250, help="optimizer steps per variant (default 1250)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="train only these variants")
    parser.add_argument("--threads", type=int, help="torch threads of every child process (OMP_NUM_THREADS); "
                        "1 lets two runs share a busy machine without spinning")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    print(json.dumps(run(args.steps, args.seeds, args.only), indent=2))


if __name__ == "__main__":
    main()
