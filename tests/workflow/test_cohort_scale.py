"""A generated cohort of 150 labelled + 10 unlabelled cases, dry-run with both profiles: every
per-case rule plans one job per case it applies to, and the Slurm profile bundles them into group
jobs of 20 cases per stage. Guards the grouping and wildcard changes that keep DAG building
linear in the cohort (bench/bench_cohort.py times it) from silently dropping jobs."""

from __future__ import annotations

import math

import pytest

from bench.bench_cohort import dry_run, write_cohort, write_config

N_LABELLED, N_UNLABELLED = 150, 10


@pytest.fixture(scope="module")
def cohort_workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_scale")
    cohort = write_cohort(root / "cohort", N_LABELLED, n_unlabelled=N_UNLABELLED)
    write_config(root / "work", cohort)
    return root / "work"


@pytest.fixture(scope="module")
def planned(cohort_workdir):
    """Jobs per rule and group jobs of ``snakemake -n``, per profile."""
    return {profile: dry_run(cohort_workdir, profile, timeout=600) for profile in ("local", "slurm")}


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run_plans_every_case_of_a_generated_cohort(planned, profile):
    result = planned[profile]
    assert result["returncode"] == 0, result.get("error")
    jobs = result["jobs"]
    n_all = N_LABELLED + N_UNLABELLED
    n_test = jobs["evaluate"]
    assert 0 < n_test < N_LABELLED // 2  # test_fraction 0.25 of the labelled cases
    per_case = {
        "import_case": n_all, "import_label": N_LABELLED, "preprocess": n_all,
        "preprocess_label": N_LABELLED - n_test, "slice_case": N_LABELLED - n_test,  # training + validation
        "infer": n_test + N_UNLABELLED, "reassemble": n_test + N_UNLABELLED, "volumes": n_test + N_UNLABELLED,
    }
    once = ["training_cases_imported", "fingerprint", "plan", "training_cases_prepared", "train", "aggregate_metrics",
            "aggregate_volumes", "review", "report", "all"]
    assert jobs == {**per_case, "evaluate": n_test, **dict.fromkeys(once, 1),
                    "total": sum(per_case.values()) + n_test + len(once)}


def test_both_profiles_plan_the_same_jobs(planned):
    assert planned["local"]["jobs"] == planned["slurm"]["jobs"]


def test_only_the_slurm_profile_bundles_20_cases_per_group_job(planned):
    assert planned["local"]["groups"] == {}
    n_segmented = planned["slurm"]["jobs"]["infer"]
    n_all = N_LABELLED + N_UNLABELLED
    assert planned["slurm"]["groups"] == {"import_cases": math.ceil(n_all / 20), "prepare_cases": math.ceil(n_all / 20),
                                          "segment_cases": math.ceil(n_segmented / 20)}


def test_a_group_that_depends_on_itself_is_refused(cohort_workdir):
    """The workflow's own check of groups (unet_pipeline.dag_groups) still refuses a group that a
    path of jobs leaves and enters again: all import_case and infer jobs in one group, with train
    (outside it) in between."""
    result = dry_run(cohort_workdir, "slurm", "--groups", "import_case=bad", "infer=bad",
                     "--group-components", "bad=100000", timeout=600)
    assert result["returncode"] != 0
    assert "Group bad depends on itself" in result["error"]
