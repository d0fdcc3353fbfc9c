"""Shared fixtures: tiny synthetic CT volumes written as real NIfTI files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_ct(shape=(24, 20, 6), spacing=(1.0, 1.0, 3.0), seed=0):
    """A small CT-like volume (int16 HU) with a box label (values 1, 2) in stored order (i, j, k)."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000, np.int16)
    body = (slice(2, shape[0] - 2), slice(2, shape[1] - 2), slice(None))
    image[body] = 40
    label = np.zeros(shape, np.uint8)
    label[5:12, 5:11, :] = 1
    label[14:19, 8:15, 1:] = 2
    image[label == 1] = 120
    image[label == 2] = 200
    image = (image + rng.normal(0, 10, shape)).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 20.0]
    return image, label, affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture
def ct_case(tmp_path):
    """Paths of a tiny CT image and its label: (image_path, label_path, image, label, affine)."""
    image, label, affine = make_ct()
    ip = save_nifti(tmp_path / "images" / "case_a.nii.gz", image, affine)
    lp = save_nifti(tmp_path / "labels" / "case_a.nii.gz", label, affine)
    return ip, lp, image, label, affine


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def prepare_cases(root: Path, shapes: dict[str, tuple[int, int, int]], labels: dict[int, str], *,
                  plan_cases: tuple[str, ...], spacing=(1.5, 1.5, 3.0), patch_size=(32, 32)) -> Path:
    """Tiny cases through import -> fingerprint (on ``plan_cases``) -> preprocess -> slice under ``root``.

    ``shapes``: case id -> stored ``(i, j, k)`` size of its synthetic CT. Returns the plan path;
    the stages' folders are ``root/imported``, ``root/preprocessed`` and ``root/slices``.
    """
    from unet_pipeline import stages

    for seed, (cid, shape) in enumerate(shapes.items()):
        image, label, affine = make_ct(shape=shape, spacing=spacing, seed=seed)
        ip = save_nifti(root / "src" / f"{cid}_img.nii.gz", image, affine)
        lp = save_nifti(root / "src" / f"{cid}_lab.nii.gz", label, affine)
        imp = root / "imported" / cid
        stages.import_case(cid, ip, lp, imp, labels=labels)
        stages.import_label(lp, imp / "image.nii.gz", imp / "label.nii.gz", labels=labels)
    plan = root / "plan.json"
    stages.fingerprint([(c, root / "imported" / c) for c in plan_cases], plan, labels=labels,
                       target_spacing_mm=list(spacing[:2]), patch_size=list(patch_size))
    for cid in shapes:
        pre = root / "preprocessed" / cid
        stages.preprocess(cid, root / "imported" / cid / "image.nii.gz", plan, pre)
        stages.preprocess_label(root / "imported" / cid / "label.nii.gz", pre / "meta.json", pre / "label.npy")
        stages.slice_case(pre, plan, root / "slices" / cid)
    return plan
