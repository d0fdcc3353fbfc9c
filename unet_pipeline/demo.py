"""The built-in synthetic abdominal CT cohort (no download).

Each case is built in physical space: organ shapes are defined in world millimetres (RAS+,
origin at the body centre) and sampled on the case's own voxel grid, so every case can have its
own spacing, extent and axis order/flips while its anatomy stays consistent.

Per case (seeded by ``(seed, index)``, reproducible):

* grid: in-plane spacing 0.6-1.0 mm, slice thickness 1.5-5 mm (always along the world S axis),
  axis order and flips drawn from :data:`ORIENTATIONS` (RAS, LPS, LAS, PIR, ...), a random
  field of view and a scanner-like origin offset;
* anatomy: an elliptic body (subcutaneous fat ~ -100 HU around soft tissue ~ 40 HU, a few
  intra-abdominal fat pockets), a vertebra (bone ~ 700 HU with marrow ~ 250 HU), air (-1000 HU)
  outside; liver (right), spleen (left), and both kidneys (posterior) as ellipsoids with random
  size, position and rotation, whose surfaces are smoothly deformed by random low-frequency fields;
* image: HU plus Gaussian noise and a smooth additive bias field, stored as int16 (HU);
* label: uint8, values :data:`~unet_pipeline.cohort.naming.DEMO_LABELS` (0 background).

Arrays: the image is ``(I, J, K)`` int16 HU in the case's own voxel order (given by the affine),
the label the same shape in uint8.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .cohort.naming import DEMO_LABELS, demo_case_ids
from .io.files import atomic_path, save_json

__all__ = ["ORIENTATIONS", "ORGAN_HU", "make_demo_case", "write_demo_cohort"]

#: Axis codes cycled through the cohort (nibabel convention: the direction each voxel axis points to).
ORIENTATIONS = ("RAS", "LPS", "LAS", "LPI", "RPS", "PIR", "ASR", "SRA", "IPL", "RSP")

#: Mean HU per label value (contrast-enhanced abdomen, portal-venous phase).
ORGAN_HU = {1: 95.0, 2: 130.0, 3: 185.0, 4: 185.0}

#: Size of the phantom relative to an adult abdomen (a small body keeps the demo fast on a CPU).
BODY_SCALE = 0.7

# Organ templates (adult size, before BODY_SCALE): centre (x=R, y=A, z=S) mm relative to the
# body centre, semi-axes mm.
_ORGANS = {
    1: ((38.0, 12.0, 12.0), (42.0, 34.0, 40.0)),    # liver: patient's right, anterior
    2: ((-45.0, -12.0, 18.0), (17.0, 24.0, 30.0)),  # spleen: left, posterior
    3: ((-35.0, -32.0, -14.0), (13.0, 17.0, 26.0)),  # kidney_left
    4: ((35.0, -32.0, -26.0), (13.0, 17.0, 26.0)),   # kidney_right: a little lower
}
_LETTER = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def _smooth_field(rng: np.random.Generator, n_waves: int = 4, wavelength_mm: tuple[float, float] = (40.0, 90.0)):
    """A random smooth scalar field on world mm coordinates, roughly in [-1, 1]."""
    dirs = rng.normal(size=(n_waves, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * math.pi / rng.uniform(*wavelength_mm, size=n_waves)
    phase = rng.uniform(0, 2 * math.pi, size=n_waves)
    amp = rng.uniform(0.5, 1.0, size=n_waves)
    amp /= amp.sum()

    def field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
        for d, kk, ph, a in zip(dirs, k, phase, amp):
            out += np.float32(a) * np.sin(np.float32(kk) * (d[0] * x + d[1] * y + d[2] * z) + np.float32(ph))
        return out

    return field


def _affine(code: str, spacing_xyz: tuple[float, float, float], shape: tuple[int, int, int],
            centre_world: np.ndarray) -> np.ndarray:
    """4 x 4 voxel -> RAS mm affine for an axis code; the volume centre maps to ``centre_world``."""
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    for axis, letter in enumerate(code):
        world, sign = _LETTER[letter]
        aff[world, axis] = sign * spacing_xyz[world]
    aff[:3, 3] = centre_world - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def make_demo_case(index: int, seed: int = 0, slice_thickness_mm: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case: ``(image int16 HU, label uint8, affine 4 x 4 float64 voxel -> RAS mm)``.

    ``slice_thickness_mm`` rescans the same anatomy (same organs, field of view, orientation) with
    another slice spacing along S, e.g. 0.5 mm for a thin-slice reconstruction of the case.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    code = ORIENTATIONS[(index + seed) % len(ORIENTATIONS)]
    inplane = float(rng.uniform(0.6, 1.0))
    thickness = float(rng.uniform(1.5, 5.0))
    if slice_thickness_mm is not None:
        thickness = float(slice_thickness_mm)
    spacing_xyz = (inplane, inplane, thickness)
    body_a = BODY_SCALE * rng.uniform(135, 160)  # body semi-axes x, y (mm)
    body_b = BODY_SCALE * rng.uniform(100, 118)
    extent_xyz = (2 * body_a + rng.uniform(10, 30), 2 * body_b + rng.uniform(10, 30), BODY_SCALE * rng.uniform(130, 160))
    shape_world = [int(math.ceil(e / s)) for e, s in zip(extent_xyz, spacing_xyz)]
    shape = tuple(shape_world[_LETTER[c][0]] for c in code)
    body_centre = np.array([0.0, 0.0, 0.0])
    origin_offset = np.array([rng.uniform(-20, 20), rng.uniform(-150, -100), rng.uniform(-600, -300)])
    affine = _affine(code, spacing_xyz, shape, body_centre + origin_offset)

    # World coordinates (relative to the body centre) of each voxel axis, broadcastable.
    idx = [np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)]) for i, n in enumerate(shape)]
    rel = []
    for world in range(3):
        c = sum(np.float32(affine[world, a]) * idx[a] for a in range(3))
        rel.append(c + np.float32(affine[world, 3] - origin_offset[world]))
    x, y, z = rel  # each varies along one voxel axis only: broadcast, never materialised

    # Body, fat, muscle, vertebra.
    body_wobble = _smooth_field(rng, 3, (80.0, 160.0))
    r_body = np.sqrt((x / body_a) ** 2 + (y / body_b) ** 2) + 0.03 * body_wobble(x, y, z)
    hu = np.full(shape, -1000.0, np.float32)
    hu[r_body < 1.0] = -100.0
    fat_depth = rng.uniform(0.08, 0.14)
    hu[r_body < 1.0 - fat_depth] = 40.0
    pockets = _smooth_field(rng, 5, (25.0, 50.0))
    hu[(r_body < 0.8) & (pockets(x, y, z) > 0.45)] = -90.0
    spine_y = -body_b * 0.55
    r_spine = np.sqrt((x / (17.0 * BODY_SCALE)) ** 2 + ((y - spine_y) / (15.0 * BODY_SCALE)) ** 2)
    hu[r_spine < 1.0] = 700.0
    hu[r_spine < 0.7] = 250.0

    label = np.zeros(shape, np.uint8)
    for value, (centre, axes) in _ORGANS.items():
        c = BODY_SCALE * (np.asarray(centre) + rng.normal(0, 5.0, 3))
        ax = BODY_SCALE * np.asarray(axes) * rng.uniform(0.85, 1.15, 3)
        theta = rng.uniform(-0.35, 0.35)  # rotation about S (rad)
        ct, st = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
        u, v = ct * dx + st * dy, -st * dx + ct * dy
        d = (u / ax[0]) ** 2 + (v / ax[1]) ** 2 + (dz / ax[2]) ** 2
        deform = _smooth_field(rng, 4, (30.0, 70.0))
        inside = (d < 1.6) & (r_body < 1.0 - fat_depth)
        full = [np.broadcast_to(t, shape)[inside] for t in (dx, dy, dz)]
        inside[inside] = np.sqrt(d[inside]) < 1.0 + 0.18 * deform(*full)
        label[inside] = value
    for value in DEMO_LABELS:
        hu[label == value] = ORGAN_HU[value] + rng.normal(0, 6.0)

    bias = _smooth_field(rng, 3, (150.0, 300.0))
    inside_body = r_body < 1.0
    hu[inside_body] += 20.0 * bias(x, y, z)[inside_body]
    hu += rng.normal(0, 12.0, size=shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, affine


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, *, is_label: bool) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if not is_label:
        img.header["descrip"] = b"unet_pipeline synthetic CT (HU)"
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_demo_cohort(out_dir: str | Path, n_cases: int = 12, seed: int = 0) -> list[str]:
    """Write ``images/<case>.nii.gz`` (int16 HU), ``labels/<case>.nii.gz`` (uint8), ``dataset.json``.

    Returns the case ids (``demo_000``, ...). Each file is written atomically; ``dataset.json``
    last, so its presence means the cohort is complete.
    """
    out = Path(out_dir)
    ids = demo_case_ids(int(n_cases))
    for i, cid in enumerate(ids):
        image, label, affine = make_demo_case(i, seed)
        _save_nifti(image, affine, out / "images" / f"{cid}.nii.gz", is_label=False)
        _save_nifti(label, affine, out / "labels" / f"{cid}.nii.gz", is_label=True)
    dataset = {
        "name": "unet_pipeline synthetic abdomen CT",
        "description": f"Synthetic abdominal CT cohort written by unet_pipeline.demo (seed {seed})",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: value for value, name in DEMO_LABELS.items()}},
        "numTraining": len(ids),
        "file_ending": ".nii.gz",
        "training": [{"image": f"./images/{cid}.nii.gz", "label": f"./labels/{cid}.nii.gz"} for cid in ids],
    }
    save_json(dataset, out / "dataset.json")
    return ids
