"""Benchmark: connected-component postprocessing (unet_pipeline.postprocess) vs MONAI's, same mask.

A 512 x 512 x 100 uint8 mask (quick: 256 x 256 x 50) holding one large organ-like blob with
holes, a few mid-sized blobs and many small islands. Each of the three operations runs on it
both ways, with the project's connectivity (:data:`unet_pipeline.postprocess.CONNECTIVITY`):

* largest component: ours (:func:`~unet_pipeline.postprocess.label_components` + the
  largest label) vs ``monai.transforms.utils.get_largest_connected_component_mask``;
* small objects: ours (components under a voxel count removed) vs
  ``monai.transforms.utils.remove_small_objects``;
* holes: ``scipy.ndimage.binary_fill_holes`` (the project's) vs
  ``monai.transforms.utils.fill_holes`` with the background joined through faces (connectivity 1).

MONAI's first two need scikit-image, which is not a dependency of the project: without it they
are reported as missing. scikit-image 0.26 also removes components of exactly ``min_size``
voxels (ours keeps them); the islands here are products of 1 to 3 voxels a side, so unless two
merge none has the 20 voxels of the threshold. Both sides run alternately after a warm-up;
medians over the repeats are reported with the ratio (MONAI / ours; also as
``<operation>_ratio``) and whether the masks are identical.
Run ``python bench/bench_postprocess.py [--quick]``; prints a JSON dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from scipy import ndimage

from unet_pipeline.postprocess import label_components

__all__ = ["run", "make_mask"]


def make_mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``(Z, Y, X)`` uint8 mask of ``shape``: a large blob with holes, 4 mid-sized blobs, 200 islands."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, np.uint8)
    centres = [(0.5, 0.4, 0.4, 0.35)] + [(rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9),
                                          rng.uniform(0.05, 0.1)) for _ in range(4)]
    for cz, cy, cx, r in centres:
        dist = ((z / shape[0] - cz) / (2 * r)) ** 2 + ((y / shape[1] - cy) / r) ** 2 + ((x / shape[2] - cx) / r) ** 2
        mask[dist <= 1.0] = 1
    for _ in range(200):  # islands of 1 to 27 voxels
        p = [int(rng.integers(0, s - 3)) for s in shape]
        d = [int(rng.integers(1, 4)) for _ in shape]
        mask[p[0]:p[0] + d[0], p[1]:p[1] + d[1], p[2]:p[2] + d[2]] = 1
    holes = (rng.random(shape) < 0.002) & ndimage.binary_erosion(mask, iterations=2)
    mask[holes] = 0
    return mask


def _ours_largest(mask: np.ndarray) -> np.ndarray:
    comp, n = label_components(mask)
    if n <= 1:
        return mask.astype(bool)
    return comp == int(np.argmax(np.bincount(comp.ravel())[1:])) + 1


def _ours_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    comp, _ = label_components(mask)
    keep = np.bincount(comp.ravel()) >= min_voxels
    keep[0] = False
    return keep[comp]


def _pairs(min_voxels: int) -> dict:
    """name -> (ours, MONAI's or None when scikit-image is missing); each maps a mask to a bool mask."""
    from monai.transforms import utils as mt
    from monai.utils import optional_import

    from unet_pipeline.postprocess import CONNECTIVITY

    have_skimage = optional_import("skimage.morphology")[1]
    largest = ((lambda m: mt.get_largest_connected_component_mask(m, connectivity=CONNECTIVITY))
               if have_skimage else None)
    small = ((lambda m: mt.remove_small_objects(m[None].astype(bool), min_voxels, CONNECTIVITY)[0])
             if have_skimage else None)
    return {"largest_component": (_ours_largest, largest),
            "small_objects": (lambda m: _ours_small(m, min_voxels), small),
            "fill_holes": (ndimage.binary_fill_holes,
                           lambda m: mt.fill_holes(m[None].astype(np.uint8), applied_labels=[1], connectivity=1)[0])}


def run(quick: bool = False) -> dict:
    """Time each operation both ways; per operation the median seconds, the ratio and mask equality."""
    shape = (50, 256, 256) if quick else (100, 512, 512)
    repeats = 3 if quick else 7
    mask = make_mask(shape)
    result: dict = {"shape_zyx": list(shape), "repeats": repeats}
    for name, (ours, theirs) in _pairs(min_voxels=20).items():
        if theirs is None:
            result[name] = {"monai": "needs scikit-image"}
            continue
        same = bool(np.array_equal(np.asarray(ours(mask), bool), np.asarray(theirs(mask), bool)))
        times: dict[str, list[float]] = {"ours_s": [], "monai_s": []}
        for _ in range(repeats):
            for key, fn in (("ours_s", ours), ("monai_s", theirs)):
                t0 = time.perf_counter()
                fn(mask)
                times[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        result[name] = {**{k: round(v, 4) for k, v in med.items()}, "ratio_monai_over_ours": round(
            med["monai_s"] / med["ours_s"], 2), "identical": same}
        result[f"{name}_ratio"] = result[name]["ratio_monai_over_ours"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 50 and 3 repeats")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
