"""Benchmark: reading and preprocessing one CT (image + label) vs the MONAI way, in one process.

A 512 x 512 x 300 int16 CT in HU (quick: 512 x 512 x 60) with 3 labelled organs, stored as
``.nii.gz`` in LPS order (as DICOM converters write it) at 0.8 x 0.8 x 2.5 mm, is brought to the
plan's in-plane spacing of 1.2 mm (slice thickness kept), clipped and z-scored:

* ours: :func:`unet_pipeline.preprocess.transform.preprocess_image` + ``preprocess_label`` (exact axis
  permutation/flip to canonical order, in-plane resampling slab by slab, ``.npy`` written);
* MONAI: ``LoadImaged -> EnsureChannelFirstd -> Orientationd("RAS") -> Spacingd(pixdim=(1.2, 1.2,
  2.5), bilinear / nearest) -> ScaleIntensityRanged(clip) -> NormalizeIntensityd`` on the same
  files, then ``numpy.save`` of both arrays (so both end on disk).

Reported: seconds of each, the speedup (MONAI / ours) and how close the results are: the share of
label voxels that agree and the median absolute difference of the normalised image, on the common
grid (the two resamplers place the output grid a fraction of a pixel apart).
Run ``python bench/bench_preprocess.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from unet_pipeline.preprocess.transform import preprocess_image, preprocess_label

__all__ = ["run", "check"]

SPACING = (0.8, 0.8, 2.5)
TARGET_MM = 1.2
INTENSITY = {"p00_5": -100.0, "p99_5": 300.0, "mean": 90.0, "std": 60.0}
TARGET_SPEEDUP = 5.0


def _write_case(folder: Path, n_slices: int, seed: int = 0) -> tuple[Path, Path]:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 240) ** 2 < 1
    image = np.empty((512, 512, n_slices), np.int16)
    label = np.zeros((512, 512, n_slices), np.uint8)
    for k in range(n_slices):
        t = k / max(n_slices - 1, 1)
        sl = np.where(body, 40, -1000).astype(np.float32)
        lab = np.zeros((512, 512), np.uint8)
        for value, (cy, cx, ry, rx, hu) in enumerate([(230, 180, 90, 110, 100), (260, 360, 45, 40, 130),
                                                     (330, 300, 30, 25, 180)], start=1):
            r = 1.0 - 0.6 * abs(t - 0.5)
            m = ((yy - cy) / (ry * r)) ** 2 + ((xx - cx) / (rx * r)) ** 2 < 1
            sl[m] = hu
            lab[m] = value
        image[..., k] = np.clip(sl + rng.normal(0, 15, sl.shape), -1024, 3071).astype(np.int16)
        label[..., k] = lab
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS voxel axes
    paths = []
    for name, data in (("image", image), ("label", label)):
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        path = folder / f"{name}.nii.gz"
        nib.save(img, str(path))
        paths.append(path)
    return paths[0], paths[1]


def _ours(image: Path, label: Path, out: Path) -> float:
    start = time.perf_counter()
    plan = {"target_spacing_mm": [TARGET_MM, TARGET_MM], "intensity": INTENSITY}
    meta = preprocess_image(image, plan, out, case_id="bench")
    preprocess_label(label, meta, out / "label.npy")
    return time.perf_counter() - start


def _monai(image: Path, label: Path, out: Path) -> float:
    from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Orientationd,
                                  ScaleIntensityRanged, Spacingd)

    start = time.perf_counter()
    transform = Compose([
        LoadImaged(keys=["image", "label"], image_only=True),
        EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        Spacingd(keys=["image", "label"], pixdim=(TARGET_MM, TARGET_MM, SPACING[2]), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys=["image"], a_min=INTENSITY["p00_5"], a_max=INTENSITY["p99_5"],
                             b_min=INTENSITY["p00_5"], b_max=INTENSITY["p99_5"], clip=True),
        NormalizeIntensityd(keys=["image"], subtrahend=INTENSITY["mean"], divisor=INTENSITY["std"]),
    ])
    data = transform({"image": str(image), "label": str(label)})
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "image.npy", np.asarray(data["image"][0], dtype=np.float32))
    np.save(out / "label.npy", np.asarray(data["label"][0]).astype(np.uint8))
    return time.perf_counter() - start


def _compare(ours: Path, monai: Path) -> dict:
    """Agreement of the two results (output folders of :func:`_ours` and :func:`_monai`) on the common grid."""
    ours_img = np.load(ours / "image.npy")  # (Z, Y, X) = (S, A, R)
    ours_lab = np.load(ours / "label.npy")
    # MONAI's RAS array is (X=R, Y=A, Z=S): bring it to (Z, Y, X).
    monai_img = np.load(monai / "image.npy").transpose(2, 1, 0)
    monai_lab = np.load(monai / "label.npy").transpose(2, 1, 0)
    common = tuple(slice(0, min(a, b)) for a, b in zip(ours_img.shape, monai_img.shape))
    a, b = ours_lab[common], monai_lab[common]
    dice = {int(v): float(2 * np.sum((a == v) & (b == v)) / max(1, np.sum(a == v) + np.sum(b == v)))
            for v in np.union1d(np.unique(a), np.unique(b)) if v}
    return {"label_agreement": float((a == b).mean()), "label_dice": dice,
            "image_median_abs_diff_z": float(np.median(np.abs(ours_img[common] - monai_img[common]))),
            "shapes_zyx": {"ours": list(ours_img.shape), "monai": list(monai_img.shape)}}


def check(n_slices: int = 8) -> dict:
    """Correctness side only (no timing): both pipelines on a short case (512 x 512 x ``n_slices``).

    Returns :func:`_compare`'s ``label_agreement`` (share of equal label voxels), ``label_dice``
    (per organ, ours vs MONAI), ``image_median_abs_diff_z`` and ``shapes_zyx``.
    """
    import warnings

    with tempfile.TemporaryDirectory(prefix="bench_preprocess_check_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tmp = Path(tmp)
        image, label = _write_case(tmp, n_slices)
        _ours(image, label, tmp / "ours")
        _monai(image, label, tmp / "monai")
        return _compare(tmp / "ours", tmp / "monai")


def run(quick: bool = False) -> dict:
    """Time both on the same files; return seconds, the speedup and the agreement of the results."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")  # MONAI's deprecation notices
    n_slices = 60 if quick else 300
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        image, label = _write_case(tmp, n_slices)
        _ours(image, label, tmp / "warm_ours")  # warm-up (imports, caches)
        t_monai = _monai(image, label, tmp / "monai")
        t_ours = _ours(image, label, tmp / "ours")
        compared = _compare(tmp / "ours", tmp / "monai")
        agree, diff, shapes = (compared["label_agreement"], compared["image_median_abs_diff_z"],
                               compared["shapes_zyx"])
    return {
        "preprocess_ours_s": round(t_ours, 3),
        "preprocess_monai_s": round(t_monai, 3),
        "speedup": round(t_monai / t_ours, 2),
        "target_speedup": TARGET_SPEEDUP,
        "label_agreement": round(agree, 5),
        "image_median_abs_diff_z": round(diff, 5),
        "shapes_zyx": shapes,
        "volume": [512, 512, n_slices],
        "spacing_mm": list(SPACING),
        "target_mm": TARGET_MM,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 slices instead of 300")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
