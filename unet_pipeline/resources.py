"""Job resources sized from the data (standard library only: used by the Snakefile).

Memory of a per-case job is estimated from the voxel count in the NIfTI header (read from the
first 352 bytes, gzip or not), runtime of training from epochs x iterations. Both grow with
Snakemake's ``attempt`` so a retried job asks for more.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping
from pathlib import Path

from .schema import section_defaults

__all__ = ["nifti_voxel_count", "volume_mem_mb", "training_runtime_min", "job_mem_mb", "job_runtime_min"]


def nifti_voxel_count(path: str | Path) -> int | None:
    """Number of voxels from a NIfTI-1 header (``.nii`` or ``.nii.gz``); None when unreadable."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(348)
    except OSError:
        return None
    if len(raw) < 348:
        return None
    for endian in "<>":
        if struct.unpack(f"{endian}i", raw[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", raw[40:56])
            n = max(1, min(int(dims[0]), 7))
            count = 1
            for d in dims[1:n + 1]:
                count *= max(1, int(d))
            return count
    return None


def volume_mem_mb(path: str | Path | None, *, attempt: int = 1, base_mb: int = 1000,
                  bytes_per_voxel: float = 24.0) -> int:
    """Memory (MB) for a job holding one volume: a base plus ``bytes_per_voxel`` per voxel, x attempt.

    24 bytes per voxel covers the stored volume, its float32 resampled copy and the uint8
    labels with room to spare; the working set of the chunked stages is far smaller.
    """
    voxels = nifti_voxel_count(path) if path and str(path).lower().endswith((".nii", ".nii.gz")) else None
    need = base_mb + (voxels or 512 * 512 * 300) * bytes_per_voxel / 1e6
    return int(need * max(1, attempt))


def training_runtime_min(training: Mapping, *, attempt: int = 1, seconds_per_iteration: float = 2.0,
                         base_min: int = 10) -> int:
    """Wall time (minutes) for training: ``epochs x iterations_per_epoch x seconds_per_iteration``.

    The default of 2 s per iteration is a CPU figure; on a GPU it is generous. With
    ``max_minutes`` the estimate is at most that budget plus 10 %. A job cut off at the limit
    resumes from its checkpoint when resubmitted.
    """
    defaults = section_defaults("training")
    iterations = int(training.get("epochs", defaults["epochs"])) * int(
        training.get("iterations_per_epoch", defaults["iterations_per_epoch"]))
    minutes = iterations * seconds_per_iteration / 60
    if training.get("max_minutes"):  # the run ends by itself when its budget is spent
        minutes = min(minutes, 1.1 * float(training["max_minutes"]))
    return int((base_min + minutes) * max(1, attempt))


def job_mem_mb(wildcards, attempt: int) -> int:
    """Snakemake resource: memory of a rule that holds no whole volume (tables, the plan, the
    report): 4 GB, times the attempt."""
    return 4000 * int(attempt)


def job_runtime_min(wildcards, attempt: int) -> int:
    """Snakemake resource: wall time of a per-case or table rule, 15 minutes times the attempt
    (a group job adds up its members')."""
    return 15 * int(attempt)
