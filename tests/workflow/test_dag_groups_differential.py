"""The linear group check (``unet_pipeline.dag_groups``) against Snakemake's own, on real DAGs.

A small generated cohort is dry-run with the local profile plus job groups on the command line,
once with the workflow's linear check (the default) and once with Snakemake's own check
(``UNET_PIPELINE_GROUP_CHECK=snakemake``). For each grouping both must accept, or both refuse:
the Slurm profile's groups (with and without its ``group-components``), and groups that a path
of jobs outside them leaves and enters again, which Snakemake must refuse. Each run's log names
the check that was active, so neither side can silently be the other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.bench_cohort import dry_run, write_cohort, write_config
from unet_pipeline.dag_groups import GROUP_CHECK_ENV

REPO = Path(__file__).resolve().parents[2]
SLURM_PROFILE = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8"))
PROFILE_GROUPS = ["--groups", *SLURM_PROFILE["groups"]]
PROFILE_COMPONENTS = ["--group-components", *(f"{g}={n}" for g, n in SLURM_PROFILE["group-components"].items())]
ALL_IN_ONE = ["--group-components", "bad=100000"]  # every component of group "bad" in one group job

#: name -> (extra Snakemake arguments, whether Snakemake must accept the groups)
CASES = {
    # the Slurm profile as shipped: per-case stages bundled 20 cases a job
    "slurm_profile": ([*PROFILE_GROUPS, *PROFILE_COMPONENTS], True),
    # the same groups, one case per group job
    "slurm_profile_one_case_per_job": (PROFILE_GROUPS, True),
    # a case's infer and import_case are not connected directly: each is a group job of its own
    "import_and_infer": (["--groups", "import_case=bad", "infer=bad"], True),
    # ... merged into one: infer -> train (not in the group) -> ... -> import_case of a training case
    "import_and_infer_merged": (["--groups", "import_case=bad", "infer=bad", *ALL_IN_ONE], False),
    # reassemble reads preprocess's meta.json, and infer (not in the group) in between: refused unmerged
    "preprocess_and_reassemble": (["--groups", "preprocess=bad", "reassemble=bad"], False),
    # a case's evaluate with its own import_label: nothing outside the group leads back into it
    "import_label_and_evaluate": (["--groups", "import_label=bad", "evaluate=bad"], True),
    # ... but merged over all cases: evaluate -> reassemble -> infer -> train -> ... -> import_label
    "import_label_and_evaluate_merged": (["--groups", "import_label=bad", "evaluate=bad", *ALL_IN_ONE], False),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dag_groups")
    write_config(root / "work", write_cohort(root / "cohort", 8, n_unlabelled=1))
    return root / "work"


@pytest.mark.parametrize("name", sorted(CASES))
def test_linear_check_accepts_and_refuses_what_snakemakes_own_does(workdir, name, monkeypatch):
    extra, accepted = CASES[name]
    results = {}
    for check in ("linear", "snakemake"):
        if check == "snakemake":
            monkeypatch.setenv(GROUP_CHECK_ENV, "snakemake")
        else:
            monkeypatch.delenv(GROUP_CHECK_ENV, raising=False)
        result = dry_run(workdir, "local", *extra, timeout=600)
        log = result.get("error", "") if result["returncode"] else ""
        results[check] = result
        if not accepted:
            assert result["returncode"] != 0, f"{check} check accepted {name}"
            assert "depends on" in log, log  # refused for the group, not for something else
        else:
            assert result["returncode"] == 0, f"{check} check refused {name}:\n{result.get('error')}"
            # the groups were formed (a Snakemake that ignores --groups on a local run compares nothing)
            assert result["groups"], f"no group jobs planned for {name}: this Snakemake ignores --groups here"
    assert results["linear"]["groups"] == results["snakemake"]["groups"]
    assert results["linear"]["jobs"] == results["snakemake"]["jobs"]


def test_each_run_logs_the_check_it_used(workdir, monkeypatch):
    """One line per process names the active check (else the comparison above could compare a check with itself)."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", *PROFILE_GROUPS]
    for env, expected in (({}, "group jobs: checked by unet_pipeline.dag_groups, linear"),
                          ({GROUP_CHECK_ENV: "snakemake"}, f"group jobs: checked by Snakemake's own ({GROUP_CHECK_ENV}=snakemake)")):
        environ = {k: v for k, v in __import__("os").environ.items() if k != GROUP_CHECK_ENV} | env
        proc = subprocess.run(base, cwd=workdir, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=600, env=environ)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert out.count(expected) == 1, out[-3000:]
