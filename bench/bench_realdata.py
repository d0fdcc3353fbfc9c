"""Benchmark: generalisation to real CT never seen in training, ours vs a plain MONAI 2D U-Net and
nnU-Net v2's 2d configuration, all given the same wall-clock training budget in the same run.

Training data: ``totalsegmentator-example/example_ct_sm`` (abdominal CT, 3 mm isotropic,
non-contrast, TotalSegmentator labels) with four classes: liver, spleen, kidney_right,
kidney_left (every other structure is background). Tests:

* ``dcmqi_liver``: the liver of ``dcmqi-ct-3slice`` (another scanner, 0.81 mm pixels, 1 mm slices,
  a DICOM series; reference ``liver_spine_seg.nrrd`` value 1);
* ``ts_venous``: the training scan with the HU of each organ raised by 40-60 HU (a simulated
  portal-venous phase), all four classes;
* absent classes (issue #23), where a class the model knows is not in the scan and every voxel of
  it is a false positive (:func:`fp_volume_ml`, mL): ``ts_cropped``, the training scan cropped
  above the top of both kidneys (kidneys absent; Dice of liver and spleen, still present), and
  ``sts_extremity``, ``sts-001-ct-rtstruct``'s extremity soft-tissue CT (a DICOM series, another
  body region: all four organs absent).

Ours: ``unet-pipeline train`` with the schema's defaults (what a user's cohort gets) and
``training.max_minutes`` = the budget, then ``unet-pipeline predict`` (the DICOM folder itself for
the dcmqi and sts tests). MONAI: ``Orientationd(RAS) -> Spacingd`` to the same in-plane spacing ->
``ScaleIntensityRanged`` with the abdominal window of MONAI's tutorials (-175..250 HU) ->
``RandCropByPosNegLabeld`` 2-D patches with flips, rotations and intensity shifts, a
``monai.networks.nets.UNet`` (16..256 channels, residual units, instance norm), ``DiceCELoss``,
AdamW, for the same wall-clock time; ``sliding_window_inference`` on each slice and ``Invertd``
back to the input grid. nnU-Net v2 (``nnunetv2`` from PyPI, a benchmark-only extra in its own
venv made by ``bench/setup_nnunet.sh``; :mod:`bench.realdata_nnunet` and, in that venv,
:mod:`bench.nnunet_child`): its fingerprint, default planner and preprocessing of the ``2d``
configuration, its trainer, augmentation and data loader, fold ``all``, on the CPU, for the same
wall-clock time; its predictor (tile step 0.5, Gaussian, test-time mirroring). Deviations from its
defaults: training stops when the budget is spent (checked before every iteration; one epoch of
250 iterations may outlast a CPU budget) and the poly learning-rate schedule runs over the
budget's seconds instead of 1000 epochs; the per-epoch validation pass (the training case itself
under fold ``all``; logging and the "best" checkpoint only) is skipped; one data-augmentation
worker process (``nnUNet_n_proc_DA=1``, ``--nnunet-da N`` for more; its default is the number of
cores, 2 here, beside the training process); preprocessing with 2 processes. nnU-Net does not reorient: its training case
and the test scans are written in RAS (the training scan's storage order) and its predictions
reoriented back onto each reference's grid, axes permuted and flipped, nothing resampled. Its
``plan_s`` (fingerprint, planning, preprocessing) and ``setup_s`` (network, data loaders) are
outside the budget, as our preprocessing is; ``steps`` counts its iterations (batches).
Metrics: Dice and HD95 (mm) per class on the input grid, computed by
:mod:`unet_pipeline.evaluate.metrics` for all three; ``absent_fp_ml``: per absent-class test and absent
class, the volume painted (mL), for all three. The headline has liver Dice of both tests and
mean Dice of the venous one for each recipe, and ``classes_behind_monai`` /
``classes_behind_nnunet``: the classes where ours has the lower Dice. Ours also reports its review
list (``review``, per test and segmented class, from ``review.csv``): ``absent_flagged``, how
many of the absent classes it segmented anyway the list calls probably absent, and
``present_flagged``, how many present classes it wrongly calls so (issue #20, part 3).

Run ``python bench/bench_realdata.py [--quick] [--minutes M] [--nnunet-python PATH]`` (default 10
minutes a side, quick 1.5); needs ``../shared/data`` beside the repository. nnU-Net's Python:
``--nnunet-python``, else ``$UNET_BENCH_NNUNET_PYTHON``, else ``../nnunet-venv/bin/python``
beside the repository; when it is absent the ``nnunet`` entry says ``skipped`` and the rest runs.
Its ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` lie in the run's temporary
directory. Prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["run", "check", "DATA", "CLASSES", "cli", "score", "fp_volume_ml", "training_scan", "ABSENT"]

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: class value in our files -> (name, TotalSegmentator value)
CLASSES = {1: ("liver", 5), 2: ("spleen", 1), 3: ("kidney_right", 2), 4: ("kidney_left", 3)}
TARGET_DICE = 0.90
#: absent-class tests -> the classes of CLASSES absent from the scan (every voxel of them is a false positive)
ABSENT = {"ts_cropped": ("kidney_right", "kidney_left"), "sts_extremity": tuple(n for n, _ in CLASSES.values())}
FULL_MINUTES = 10.0
QUICK_MINUTES = 1.5


def training_scan():
    """``(NIfTI image, HU int16 (x, y, z), label uint8 with the values of CLASSES)`` of the training scan."""
    import nibabel as nib

    ts = DATA / "totalsegmentator-example"
    img = nib.load(str(ts / "example_ct_sm.nii.gz"))
    seg = np.asarray(nib.load(str(ts / "example_seg.nii.gz")).dataobj)
    label = np.zeros(seg.shape, np.uint8)
    for value, (_, ts_value) in CLASSES.items():
        label[seg == ts_value] = value
    return img, np.asarray(img.dataobj).astype(np.int16), label


def _write_inputs(tmp: Path, seed: int = 0) -> dict:
    """Training case, the two tests and their references as NIfTI files in ``tmp``."""
    import nibabel as nib

    from unet_pipeline.io.images import load_image, read_voxels

    img, hu, label = training_scan()
    paths = {"train_image": tmp / "train" / "ts.nii.gz", "train_label": tmp / "train_labels" / "ts.nii.gz",
             "venous_image": tmp / "venous" / "ts_venous.nii.gz", "venous_ref": tmp / "venous_ref" / "ts_venous.nii.gz",
             "dcmqi_dicom": DATA / "dcmqi-ct-3slice" / "dicom", "dcmqi_image": tmp / "dcmqi" / "dcmqi.nii.gz",
             "dcmqi_ref": tmp / "dcmqi_ref" / "dcmqi.nii.gz"}
    rng = np.random.default_rng(seed)
    venous = hu.copy()
    shifts = {}
    for value, (name, _) in CLASSES.items():  # organs enhance in the portal-venous phase
        shifts[name] = float(rng.uniform(40, 60))
        venous[label == value] += np.int16(round(shifts[name]))
    for key, array in (("train_image", hu), ("train_label", label), ("venous_image", venous), ("venous_ref", label)):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, img.affine, header=img.header), str(paths[key]))
    dcm = load_image(paths["dcmqi_dicom"])
    ref = read_voxels(load_image(DATA / "dcmqi-ct-3slice" / "liver_spine_seg.nrrd"), "liver_spine_seg.nrrd")
    for key, array in (("dcmqi_image", read_voxels(dcm, "dicom").astype(np.int16)),
                       ("dcmqi_ref", (ref == 1).astype(np.uint8))):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, dcm.affine), str(paths[key]))
    paths.update(_write_absent_inputs(tmp, img, hu, label))
    return {"paths": paths, "venous_shifts_hu": shifts}


def _write_absent_inputs(tmp: Path, img, hu: np.ndarray, label: np.ndarray) -> dict:
    """The absent-class tests (:data:`ABSENT`): ``ts_cropped`` (image and reference: the slices of the
    training scan above the top of both kidneys, the affine moved with nibabel's slicer) and
    ``sts_extremity`` (its DICOM folder, and a NIfTI copy for MONAI's loader)."""
    import nibabel as nib

    from unet_pipeline.io.images import load_image, read_voxels

    kidneys = [v for v, (n, _) in CLASSES.items() if n in ABSENT["ts_cropped"]]
    top = int(np.nonzero(np.isin(label, kidneys).any(axis=(0, 1)))[0].max())  # z rises to the head (RAS+)
    above = slice(top + 1, None)
    paths = {"cropped_image": tmp / "cropped" / "ts_cropped.nii.gz", "cropped_ref": tmp / "cropped_ref" / "ts_cropped.nii.gz",
             "sts_dicom": DATA / "sts-001-ct-rtstruct" / "dicom", "sts_image": tmp / "sts" / "sts.nii.gz"}
    cropped = img.slicer[:, :, above]
    for key, array in (("cropped_image", hu[:, :, above]), ("cropped_ref", label[:, :, above])):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array), cropped.affine, header=img.header), str(paths[key]))
    sts = load_image(paths["sts_dicom"])
    paths["sts_image"].parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(read_voxels(sts, "dicom").astype(np.int16), sts.affine), str(paths["sts_image"]))
    return paths


def fp_volume_ml(pred_path: Path, classes: dict[int, str]) -> dict[str, float]:
    """Volume (mL) painted with each of ``classes`` (value -> name) in a segmentation: voxel count x
    voxel volume from its affine. For a class absent from the scan, all of it is false positive."""
    import nibabel as nib

    pred_img = nib.load(str(pred_path))
    pred = np.asarray(pred_img.dataobj)
    voxel_ml = abs(float(np.linalg.det(pred_img.affine[:3, :3]))) / 1000.0
    return {name: round(int(np.count_nonzero(pred == value)) * voxel_ml, 3) for value, name in classes.items()}


def _absent_scores(cropped_seg: Path, sts_seg: Path, cropped_ref: Path) -> dict:
    """``absent_fp_ml`` (per absent-class test, per absent class, mL) and ``ts_cropped`` (Dice and HD95
    of the classes still present in the cropped scan)."""
    names = {n: v for v, (n, _) in CLASSES.items()}
    present = {v: n for v, (n, _) in CLASSES.items() if n not in ABSENT["ts_cropped"]}
    return {"absent_fp_ml": {test: fp_volume_ml(seg, {names[n]: n for n in ABSENT[test]})
                             for test, seg in (("ts_cropped", cropped_seg), ("sts_extremity", sts_seg))},
            "ts_cropped": score(cropped_seg, cropped_ref, present)}


def score(pred_path: Path, ref_path: Path, classes: dict[int, str]) -> dict[str, dict]:
    """Dice and HD95 (mm) per class of a segmentation against its reference (same grid)."""
    import nibabel as nib

    from unet_pipeline.io.formats import spacing_from_affine
    from unet_pipeline.evaluate.metrics import case_metrics

    pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
    if pred_img.shape[:3] != ref_img.shape[:3] or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        raise AssertionError(f"{pred_path} is not on the grid of {ref_path}")
    pred = np.asarray(pred_img.dataobj)
    ref = np.asarray(ref_img.dataobj)
    rows = case_metrics(pred, ref, spacing_from_affine(ref_img.affine), classes)
    return {r["label"]: {"dice": round(float(r["dice"]), 4), "hd95_mm": _round(r["hd95_mm"])} for r in rows}


def _round(x) -> float | None:
    x = float(x)
    return round(x, 2) if np.isfinite(x) else None


def _ours(tmp: Path, paths: dict, minutes: float, overrides: dict | None = None) -> dict:
    """Train with the CLI (the workflow's stages and the schema's defaults, as a user's cohort gets
    them) and predict both tests."""
    import yaml

    config = {"cohort": {"label_names": {v: n for v, (n, _) in CLASSES.items()}},
              "split": {"test_fraction": 0.0, "val_fraction": 0.0, "seed": 0},
              "training": {"epochs": 10000, "max_minutes": minutes}}
    for section, values in (overrides or {}).items():
        config[section] = {**(config.get(section) or {}), **values}
    (tmp / "ours.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    manifest = tmp / "ours.csv"
    manifest.write_text(f"case_id,image,label\nts,{paths['train_image']},{paths['train_label']}\n", encoding="utf-8")
    model = tmp / "ours_model"
    t0 = time.perf_counter()
    cli(["train", "--manifest", str(manifest), "-c", str(tmp / "ours.yaml"), "-o", str(model),
          "--work-dir", str(tmp / "ours_work")])
    train_s = time.perf_counter() - t0
    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    cli(["predict", "-m", str(model), "-i", str(paths["dcmqi_dicom"]), "-o", str(tmp / "ours_dcmqi")])
    cli(["predict", "-m", str(model), "-i", str(paths["venous_image"]), "-o", str(tmp / "ours_venous")])
    cli(["predict", "-m", str(model), "-i", str(paths["cropped_image"]), "-o", str(tmp / "ours_cropped")])
    cli(["predict", "-m", str(model), "-i", str(paths["sts_dicom"]), "-o", str(tmp / "ours_sts")])
    predict_s = time.perf_counter() - t0
    dcmqi_seg = next((tmp / "ours_dcmqi").glob("*.nii.gz"))
    review = {test: _review_flags(tmp / f"ours_{test}") for test in ("dcmqi", "venous", "cropped", "sts")}
    return {"review": review, **_review_counts(review),"train_s": round(train_s, 1), "predict_s": round(predict_s, 1), "steps": meta.get("steps_run"),
            "ended_by": meta.get("ended_by"), "postprocess": meta.get("postprocess"),
            "dcmqi_liver": score(dcmqi_seg, paths["dcmqi_ref"], {1: "liver"}),
            "ts_venous": score(tmp / "ours_venous" / "ts_venous.nii.gz", paths["venous_ref"],
                                {v: n for v, (n, _) in CLASSES.items()}),
            **_absent_scores(tmp / "ours_cropped" / "ts_cropped.nii.gz", next((tmp / "ours_sts").glob("*.nii.gz")),
                             paths["cropped_ref"])}


def cli(argv: list[str]) -> None:
    """Run the ``unet-pipeline`` CLI in a child process (its own threads and memory)."""
    done = subprocess.run([sys.executable, "-m", "unet_pipeline.cli", *argv], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"unet-pipeline {argv[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


_MONAI_CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
from monai.data import Dataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                              RandCropByPosNegLabeld, RandFlipd, RandRotate90d, RandShiftIntensityd,
                              SaveImaged, ScaleIntensityRanged, Spacingd, SqueezeDimd)
args = json.loads(sys.argv[1])
torch.manual_seed(0)
np.random.seed(0)
pix = (args["spacing"], args["spacing"], -1)
load = [LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        Spacingd(keys=["image", "label"], pixdim=pix, mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True)]
vol = Compose(load)({"image": args["train_image"], "label": args["train_label"]})
slices = [{"image": vol["image"][..., z], "label": vol["label"][..., z]} for z in range(vol["image"].shape[-1])
          if vol["label"][..., z].max() > 0]
aug = Compose([RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(64, 64), pos=2, neg=1,
                                      num_samples=4),
               RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
               RandRotate90d(keys=["image", "label"], prob=0.3, max_k=3),
               RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5)])
loader = DataLoader(Dataset(slices, transform=aug), batch_size=2, shuffle=True, num_workers=0)
net = UNet(spatial_dims=2, in_channels=1, out_channels=args["classes"], channels=(16, 32, 64, 128, 256),
           strides=(2, 2, 2, 2), num_res_units=2, norm="instance")
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
t0, steps = time.perf_counter(), 0
budget = 60 * args["minutes"]
net.train()
while time.perf_counter() - t0 < budget:
    for batch in loader:
        opt.zero_grad()
        loss = loss_fn(net(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
        steps += 1
        if time.perf_counter() - t0 >= budget:
            break
train_s = time.perf_counter() - t0
net.eval()
t0 = time.perf_counter()
pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
               Spacingd(keys="image", pixdim=pix, mode="bilinear"),
               ScaleIntensityRanged(keys="image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True)])
for name, image in args["tests"].items():
    data = pre({"image": image})
    x = data["image"]
    with torch.inference_mode():
        probs = torch.stack([torch.softmax(sliding_window_inference(x[None, ..., z], (64, 64), 8, net, overlap=0.5,
                                                                    mode="gaussian"), 1)[0]
                             for z in range(x.shape[-1])], dim=-1)
    data["pred"] = probs
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
                    AsDiscreted(keys="pred", argmax=True),
                    SaveImaged(keys="pred", output_dir=args["out"] + "/" + name, output_postfix="seg",
                               separate_folder=False, output_dtype=np.uint8, resample=False, print_log=False)])
    post(data)
print(json.dumps({"train_s": train_s, "predict_s": time.perf_counter() - t0, "steps": steps}))
"""


def _monai(tmp: Path, paths: dict, minutes: float, spacing: float) -> dict:
    args = {"train_image": str(paths["train_image"]), "train_label": str(paths["train_label"]), "minutes": minutes,
            "spacing": spacing, "classes": len(CLASSES) + 1, "out": str(tmp / "monai"),
            "tests": {"dcmqi": str(paths["dcmqi_image"]), "venous": str(paths["venous_image"]),
                      "cropped": str(paths["cropped_image"]), "sts": str(paths["sts_image"])}}
    done = subprocess.run([sys.executable, "-c", _MONAI_CHILD, json.dumps(args)], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"MONAI recipe failed:\n{done.stderr[-4000:]}")
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    dcmqi = next((tmp / "monai" / "dcmqi").glob("*.nii.gz"))
    venous = next((tmp / "monai" / "venous").glob("*.nii.gz"))
    return {"train_s": round(timing["train_s"], 1), "predict_s": round(timing["predict_s"], 1), "steps": timing["steps"],
            "dcmqi_liver": score(dcmqi, paths["dcmqi_ref"], {1: "liver"}),
            "ts_venous": score(venous, paths["venous_ref"], {v: n for v, (n, _) in CLASSES.items()}),
            **_absent_scores(next((tmp / "monai" / "cropped").glob("*.nii.gz")),
                             next((tmp / "monai" / "sts").glob("*.nii.gz")), paths["cropped_ref"])}


def _nnunet(tmp: Path, paths: dict, minutes: float, python: Path | None = None, da_processes: int = 1) -> dict:
    """nnU-Net v2 (``2d``, its own planning, augmentation and predictor; fold ``all``) trained for
    ``minutes`` in its own venv (:mod:`bench.realdata_nnunet`, :mod:`bench.nnunet_child`), scored
    like the others; ``{"skipped": reason}`` when that venv's Python is absent, ``{"failed": log
    tail}`` when nnU-Net fails (the other columns stand). ``da_processes``: its data-augmentation
    worker processes (``nnUNet_n_proc_DA``)."""
    from bench import realdata_nnunet

    python = Path(python) if python is not None else realdata_nnunet.default_python()
    if not python.is_file():
        return {"skipped": f"no nnU-Net Python at {python}: run bench/setup_nnunet.sh, or pass --nnunet-python "
                           "or set UNET_BENCH_NNUNET_PYTHON"}
    classes = {v: n for v, (n, _) in CLASSES.items()}
    tests = {"dcmqi_liver": (paths["dcmqi_image"], paths["dcmqi_ref"], {1: "liver"}),
             "ts_venous": (paths["venous_image"], paths["venous_ref"], classes)}
    # the absent-class scans: the extremity CT has no reference, its own grid is the one to score on
    grids = {"ts_cropped": (paths["cropped_image"], paths["cropped_ref"]),
             "sts_extremity": (paths["sts_image"], paths["sts_image"])}
    try:
        r = realdata_nnunet.run(tmp / "nnunet", python, paths["train_image"], paths["train_label"],
                                {**{name: (image, ref) for name, (image, ref, _) in tests.items()}, **grids}, classes,
                                minutes, da_processes=da_processes)
    except RuntimeError as error:
        return {"failed": str(error)[-2000:]}
    segs = {name: Path(path) for name, path in r["segmentations"].items()}
    return {"train_s": round(r["train_s"], 1), "predict_s": round(r["predict_s"], 1), "steps": r["iterations"],
            "da_processes": int(da_processes),
            "plan_s": round(r["plan_s"], 1), "setup_s": round(r["setup_s"], 1), "epochs": r["epochs"],
            "batch_size": r["batch_size"], "patch_size": r["patch_size"], "spacing_mm": r["spacing_mm"],
            "mirror_axes": r["mirror_axes"],
            **{name: score(segs[name], ref, names) for name, (_, ref, names) in tests.items()},
            **_absent_scores(segs["ts_cropped"], segs["sts_extremity"], paths["cropped_ref"])}


def _review_flags(out_dir: Path) -> dict[str, dict]:
    """Per class segmented in one test (``review.csv`` of ``unet-pipeline predict``): whether the review
    list calls it probably absent, its predicted Dice, unfamiliar share and reason."""
    from unet_pipeline.quality.review import read_review_csv

    return {r["class"]: {"absent_suspected": r["absent_suspected"] == "True",
                         "predicted_dice": float(r["predicted_dice"]) if r["predicted_dice"] else None,
                         "unfamiliar_share": float(r["unfamiliar_share"]) if r.get("unfamiliar_share") else None,
                         "reason": r["reason"]}
            for r in read_review_csv(out_dir / "review.csv") if r["volume_ml"] not in ("", "0", "0.0")}


def _review_counts(review: dict) -> dict:
    """``absent_flagged``: absent classes segmented anyway on the absent-class tests that the review list
    flags as probably absent, of those segmented; ``present_flagged``: present classes (dcmqi liver,
    the venous scan's four, the cropped scan's liver and spleen) it wrongly flags, of those segmented."""
    tests = {"cropped": "ts_cropped", "sts": "sts_extremity"}
    absent = [f for test, name in tests.items() for cls, f in review[test].items() if cls in ABSENT[name]]
    present = [f for test, flags in review.items() for cls, f in flags.items()
               if not (test in tests and cls in ABSENT[tests[test]]) and (test != "dcmqi" or cls == "liver")]
    return {"absent_flagged": f"{sum(f['absent_suspected'] for f in absent)}/{len(absent)}",
            "present_flagged": f"{sum(f['absent_suspected'] for f in present)}/{len(present)}"}


def _mean_dice(figures: dict[str, dict]) -> float:
    return round(float(np.mean([f["dice"] for f in figures.values()])), 4)


def _absent_total(recipe: dict) -> float:
    """All the false-positive volume (mL) a recipe painted on the absent-class tests."""
    return round(sum(ml for test in recipe["absent_fp_ml"].values() for ml in test.values()), 1)


def _headline(result: dict) -> dict:
    """The figures the summary table shows: liver Dice of both tests and mean Dice of the venous one,
    ours and each other recipe that ran, and the classes where ours trails each of them."""
    ours = result["ours"]
    head = {"liver_dice_dcmqi": ours["dcmqi_liver"]["liver"]["dice"],
            "liver_dice_venous": ours["ts_venous"]["liver"]["dice"], "mean_dice_venous": _mean_dice(ours["ts_venous"]),
            "absent_fp_ml": _absent_total(ours), "absent_flagged": ours.get("absent_flagged"),
            "present_flagged": ours.get("present_flagged")}
    for other in ("monai", "nnunet"):
        theirs = result.get(other, {})
        if "ts_venous" not in theirs:  # not run, skipped or failed
            continue
        head[f"liver_dice_dcmqi_{other}"] = theirs["dcmqi_liver"]["liver"]["dice"]
        head[f"liver_dice_venous_{other}"] = theirs["ts_venous"]["liver"]["dice"]
        head[f"mean_dice_venous_{other}"] = _mean_dice(theirs["ts_venous"])
        head[f"absent_fp_ml_{other}"] = _absent_total(theirs)
        head[f"classes_behind_{other}"] = [f"{test}:{name}" for test in ("dcmqi_liver", "ts_venous")
                                           for name, fig in ours[test].items() if fig["dice"] < theirs[test][name]["dice"]]
    return head


def run(quick: bool = False, minutes: float | None = None, overrides: dict | None = None,
        with_monai: bool = True, with_nnunet: bool = True, nnunet_python: Path | None = None,
        nnunet_da_processes: int = 1) -> dict:
    """Train each recipe for ``minutes`` (default 10, quick 1.5) and score both tests. nnU-Net runs
    with ``nnunet_python`` (default: :func:`bench.realdata_nnunet.default_python`) and is reported
    as skipped when that Python is absent."""
    if not (DATA / "totalsegmentator-example").is_dir():
        return {"skipped": f"no real data at {DATA}"}
    minutes = float(minutes if minutes is not None else (QUICK_MINUTES if quick else FULL_MINUTES))
    with tempfile.TemporaryDirectory(prefix="bench_realdata_") as tmp:
        tmp = Path(tmp)
        inputs = _write_inputs(tmp)
        paths = inputs["paths"]
        ours = _ours(tmp, paths, minutes, overrides)
        plan = json.loads((tmp / "ours_model" / "model.json").read_text(encoding="utf-8"))["plan"]
        result = {"minutes_per_side": minutes, "venous_shifts_hu": inputs["venous_shifts_hu"], "ours": ours,
                  "overrides": overrides or {}}
        if with_monai:
            result["monai"] = _monai(tmp, paths, minutes, float(plan["target_spacing_mm"][0]))
        if with_nnunet:
            result["nnunet"] = _nnunet(tmp, paths, minutes, nnunet_python, nnunet_da_processes)
        if with_monai or with_nnunet:
            result.update(_headline(result))
        result["target_liver_dice"] = TARGET_DICE
    return result


def check(steps: int = 4, monai_minutes: float = 0.05) -> dict:
    """The benchmark's plumbing without its budget: ours for ``steps`` optimizer steps, MONAI for
    ``monai_minutes``; every segmentation checked to lie on its input's grid (:func:`score`).
    nnU-Net is left out (its venv is optional, and its planning and prediction take minutes)."""
    return run(minutes=monai_minutes, with_nnunet=False,
               overrides={"training": {"epochs": 1, "iterations_per_epoch": steps, "max_minutes": 0}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MINUTES} minutes of training a side")
    parser.add_argument("--minutes", type=float, help="training minutes a side (default 10)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML",
                        help="override our config, e.g. --set plan.intensity=body (repeatable)")
    parser.add_argument("--no-monai", action="store_true", help="leave MONAI's recipe out")
    parser.add_argument("--no-nnunet", action="store_true", help="leave nnU-Net out (--no-monai --no-nnunet: "
                        "our side only, to compare settings)")
    parser.add_argument("--nnunet-da", type=int, default=1, metavar="N",
                        help="nnU-Net's data-augmentation worker processes (nnUNet_n_proc_DA; default 1, its own "
                             "default is the number of cores)")
    parser.add_argument("--nnunet-python", type=Path, metavar="PATH",
                        help="Python of the nnU-Net venv made by bench/setup_nnunet.sh (default: "
                             "$UNET_BENCH_NNUNET_PYTHON, else ../nnunet-venv/bin/python beside the repository)")
    args = parser.parse_args()
    import yaml

    overrides: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(run(quick=args.quick, minutes=args.minutes, overrides=overrides, with_monai=not args.no_monai,
                         with_nnunet=not args.no_nnunet, nnunet_python=args.nnunet_python,
                         nnunet_da_processes=args.nnunet_da), indent=2))


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main()
