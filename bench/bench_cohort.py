"""Benchmark: building the workflow's DAG for cohorts of thousands of cases (``snakemake -n``).

A cohort of N cases is written to a temporary folder: tiny labelled NIfTI cases (8 x 8 x 4
voxels: int16 HU image, uint8 label with classes 1 and 2; written once with nibabel and copied
byte for byte) and, for a few hundred of them, tiny unlabelled DICOM series instead (4 axial
slices of 8 x 8, written with SimpleITK's GDCM writer, so pydicom is not needed). A copy of
``config/config.yaml`` (the template) points at it (``cohort.images``/``labels``/``label_names``).
Then, per cohort size:

* ``snakemake -n`` with the local profile and with the Slurm profile (the Slurm plugin's dry run
  needs no cluster: nothing is submitted): wall seconds, CPU seconds of the child process, jobs
  per rule and group jobs per group;
* the start-up of one cluster-style job (largest size only): the command a Slurm job step runs,
  ``snakemake --target-jobs import_case:case=<id> --allowed-rules import_case --cores 1 --mode
  remote``, once as a dry run (parse the Snakefile, discover and split the cohort, build the
  job's own DAG: all it does before its own work) and once for real (the tiny import itself
  adds the rule script's start); plus discovery alone (:func:`unet_pipeline.cohort.workflow_cases`)
  timed in this process.

Targets (2 CPU cores): ``snakemake -n`` of 1,000 cases under 10 s and of 4,000 under 40 s, with
either profile. The machine's load shows in the wall time, so the CPU time is reported too.
Run ``python bench/bench_cohort.py [--quick]``: 1,000 and 4,000 cases, 300 of them DICOM series
(quick: 200 and 1,000 cases, 50 of them DICOM); prints a JSON dict. :func:`dry_run` and
:func:`write_cohort` are also used by ``tests/workflow/test_cohort_scale.py``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

__all__ = ["write_cohort", "write_config", "dry_run", "job_startup", "run", "table", "TARGET_S"]

ROOT = Path(__file__).resolve().parents[1]
#: cases -> seconds allowed for ``snakemake -n`` (either profile, 2 cores)
TARGET_S = {1000: 10.0, 4000: 40.0}
SHAPE = (8, 8, 4)  # voxels (x, y, z) of every generated case
LABEL_NAMES = {1: "organ_a", 2: "organ_b"}


def _nifti_bytes(data: np.ndarray, spacing_mm: tuple[float, float, float]) -> bytes:
    import nibabel as nib

    affine = np.diag([*spacing_mm, 1.0])
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1)


def _write_dicom_series(folder: Path, hu: np.ndarray, study_uid: str) -> None:
    """One CT series, ``hu`` ``(slices, rows, columns)`` in HU, 0.8 mm pixels, 2.5 mm apart."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = f"2.25.{uuid.uuid4().int}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, plane in enumerate(hu):
        image = sitk.GetImageFromArray((plane + 1024).astype(np.int16))  # stored value = HU + 1024
        image.SetSpacing((0.8, 0.8))
        for tag, value in {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": study_uid, "0020|000e": series_uid, "0020|0011": "1", "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.5 * k:.2f}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.8\\0.8",
            "0018|0050": "2.5", "0028|1052": "-1024", "0028|1053": "1",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(image)


def write_cohort(root: str | Path, n_labelled: int, n_dicom: int = 0, n_unlabelled: int = 0) -> dict:
    """Write a cohort under ``root``: ``images/`` and ``labels/`` (``case_00000.nii.gz``, ...).

    ``n_labelled`` NIfTI cases with labels, ``n_unlabelled`` NIfTI images without one
    (``new_00000.nii.gz``, ...) and ``n_dicom`` unlabelled DICOM series, one per sub-folder
    ``images/dcm_00000/`` (case id = folder name). Returns the folders, the counts and the
    seconds it took.
    """
    start = time.perf_counter()
    root = Path(root)
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    hu = (-1000 + 60 * x + 40 * y + 10 * z).astype(np.int16)  # (x, y, z), HU, never constant
    label = np.zeros(SHAPE, np.uint8)
    label[2:5, 2:5, 1:3] = 1
    label[5:7, 5:7, 1:3] = 2
    image_bytes = _nifti_bytes(hu, (0.8, 0.8, 2.5))
    label_bytes = _nifti_bytes(label, (0.8, 0.8, 2.5))
    for i in range(n_labelled):
        (images / f"case_{i:05d}.nii.gz").write_bytes(image_bytes)
        (labels / f"case_{i:05d}.nii.gz").write_bytes(label_bytes)
    for i in range(n_unlabelled):
        (images / f"new_{i:05d}.nii.gz").write_bytes(image_bytes)
    study_uid = f"2.25.{uuid.uuid4().int}"
    for i in range(n_dicom):
        _write_dicom_series(images / f"dcm_{i:05d}", hu.transpose(2, 1, 0), study_uid)  # (z, y, x) slices
    return {"images": str(images), "labels": str(labels), "n_labelled": n_labelled,
            "n_unlabelled": n_unlabelled + n_dicom, "n_dicom": n_dicom,
            "write_s": round(time.perf_counter() - start, 2)}


def write_config(workdir: str | Path, cohort: dict) -> Path:
    """``workdir/config/config.yaml``: the shipped template, pointed at ``cohort``."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    config["cohort"].update(images=cohort["images"], labels=cohort["labels"], label_names=dict(LABEL_NAMES))
    path = Path(workdir) / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _snakemake(workdir: Path, args: list[str], timeout: int) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run Snakemake on the repository's Snakefile in ``workdir``: (process, wall s, child CPU s)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def _job_stats(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's "Job stats" table (the last one printed)."""
    tables = output.split("Job stats:")
    counts: dict[str, int] = {}
    if len(tables) > 1:
        for line in tables[-1].splitlines()[3:]:
            found = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
            if not found:
                break
            counts[found.group(1)] = int(found.group(2))
    return counts


def dry_run(workdir: str | Path, profile: str, *extra: str, timeout: int = 3600) -> dict:
    """``snakemake -n`` with ``workflow/profiles/<profile>``: seconds, jobs per rule, group jobs.

    Returns ``wall_s``, ``cpu_s`` (the child's user + system time), ``returncode``, ``jobs``
    (rule -> jobs, with ``total``), ``groups`` (group -> group jobs) and, on failure, ``error``
    (the end of Snakemake's output).
    """
    workdir = Path(workdir)
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)
    proc, wall, cpu = _snakemake(workdir, ["-n", "--workflow-profile", str(ROOT / "workflow" / "profiles" / profile),
                                           *extra], timeout)
    output = proc.stdout + proc.stderr
    groups: dict[str, int] = {}
    for name in re.findall(r"Group job (\w+) ", output):
        groups[name] = groups.get(name, 0) + 1
    result = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "returncode": proc.returncode,
              "jobs": _job_stats(output), "groups": groups}
    if proc.returncode != 0:
        result["error"] = output[-3000:]
    return result


def job_startup(workdir: str | Path, case_id: str) -> dict:
    """Start-up of one cluster-style job: discovery in-process, the job step's command dry and real."""
    import yaml

    from unet_pipeline.cohort.workflow_cases import workflow_cases

    workdir = Path(workdir)
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text(encoding="utf-8"))
    start = time.perf_counter()
    workflow_cases(config, str(workdir / "results"))
    discovery = time.perf_counter() - start
    step = ["--target-jobs", f"import_case:case={case_id}", "--allowed-rules", "import_case", "--cores", "1",
            "--mode", "remote"]
    dry, dry_wall, dry_cpu = _snakemake(workdir, [*step, "-n"], 600)
    real, real_wall, real_cpu = _snakemake(workdir, step, 600)
    done = (workdir / "results" / "imported" / case_id / "image.nii.gz").exists()
    return {"discovery_s": round(discovery, 2),
            "before_own_work_s": round(dry_wall, 2), "before_own_work_cpu_s": round(dry_cpu, 2),
            "one_job_s": round(real_wall, 2), "one_job_cpu_s": round(real_cpu, 2),
            "ok": dry.returncode == 0 and real.returncode == 0 and done}


def run(quick: bool = False) -> dict:
    """Time ``snakemake -n`` per cohort size and profile, and one job's start-up; return the figures."""
    sizes = (200, 1000) if quick else (1000, 4000)  # cases, DICOM series included
    n_dicom = 50 if quick else 300
    results: dict = {"sizes": [], "n_dicom": n_dicom, "targets_s": {str(k): v for k, v in TARGET_S.items()},
                     "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        for n in sizes:
            cohort = write_cohort(Path(tmp) / f"cohort_{n}", n - n_dicom, n_dicom=n_dicom)
            work = Path(tmp) / f"work_{n}"
            write_config(work, cohort)
            entry = {"cases": n, "labelled": n - n_dicom, "dicom": n_dicom, "write_s": cohort["write_s"],
                     "target_s": TARGET_S.get(n)}
            for profile in ("local", "slurm"):
                print(f"[bench_cohort] {n} cases, snakemake -n, {profile} profile ...", file=sys.stderr, flush=True)
                entry[profile] = dry_run(work, profile)
            if n == sizes[-1]:
                entry["job_startup"] = job_startup(work, "case_00000")
            results["sizes"].append(entry)
    results["load_average_after"] = list(os.getloadavg())
    return results


def table(result: dict) -> list[tuple[str, str, str]]:
    """Rows (what, measured, target) for bench/run.py's summary table."""
    rows = []
    for size in result.get("sizes", []):
        for profile in ("local", "slurm"):
            fig = size.get(profile, {})
            measured = f"{fig.get('wall_s')} (CPU {fig.get('cpu_s')})" if fig.get("returncode") == 0 else "failed"
            target = f"< {size['target_s']}" if size.get("target_s") else ""
            rows.append((f"snakemake -n, {size['cases']} cases ({size['dicom']} DICOM), {profile} profile (s)",
                         measured, target))
        startup = size.get("job_startup")
        if startup:
            rows.append((f"one cluster job, {size['cases']} cases: start-up before its own work (s)",
                         f"{startup['before_own_work_s']} (discovery {startup['discovery_s']})", ""))
            rows.append((f"one cluster job, {size['cases']} cases: one import_case job in all (s)",
                         f"{startup['one_job_s']}", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 and 1,000 cases (50 DICOM) instead of 1,000 "
                                                             "and 4,000 (300 DICOM)")
    args = parser.parse_args()
    result = run(quick=args.quick)
    print(json.dumps(result, indent=2))
    width = max(len(r[0]) for r in table(result))
    for label, value, target in table(result):
        print(f"{label.ljust(width)}  {value}  {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
