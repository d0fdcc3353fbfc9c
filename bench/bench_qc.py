"""Benchmark: does the review list put the bad segmentations first? Ours vs the naive baseline, one run.

A model is trained for a fixed number of optimizer steps on the real abdominal CT of
``totalsegmentator-example`` (liver, spleen, both kidneys; as :mod:`bench.bench_realdata` does,
with its helpers), then ``unet-pipeline predict`` segments realistic degradations of that scan
(noise, blur, contrast phase, another scanner's HU profile, metal-like streaks, truncated field
of view, thick and thin slices, cropped body regions, and combinations; :data:`VARIANTS`) and the
other scanner's DICOM series ``dcmqi-ct-3slice`` (liver only: its reference has no other class)
and another body region, the extremity CT ``sts-001-ct-rtstruct`` (none of the four organs is
there: a class segmented in it has true Dice 0; issue #20, part 3).
Each (case, class) with a reference gets its true Dice; the review list (``review.csv``, ranked
over all these cases) is scored against it:

* Spearman correlation between ``predicted_dice`` and the true Dice, over all rows and within each
  class (the mean of the per-class figures: the classes differ in Dice, so the whole list's
  figure rewards ranking classes as much as cases);
* of the rows with true Dice < :data:`BAD_DICE`, the share in the first 20 % of the review list
  (when more than 20 % of the rows are bad this cannot reach 100 %: ``recall_at_n_bad``, the share
  of them among the first as many rows as there are bad ones, is printed too).

The baseline in the same run: the mean maximum softmax probability in the predicted structure
(``mean_maxprob`` of the same rows), ranked lowest first. Rows where a value is undefined (nothing
segmented) are left out of that side's Spearman and ranked last. Targets: Spearman >= 0.7 and
>= 80 % of the bad rows in the top 20 %, ahead of the baseline on both.

Leakage, and how the figures are split: with one labelled scan there is no validation case, so
training fits the calibration on degraded copies of the training scan itself, and some of those
degradations (noise, in-plane blur, HU shifts: :data:`unet_pipeline.quality.fit.DEGRADATIONS`)
are of the same kinds as variants here (noise, blur, another scanner's HU profile). Every figure
is therefore also given apart for the variants of kinds the calibration saw (``seen``:
:data:`SEEN_KINDS`) and for the others (``unseen``: contrast phase, streaks, field of view, slice
thickness, body region, their combinations, the other scanner's series, the extremity CT), under
``by_degradation_group``; a choice of signals or fit should be judged on ``unseen``.

Run ``python bench/bench_qc.py [--quick] [--steps N] [--seed S | --seeds 0,1,2,3,4]`` (default 600
optimizer steps of 8 patches, quick 250: a fixed amount of training, so a busy machine takes longer
but trains the same model; ``--seeds`` trains one model per seed and tallies them, :func:`run_seeds`:
one seed can tie or lose by a row that lies at the 0.7 line); needs ``../shared/data``. Prints a JSON dict with ``times`` (seconds per stage).
Training is most of the time (measured on 2 busy cores: 1,494 s of training, then 401 s to
segment the 25 cases, in two ``predict`` processes). To iterate on the review list without it, ``--cache DIR`` keeps the
model and its predictions in ``DIR`` (one subfolder per steps, seed and variants) and reuses
them; ``--refit`` then recomputes the model's review record (the calibration) with the current
code from the cached model (about 2.5 CPU minutes: the training scan's 9 degraded copies are
segmented again)
and rebuilds the list from the signals the sidecars hold; ``--repredict`` segments the variants
again (when the signals themselves change).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_realdata import CLASSES, DATA, cli, training_scan  # noqa: E402

__all__ = ["run", "run_seeds", "check", "VARIANTS", "SEEN_KINDS", "evaluate_ranking", "variant_group"]

FULL_STEPS = 600
QUICK_STEPS = 250
BAD_DICE = 0.7
TOP_SHARE = 0.2
TARGET_SPEARMAN = 0.7
TARGET_BAD_IN_TOP = 0.8
NAMES = {v: n for v, (n, _) in CLASSES.items()}


def _noise(sigma: float) -> Callable:
    def f(hu, label, affine, rng):
        return hu + rng.normal(0.0, sigma, hu.shape), label, affine
    return f


def _blur(sigma_px: float) -> Callable:
    def f(hu, label, affine, rng):
        from scipy import ndimage

        return ndimage.gaussian_filter(hu, (sigma_px, sigma_px, 0.0)), label, affine
    return f


def _phase(delta_hu: float) -> Callable:
    """Contrast phase: the organs' HU raised by ``delta_hu`` (each organ by 80-120 % of it)."""
    def f(hu, label, affine, rng):
        out = hu.copy()
        for value in NAMES:
            out[label == value] += delta_hu * rng.uniform(0.8, 1.2)
        return out, label, affine
    return f


def _scanner(scale: float, offset: float) -> Callable:
    """Another scanner's HU profile: soft tissue scaled about -1000 HU and offset."""
    def f(hu, label, affine, rng):
        return (hu + 1000.0) * scale - 1000.0 + offset, label, affine
    return f


def _streaks(amplitude: float, n_lines: int = 6) -> Callable:
    """Metal-like streaks: a 3000 HU spot in the body and bright/dark lines through it, every slice."""
    def f(hu, label, affine, rng):
        nx, ny = hu.shape[:2]
        cx, cy = nx * rng.uniform(0.4, 0.6), ny * rng.uniform(0.45, 0.6)
        x, y = np.meshgrid(np.arange(nx) - cx, np.arange(ny) - cy, indexing="ij")
        pattern = np.zeros((nx, ny))
        for m in range(n_lines):
            theta = np.pi * m / n_lines + rng.uniform(0, 0.2)
            dist = np.abs(x * np.sin(theta) - y * np.cos(theta))
            pattern += (1 if m % 2 else -1) * np.exp(-0.5 * dist ** 2) / (1.0 + np.hypot(x, y) / 20.0)
        pattern[np.hypot(x, y) < 2.0] = 3000.0 / amplitude
        return hu + amplitude * pattern[:, :, None], label, affine
    return f


def _truncate(share: float) -> Callable:
    """Truncated field of view: ``share`` of the columns cut from each side along x (reference cut too)."""
    def f(hu, label, affine, rng):
        cut = int(round(share * hu.shape[0]))
        out = affine.copy()
        out[:3, 3] += affine[:3, 0] * cut
        return hu[cut:hu.shape[0] - cut], label[cut:label.shape[0] - cut], out
    return f


def _thick(hu, label, affine, rng):
    """6 mm slices: a (1/4, 1/2, 1/4) slab average centred on every second slice."""
    pad = np.concatenate([hu[:, :, :1], hu, hu[:, :, -1:]], axis=2)
    slab = 0.25 * pad[:, :, :-2] + 0.5 * pad[:, :, 1:-1] + 0.25 * pad[:, :, 2:]
    out = affine.copy()
    out[:3, 2] *= 2
    return slab[:, :, ::2], label[:, :, ::2], out


def _thin(hu, label, affine, rng):
    """1.5 mm slices: linear interpolation between neighbours (labels: the nearer slice)."""
    n = hu.shape[2]
    mid = 0.5 * (hu[:, :, :-1] + hu[:, :, 1:])
    image = np.empty(hu.shape[:2] + (2 * n - 1,), np.float64)
    image[:, :, ::2], image[:, :, 1::2] = hu, mid
    lab = np.repeat(label, 2, axis=2)[:, :, :2 * n - 1]
    out = affine.copy()
    out[:3, 2] /= 2
    return image, lab, out


def _crop_z(z0: int, z1: int) -> Callable:
    """A cropped body region: slices ``z0 .. z1 - 1`` only."""
    def f(hu, label, affine, rng):
        out = affine.copy()
        out[:3, 3] += affine[:3, 2] * z0
        return hu[:, :, z0:z1], label[:, :, z0:z1], out
    return f


def _chain(*steps: Callable) -> Callable:
    def f(hu, label, affine, rng):
        for step in steps:
            hu, label, affine = step(hu, label, affine, rng)
        return hu, label, affine
    return f


#: name -> degradation of the training scan ``(hu (x, y, z) float, label, affine, rng) -> the same``.
VARIANTS: dict[str, Callable] = {
    "clean": _noise(0.0), "noise_20hu": _noise(20), "noise_60hu": _noise(60), "noise_120hu": _noise(120),
    "noise_250hu": _noise(250), "blur_1px": _blur(1.0), "blur_2px": _blur(2.0), "blur_3px": _blur(3.0),
    "phase_plus40hu": _phase(40), "phase_plus90hu": _phase(90), "phase_plus150hu": _phase(150),
    "scanner_x1.08_plus40hu": _scanner(1.08, 40), "scanner_x0.92_minus50hu": _scanner(0.92, -50),
    "streaks_300hu": _streaks(300), "streaks_800hu": _streaks(800), "fov_cut_15pct": _truncate(0.15),
    "fov_cut_25pct": _truncate(0.25), "slices_6mm": _thick, "slices_1.5mm": _thin,
    "region_upper_7_slices": _crop_z(23, 30), "region_lower_12_slices": _crop_z(0, 12),
    "noise_60hu_blur_1px": _chain(_noise(60), _blur(1.0)), "phase_plus90hu_noise_60hu": _chain(_phase(90), _noise(60)),
    "scanner_plus40hu_streaks_300hu": _chain(_scanner(1.0, 40), _streaks(300)),
}


#: Variants whose kind of degradation training's calibration also applies to its fitting cases
#: (:data:`unet_pipeline.quality.fit.DEGRADATIONS`: noise, in-plane blur, a shift of every HU, and
#: noise with blur); the bench reports its figures on these and on the others apart, since a
#: calibration fitted on degraded copies of the same scan has seen the former kinds.
SEEN_KINDS = ("clean", "noise_", "blur_", "scanner_x", "noise_60hu_blur_1px")


def variant_group(case: str) -> str:
    """``"seen"`` for a variant of a kind the calibration was fitted on (:data:`SEEN_KINDS`),
    ``"unseen"`` for the others (contrast phase, streaks, field of view, slice thickness, body
    region, their combinations, and the other scanner's series)."""
    return "seen" if case in VARIANTS and case.startswith(SEEN_KINDS) else "unseen"

def _write_cases(tmp: Path, names: list[str], seed: int = 0) -> dict:
    """The training scan (image, label) and each variant with its reference, as NIfTI files."""
    import nibabel as nib

    img, hu_int, label = training_scan()
    hu = hu_int.astype(np.float64)
    paths = {"train_image": tmp / "train" / "ts.nii.gz", "train_label": tmp / "train_labels" / "ts.nii.gz"}
    cases = {}
    for key, array in (("train_image", hu_int), ("train_label", label)):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, img.affine), str(paths[key]))
    (tmp / "tests").mkdir(exist_ok=True)
    (tmp / "refs").mkdir(exist_ok=True)
    for i, name in enumerate(names):
        image, ref, affine = VARIANTS[name](hu, label, np.asarray(img.affine, float), np.random.default_rng(seed + i))
        image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), str(tmp / "tests" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(np.ascontiguousarray(ref, np.uint8), affine), str(tmp / "refs" / f"{name}.nii.gz"))
        cases[name] = tmp / "refs" / f"{name}.nii.gz"
    return {"paths": paths, "refs": cases}


def _dcmqi_reference(tmp: Path) -> Path:
    """The dcmqi liver (value 1) on the DICOM series' grid, as NIfTI."""
    import nibabel as nib

    from unet_pipeline.io.images import load_image, read_voxels

    dcm = load_image(DATA / "dcmqi-ct-3slice" / "dicom")
    ref = read_voxels(load_image(DATA / "dcmqi-ct-3slice" / "liver_spine_seg.nrrd"), "liver_spine_seg.nrrd")
    path = tmp / "refs" / "dcmqi.nii.gz"
    nib.save(nib.Nifti1Image((ref == 1).astype(np.uint8), dcm.affine), str(path))
    return path


def _empty_reference(tmp: Path) -> Path:
    """An empty mask on the grid of the extremity CT ``sts-001-ct-rtstruct``: none of the abdominal
    classes is in it, so every voxel segmented there is wrong (true Dice 0)."""
    import nibabel as nib

    from unet_pipeline.io.images import load_image

    sts = load_image(DATA / "sts-001-ct-rtstruct" / "dicom")
    path = tmp / "refs" / "other_region.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(sts.shape[:3], np.uint8), sts.affine), str(path))
    return path


def _true_dice(pred_path: Path, ref_path: Path, classes: dict[int, str]) -> dict[str, float | None]:
    """Dice per class; None where the reference and the prediction are both empty (nothing to score)."""
    import nibabel as nib

    pred = np.asarray(nib.load(str(pred_path)).dataobj)
    ref = np.asarray(nib.load(str(ref_path)).dataobj)
    if pred.shape != ref.shape:
        raise AssertionError(f"{pred_path} {pred.shape} is not on the grid of {ref_path} {ref.shape}")
    out = {}
    for value, name in classes.items():
        p, r = pred == value, ref == value
        n = int(p.sum()) + int(r.sum())
        out[name] = None if n == 0 else round(2.0 * float((p & r).sum()) / n, 4)
    return out


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def evaluate_ranking(rows: list[dict], score_key: str, *, bad: float = BAD_DICE, top: float = TOP_SHARE) -> dict:
    """Spearman of ``score_key`` against ``true_dice`` and the bad rows' share in the first ``top`` of the
    list ordered by ``score_key`` ascending (undefined scores last). ``rows``: dicts with
    ``true_dice`` (float) and ``score_key`` (float or NaN), only rows with a true Dice."""
    scores = np.array([_num(r[score_key]) for r in rows])
    truth = np.array([float(r["true_dice"]) for r in rows])
    order = sorted(range(len(rows)), key=lambda i: (not math.isfinite(scores[i]), scores[i] if math.isfinite(scores[i])
                                                    else 0.0, i))
    n_top = int(math.ceil(top * len(rows)))
    bad_rows = {i for i in range(len(rows)) if truth[i] < bad}
    caught = len(bad_rows & set(order[:n_top]))
    ok = np.isfinite(scores)
    by_class = {}
    for name in sorted({str(r.get("class")) for r in rows}):
        mine = np.array([str(r.get("class")) == name for r in rows]) & ok
        by_class[name] = _spearman(scores[mine], truth[mine])
    within = [v for v in by_class.values() if v is not None]
    in_first = len(bad_rows & set(order[:len(bad_rows)]))
    return {"spearman": _spearman(scores[ok], truth[ok]), "n_scored": int(ok.sum()),
            "spearman_by_class": by_class,
            "spearman_within_class": round(float(np.mean(within)), 4) if within else None,
            "n_top": n_top, "bad_in_top": caught, "n_bad": len(bad_rows),
            "bad_in_top_share": round(caught / len(bad_rows), 4) if bad_rows else None,
            "recall_at_n_bad": round(in_first / len(bad_rows), 4) if bad_rows else None}


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho rounded to 4 places; None with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def _train(tmp: Path, paths: dict, overrides: dict) -> tuple[Path, float]:
    """Train on the scan with the CLI (schema defaults, no validation case: one labelled scan)."""
    import yaml

    config = {"cohort": {"label_names": NAMES}, "split": {"test_fraction": 0.0, "val_fraction": 0.0, "seed": 0}}
    for section, values in overrides.items():
        config[section] = {**(config.get(section) or {}), **values}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp / "train.csv").write_text(f"case_id,image,label\nts,{paths['train_image']},{paths['train_label']}\n",
                                   encoding="utf-8")
    t0 = time.perf_counter()
    cli(["train", "--manifest", str(tmp / "train.csv"), "-c", str(tmp / "config.yaml"), "-o", str(tmp / "model"),
         "--work-dir", str(tmp / "work")])
    return tmp / "model", time.perf_counter() - t0


def _scored_rows(tmp: Path, truth_of: dict[str, tuple[Path, Path, dict]], review: dict | None = None) -> list[dict]:
    """The cohort's review list (both output folders ranked together) with each row's true Dice.

    ``truth_of``: case id -> (segmentation, reference, classes scored). ``review``: a model's
    review record to rebuild every row with from the signals the sidecars hold (None: the rows
    prediction wrote, ranked by ``stages.review_list`` as the workflow does)."""
    from unet_pipeline import stages
    from unet_pipeline.quality.review import case_review, rank_rows, read_review_csv, write_review_csv

    sidecars = [p for out in ("out", "out_dcmqi", "out_region") for p in sorted((tmp / out).glob("*.json"))]
    if review is None:
        stages.review_list(sidecars, tmp / "review.csv")
    else:
        rows = []
        for path in sidecars:
            side = json.loads(path.read_text(encoding="utf-8"))
            rows += case_review(side["case"], side["review"]["signals"], review)
        write_review_csv(tmp / "review.csv", rank_rows(rows))
    truth = {case: _true_dice(pred, ref, classes) for case, (pred, ref, classes) in truth_of.items()}
    rows = []
    for r in read_review_csv(tmp / "review.csv"):
        dice = truth.get(r["case"], {}).get(r["class"])
        if dice is not None:
            numbers = {k: (float(r[k]) if r[k] != "" else None) for k in ("predicted_dice", "mean_maxprob")}
            rows.append({**r, **numbers, "review_rank": int(r["review_rank"]), "true_dice": dice})
    return rows


def run(quick: bool = False, steps: int | None = None, variants: list[str] | None = None,
        overrides: dict | None = None, *, seed: int = 0, cache: str | Path | None = None, refit: bool = False,
        repredict: bool = False) -> dict:
    """Train ``steps`` optimizer steps (default 600, quick 250) with training seed ``seed``, segment
    every variant and the dcmqi series, and score the review list and the baseline.

    ``cache``: a folder kept between runs (one subfolder per steps, seed and variants): a finished
    model and its predictions are reused instead of trained and predicted again. ``refit``: the
    model's ``review`` record (training distribution and calibration) is computed again with the
    current code from the cached model and training case, and the review list is rebuilt from the
    stored signals with it (no training, no prediction). ``repredict``: the variants are segmented
    again with the cached model (needed when the signals themselves change).
    """
    if not (DATA / "totalsegmentator-example").is_dir():
        return {"skipped": f"no real data at {DATA}"}
    steps = int(steps if steps is not None else (QUICK_STEPS if quick else FULL_STEPS))
    names = list(variants or VARIANTS)
    overrides = overrides or {"training": {"epochs": max(1, steps // 50), "iterations_per_epoch": min(steps, 50),
                                           "max_minutes": 0}}
    overrides = {**overrides, "training": {**overrides.get("training", {}), "seed": int(seed)}}
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="bench_qc_") as tmp:
            return _run_in(Path(tmp), names, overrides, steps=steps, refit=False, repredict=False)
    key = f"steps{steps}_seed{seed}_{len(names)}variants_" + _digest(json.dumps([names, overrides], sort_keys=True))
    folder = Path(cache) / key
    folder.mkdir(parents=True, exist_ok=True)
    return _run_in(folder, names, overrides, steps=steps, refit=refit, repredict=repredict)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _run_in(tmp: Path, names: list[str], overrides: dict, *, steps: int, refit: bool, repredict: bool) -> dict:
    """:func:`run` in the folder ``tmp``, reusing a model and predictions found there."""
    import shutil

    times = {}
    t0 = time.perf_counter()
    made = _write_cases(tmp, names)
    times["write_cases_s"] = time.perf_counter() - t0
    model = tmp / "model"
    trained = not (model / "model.json").exists()
    if trained:  # a half-finished run starts again from nothing (its checkpoint may hold other settings)
        for stale in (model, tmp / "work", tmp / "out", tmp / "out_dcmqi"):
            shutil.rmtree(stale, ignore_errors=True)
        model, times["train_s"] = _train(tmp, made["paths"], overrides)
    if refit:
        t0 = time.perf_counter()
        _refit_review(tmp)
        times["refit_s"] = time.perf_counter() - t0
    outs = (tmp / "out", tmp / "out_dcmqi", tmp / "out_region")
    done = all((outs[0] / f"{n}.json").exists() for n in names) and all(any(o.glob("*.json")) for o in outs[1:])
    if trained or repredict or not done:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        cli(["predict", "-m", str(model), "-i", str(tmp / "tests"), "-o", str(outs[0])])
        times["predict_variants_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cli(["predict", "-m", str(model), "-i", str(DATA / "dcmqi-ct-3slice" / "dicom"), "-o", str(outs[1])])
        times["predict_dcmqi_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        region = tmp / "other_region"  # the case is named after its folder: "dicom" is the dcmqi series'
        if not region.exists():
            region.symlink_to(DATA / "sts-001-ct-rtstruct" / "dicom", target_is_directory=True)
        cli(["predict", "-m", str(model), "-i", str(region), "-o", str(outs[2])])
        times["predict_other_region_s"] = time.perf_counter() - t0
    truth_of = {name: (outs[0] / f"{name}.nii.gz", ref, NAMES) for name, ref in made["refs"].items()}
    dcmqi_seg = next(outs[1].glob("*.nii.gz"))
    truth_of[dcmqi_seg.name[:-7]] = (dcmqi_seg, _dcmqi_reference(tmp), {1: "liver"})
    region_seg = next(outs[2].glob("*.nii.gz"))
    truth_of[region_seg.name[:-7]] = (region_seg, _empty_reference(tmp), NAMES)
    review = json.loads((model / "model.json").read_text(encoding="utf-8")).get("review") or {}
    t0 = time.perf_counter()
    rows = _scored_rows(tmp, truth_of, review if refit else None)
    times["review_and_score_s"] = time.perf_counter() - t0
    train_log = _train_log_seconds(model)
    return _summary(rows, review, steps=steps, times={**times, **train_log}, n_cases=len(truth_of),
                    cached={"model": not trained, "predictions": not (trained or repredict or not done),
                            "refit": refit, "folder": str(tmp)})


def _train_log_seconds(model: Path) -> dict:
    """Where training's time went, from ``model.json`` (minutes of the loop) and the epochs' log."""
    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    return {"training_loop_s": round(60.0 * float(meta.get("training_minutes") or 0.0), 1),
            "steps_run": meta.get("steps_run")}


def _refit_review(tmp: Path) -> None:
    """Recompute ``model.json``'s ``review`` with the current code from the cached model and its
    preprocessed training case (what training's export does, without training)."""
    import torch

    from unet_pipeline.model.card import read_model_card, write_model_card
    from unet_pipeline.model.folder import load_model
    from unet_pipeline.model.tiling import iter_volume_probabilities
    from unet_pipeline.quality.fit import model_review
    from unet_pipeline.train.sampler import load_training_cases

    model, meta = load_model(tmp / "model")
    card = read_model_card(tmp / "model")
    plan = meta["plan"]
    cases = load_training_cases([(tmp / "work" / "preprocessed" / c, tmp / "work" / "slices" / c)
                                 for c in meta["train_cases"]], in_memory=True)
    arch = meta["architecture"]
    margin = 0 if arch.get("padded", True) else model.margin()

    def predict(image, pad_value):
        return iter_volume_probabilities(model, image, in_slices=card.in_channels, num_classes=len(card.labels) + 1,
                                         patch_size=plan["patch_size"], overlap=0.25, batch_size=8, device="cpu",
                                         margin=margin, pad_value=pad_value)

    fallback = (float(plan.get("median_slice_thickness_mm") or 1.0), *plan["target_spacing_mm"])
    spacing = {c.case_id: c.spacing_mm or fallback for c in cases}
    with torch.inference_mode():
        review = model_review(predict, model, tmp / "model", cases, [], class_names=list(card.labels.values()),
                              spacing_of=spacing.__getitem__, intensity=plan["intensity"],
                              postprocess=(meta.get("postprocess_choice") or {}).get("config"))
    write_model_card(tmp / "model", {**meta, "review": review})


def _summary(rows: list[dict], review: dict, *, steps: int, times: dict, n_cases: int, cached: dict) -> dict:
    ours, base = evaluate_ranking(rows, "predicted_dice"), evaluate_ranking(rows, "mean_maxprob")
    ahead = (ours["spearman"] or -1) > (base["spearman"] or -1) and \
        (ours["bad_in_top_share"] or 0) > (base["bad_in_top_share"] or 0)
    split = {}
    for group in ("seen", "unseen"):
        mine = [r for r in rows if variant_group(str(r["case"])) == group]
        split[group] = {"cases": sorted({str(r["case"]) for r in mine}),
                        "ours": _brief(evaluate_ranking(mine, "predicted_dice")),
                        "baseline_max_softmax": _brief(evaluate_ranking(mine, "mean_maxprob"))}
    return {"steps": steps, "times": {k: round(v, 1) if isinstance(v, float) else v for k, v in times.items()},
            "cached": cached, "n_cases": n_cases, "by_degradation_group": split,
            "n_rows": len(rows), "ours": ours, "baseline_max_softmax": base,
            "spearman": ours["spearman"], "spearman_baseline": base["spearman"],
            "spearman_within_class": ours["spearman_within_class"],
            "spearman_within_class_baseline": base["spearman_within_class"],
            "bad_in_top20": ours["bad_in_top_share"], "bad_in_top20_baseline": base["bad_in_top_share"],
            "recall_at_n_bad": ours["recall_at_n_bad"], "recall_at_n_bad_baseline": base["recall_at_n_bad"],
            "ahead_of_baseline_on_both": ahead, "target_spearman": TARGET_SPEARMAN,
            "target_bad_in_top20": TARGET_BAD_IN_TOP, "calibration": review.get("calibration"),
            "feature_spearman": review.get("feature_spearman"),
            "rows": [{k: r.get(k) for k in ("review_rank", "case", "class", "predicted_dice", "mean_maxprob",
                                            "true_dice", "reason")} for r in rows]}


def _brief(fig: dict) -> dict:
    return {k: fig[k] for k in ("spearman", "spearman_within_class", "bad_in_top", "n_bad", "n_top",
                                "bad_in_top_share", "recall_at_n_bad")}


def run_seeds(seeds: list[int], **kwargs) -> dict:
    """:func:`run` once per training seed (``kwargs`` as for it); per seed the headline figures, and
    over the seeds how many meet the targets and how many are ahead of the baseline on both."""
    per_seed = {}
    for seed in seeds:
        fig = run(seed=seed, **kwargs)
        if "skipped" in fig:
            return fig
        per_seed[str(seed)] = {
            "primary": (fig.get("calibration") or {}).get("features", [None])[0],
            "ours": _brief(fig["ours"]), "baseline_max_softmax": _brief(fig["baseline_max_softmax"]),
            "unseen": fig["by_degradation_group"]["unseen"],
            "ahead_of_baseline_on_both": fig["ahead_of_baseline_on_both"],
            "times": fig["times"]}

    def meets(f: dict) -> bool:
        return (f["spearman"] or -1) >= TARGET_SPEARMAN and (f["bad_in_top_share"] or 0) >= TARGET_BAD_IN_TOP

    figs = per_seed.values()
    return {"seeds": per_seed, "n_seeds": len(per_seed),
            "seeds_meeting_targets": sum(meets(f["ours"]) for f in figs),
            "seeds_meeting_targets_baseline": sum(meets(f["baseline_max_softmax"]) for f in figs),
            "seeds_ahead_on_both": sum(f["ahead_of_baseline_on_both"] for f in figs),
            "seeds_ahead_on_spearman": sum((f["ours"]["spearman"] or -1) > (f["baseline_max_softmax"]["spearman"] or -1)
                                           for f in figs),
            "seeds_behind_on_bad_rows": sum(f["ours"]["bad_in_top"] < f["baseline_max_softmax"]["bad_in_top"]
                                            for f in figs)}


def check(steps: int = 4) -> dict:
    """The plumbing without the budget: a model trained ``steps`` steps, four variants and the dcmqi
    series segmented, the review list scored (no figure is asserted against its target)."""
    return run(variants=["clean", "noise_250hu", "region_upper_7_slices", "slices_6mm"],
               overrides={"training": {"epochs": 1, "iterations_per_epoch": steps, "max_minutes": 0}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} training steps")
    parser.add_argument("--steps", type=int, help=f"training steps (default {FULL_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (config training.seed; default 0)")
    parser.add_argument("--seeds", help="comma-separated training seeds: one model each, figures per seed and tallied "
                                        "(for example 0,1,2,3,4; overrides --seed)")
    parser.add_argument("--cache", help="folder that keeps the model and its predictions between runs")
    parser.add_argument("--refit", action="store_true",
                        help="with --cache: recompute the model's review record (calibration) with the current code")
    parser.add_argument("--repredict", action="store_true", help="with --cache: segment the variants again")
    args = parser.parse_args()
    if (args.refit or args.repredict) and not args.cache:
        parser.error("--refit and --repredict need --cache")
    common = {"quick": args.quick, "steps": args.steps, "cache": args.cache, "refit": args.refit,
              "repredict": args.repredict}
    if args.seeds:
        print(json.dumps(run_seeds([int(x) for x in args.seeds.split(",")], **common), indent=2))
    else:
        print(json.dumps(run(seed=args.seed, **common), indent=2))


if __name__ == "__main__":
    main()
