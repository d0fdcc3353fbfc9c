"""Shared fixtures: tiny synthetic CT volumes written as real NIfTI files; the test markers.

Markers (registered in pyproject.toml) say what a test costs: ``workflow`` (starts Snakemake:
every test under ``tests/workflow/``, marked here by folder), ``slow`` (trains a model or runs the
full demo) and ``cluster`` (starts a real Slurm cluster: every test under ``tests/cluster/``).
Cluster tests are opt-in: without ``--run-cluster`` or ``UNET_PIPELINE_CLUSTER_TESTS=1`` they are
skipped, so a plain ``pytest`` never installs or starts anything on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTS = Path(__file__).resolve().parent
CLUSTER_OPT_IN = "UNET_PIPELINE_CLUSTER_TESTS"


def pytest_addoption(parser):
    parser.addoption("--run-cluster", action="store_true", default=False,
                     help="run the tests marked 'cluster' (as root on Debian they install and start a "
                          f"one-node Slurm cluster); same as {CLUSTER_OPT_IN}=1")


def cluster_opted_in(config) -> bool:
    return bool(config.getoption("--run-cluster")) or os.environ.get(CLUSTER_OPT_IN, "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    """Mark by folder (``workflow``, ``cluster``) and skip cluster tests unless opted in."""
    skip_cluster = pytest.mark.skip(
        reason=f"cluster test: opt in with --run-cluster or {CLUSTER_OPT_IN}=1 (as root on Debian it "
               "installs and starts Slurm, munge and MariaDB)")
    for item in items:
        path = Path(str(item.fspath)).resolve()
        folder = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
        if folder in ("workflow", "cluster"):
            item.add_marker(getattr(pytest.mark, folder))
        if "cluster" in item.keywords and not cluster_opted_in(config):
            item.add_marker(skip_cluster)


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
    """Tiny cases through import -> fingerprint (on ``plan_cases``) -> plan -> preprocess -> slice under ``root``.

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
    stages.fingerprint([(c, root / "imported" / c) for c in plan_cases], root / "fingerprint.json", labels=labels)
    stages.plan(root / "fingerprint.json", plan, target_spacing_mm=list(spacing[:2]), patch_size=list(patch_size))
    for cid in shapes:
        pre = root / "preprocessed" / cid
        stages.preprocess(cid, root / "imported" / cid / "image.nii.gz", plan, pre)
        stages.preprocess_label(root / "imported" / cid / "label.nii.gz", pre / "meta.json", pre / "label.npy")
        stages.slice_case(pre, plan, root / "slices" / cid)
    return plan
