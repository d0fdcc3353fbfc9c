"""Benchmark: predicting one case end to end (read -> preprocess -> infer -> reassemble -> write)
vs the equivalent MONAI pipeline, wall time and peak memory.

The case: an int16 CT ``512 x 512 x N`` (full: 300 slices; quick: 24) at 0.8 x 0.8 x 2.5 mm in LPS
order, ``.nii.gz``, a body with one organ. The model: the demo's architecture (padded U-Net, base 16,
depth 4, 5 classes), fitted for a few seconds to segment that organ (class 1) so that the
postprocessing, reassembly and volume stages see a real segmentation rather than the noise of
random weights; plan spacing 1.2 mm in-plane, tiles of 256 x 256, overlap 0.5, Gaussian.

* ours: :func:`unet_pipeline.stages.predict_cohort` (import checks, preprocessing, tiled
  inference with probabilities kept slab by slab, reassembly onto the input grid, the NIfTI and
  its sidecar, volumes.csv);
* MONAI: ``LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd -> ScaleIntensityRanged
  -> NormalizeIntensityd``, ``SliceInferer`` (2-D tiles over the axial slices, same tile, overlap
  and Gaussian), ``Invertd`` back to the input's space, ``AsDiscreted(argmax)``, ``SaveImaged``.

Each runs in a fresh Python process (peak RSS, ``VmHWM``, is per process), alternately; both
outputs are checked to lie on the input's grid, and their voxel agreement and the organ's Dice
against the truth are reported. Reported: seconds, peak RSS, the ratios, and our per-step profile
(the sidecar's ``timings``: import, preprocess, infer, reassemble, volumes).
Run ``python bench/bench_predict.py [--quick]``; prints a JSON dict. Linux only (``/proc``).
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

__all__ = ["run"]

TARGET_MM = 1.2
NUM_CLASSES = 5
INTENSITY = {"p00_5": -100.0, "p99_5": 300.0, "mean": 90.0, "std": 60.0}
TARGET_SPEEDUP = 2.0
TARGET_MEMORY_RATIO = 0.5

_CHILD = r"""
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
args = json.loads(sys.argv[1])
import numpy as np, torch
t0 = time.perf_counter()
if args["which"] == "ours":
    from unet_pipeline.stages import predict_cohort
    status_ = predict_cohort([args["model"]], [("case", args["image"])], args["out"], work_dir=args["work"],
                             inference={"device": args["device"], "overlap": 0.5, "batch_size": None})
    assert status_ == {"case": "ok"}, status_
else:
    import warnings
    warnings.filterwarnings("ignore")
    from monai.inferers import SliceInferer
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, NormalizeIntensityd,
                                  Orientationd, SaveImaged, ScaleIntensityRanged, Spacingd)
    from unet_pipeline.model.folder import load_model
    model, _ = load_model(args["model"], args["device"])
    it = args["intensity"]
    pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
                   Spacingd(keys="image", pixdim=(args["target_mm"], args["target_mm"], -1), mode="bilinear"),
                   ScaleIntensityRanged(keys="image", a_min=it["p00_5"], a_max=it["p99_5"], b_min=it["p00_5"],
                                        b_max=it["p99_5"], clip=True),
                   NormalizeIntensityd(keys="image", subtrahend=it["mean"], divisor=it["std"])])
    data = pre({"image": args["image"]})
    inferer = SliceInferer(roi_size=(256, 256), sw_batch_size=8, spatial_dim=2, overlap=0.5, mode="gaussian",
                           sigma_scale=0.125, progress=False, sw_device=args["device"], device="cpu")
    with torch.inference_mode():
        probs = inferer(data["image"][None], lambda x: torch.softmax(model(x), dim=1))
    data["pred"] = probs[0]
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
                    AsDiscreted(keys="pred", argmax=True),
                    SaveImaged(keys="pred", output_dir=args["out"], output_postfix="seg", separate_folder=False,
                               output_dtype=np.uint8, resample=False, print_log=False)])
    post(data)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_bytes": status("VmHWM")}))
"""


def _write_case(path: Path, n_slices: int, seed: int = 0) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 240) ** 2 < 1
    organ = _organ()
    data = np.empty((512, 512, n_slices), np.int16)
    for k in range(n_slices):
        sl = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0)
        data[..., k] = (sl + rng.normal(0, 15, sl.shape)).astype(np.int16)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _organ(shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return ((yy - 230) / 90) ** 2 + ((xx - 180) / 110) ** 2 < 1


def _fit_model(folder: Path, plan: dict, image: Path, steps: int = 40) -> Path:
    """The demo architecture fitted to segment the case's organ (class 1) on 128 x 128 crops of a few
    of its slices resampled to the plan's spacing (seconds on 2 cores); saved as a model folder."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from bench.bench_memory import demo_model
    from unet_pipeline.model.unet import UNetConfig, build_unet

    folder = demo_model(folder, plan)
    config = UNetConfig.from_dict(json.loads((folder / "model.json").read_text(encoding="utf-8"))["architecture"])
    torch.manual_seed(0)
    model = build_unet(config).train()
    hu = np.asarray(nib.load(str(image)).dataobj[:, :, :4], dtype=np.float32).transpose(2, 1, 0)  # (z, y, x)
    it = plan["intensity"]
    x = (np.clip(hu, it["p00_5"], it["p99_5"]) - it["mean"]) / it["std"]
    side = round(512 * 0.8 / plan["target_spacing_mm"][0])
    x = F.interpolate(torch.from_numpy(x)[:, None], size=(side, side), mode="bilinear", antialias=True)
    y = F.interpolate(torch.from_numpy(_organ().T.copy()).float()[None, None].expand(x.shape[0], 1, -1, -1),
                      size=(side, side), mode="nearest")[:, 0].long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = [(rng.integers(x.shape[0]), rng.integers(side - 128), rng.integers(side - 128)) for _ in range(4)]
        xb = torch.stack([x[z, :, i:i + 128, j:j + 128] for z, i, j in idx])
        yb = torch.stack([y[z, i:i + 128, j:j + 128] for z, i, j in idx])
        if rng.random() < 0.5:  # every flip and transpose: the pipelines' slice orientation need not be known here
            xb, yb = xb.transpose(-1, -2), yb.transpose(-1, -2)
        flips = [d for d in (-1, -2) if rng.random() < 0.5]
        if flips:
            xb, yb = xb.flip(flips), yb.flip(flips)
        optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def _measure(args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args['which']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False, device: str | None = None) -> dict:
    """Predict one case with both pipelines (fresh processes); seconds, peak RSS and their ratios."""
    import nibabel as nib

    n_slices = 24 if quick else 300
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        image = tmp / "case.nii.gz"
        _write_case(image, n_slices)
        plan = {"target_spacing_mm": [TARGET_MM, TARGET_MM], "num_classes": NUM_CLASSES, "intensity": INTENSITY}
        model = _fit_model(tmp / "model", plan, image)
        common = {"image": str(image), "model": str(model), "target_mm": TARGET_MM, "intensity": INTENSITY,
                  "device": device or "cpu"}
        ours = _measure({**common, "which": "ours", "out": str(tmp / "ours"), "work": str(tmp / "work")})
        theirs = _measure({**common, "which": "monai", "out": str(tmp / "monai")})
        src = nib.load(str(image))
        a = nib.load(str(tmp / "ours" / "case.nii.gz"))
        b = nib.load(str(next((tmp / "monai").glob("*.nii.gz"))))
        grids = {name: bool(img.shape[:3] == src.shape and np.allclose(img.affine, src.affine, atol=1e-4))
                 for name, img in (("ours", a), ("monai", b))}
        seg_a, seg_b = np.asarray(a.dataobj), np.asarray(b.dataobj).reshape(src.shape)
        truth = np.broadcast_to(_organ()[:, :, None], src.shape)  # every slice k of _write_case: data[:, :, k]
        dice = {name: round(float(2 * np.sum((seg == 1) & truth) / max(1, np.sum(seg == 1) + truth.sum())), 4)
                for name, seg in (("ours", seg_a), ("monai", seg_b))}
        timings = json.loads((tmp / "ours" / "case.json").read_text(encoding="utf-8")).get("timings")
    return {
        "predict_ours_s": round(ours["seconds"], 2),
        "predict_monai_s": round(theirs["seconds"], 2),
        "speedup": round(theirs["seconds"] / ours["seconds"], 2),
        "target_speedup": TARGET_SPEEDUP,
        "peak_rss_ours_mb": round(ours["peak_bytes"] / 1e6, 1),
        "peak_rss_monai_mb": round(theirs["peak_bytes"] / 1e6, 1),
        "memory_ratio": round(ours["peak_bytes"] / theirs["peak_bytes"], 2),
        "target_memory_ratio": TARGET_MEMORY_RATIO,
        "output_on_input_grid": grids,
        "voxel_agreement": round(float(np.mean(seg_a == seg_b)), 5),
        "organ_dice": dice,
        "profile_ours_s": timings,
        "volume": [512, 512, n_slices],
        "device": device or "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 slices instead of 300")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, device=args.device), indent=2))


if __name__ == "__main__":
    main()
