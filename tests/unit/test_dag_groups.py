"""The linear check of group jobs: hand-made DAGs (job -> the jobs it depends on) with known answers."""

from __future__ import annotations

import pytest

from unet_pipeline.dag_groups import GROUP_CHECK_ENV, install_linear_group_check, self_dependent_group


@pytest.mark.parametrize("dependencies, group_of, expected", [
    # no groups at all
    ({"a": ["b"], "b": []}, {}, None),
    # a chain inside one group, fed by an outside job
    ({"a": ["b"], "b": ["c"], "c": []}, {"a": "G", "b": "G"}, None),
    # a diamond of outside jobs under one grouped job
    ({"x": ["y", "z"], "y": ["w"], "z": ["w"], "w": []}, {"x": "G"}, None),
    # per-case stages as in the workflow: segment(case) -> train -> prepare(every case) -> import(every case)
    ({"seg1": ["train", "prep1"], "seg2": ["train", "prep2"], "train": ["prep1", "prep2"],
      "prep1": ["imp1"], "prep2": ["imp2"], "imp1": [], "imp2": []},
     {"seg1": "S", "seg2": "S", "prep1": "P", "prep2": "P", "imp1": "I", "imp2": "I"}, None),
    # a leaves group G through b and enters it again at c
    ({"a": ["b"], "b": ["c"], "c": []}, {"a": "G", "c": "G"}, ("G", ["b"])),
    # merged groups that wait for each other through members not connected to each other
    ({"a1": ["b1"], "b2": ["a2"], "b1": [], "a2": []}, {"a1": "G", "a2": "G", "b1": "H", "b2": "H"}, "G or H"),
])
def test_self_dependent_group(dependencies, group_of, expected):
    found = self_dependent_group(dependencies, group_of)
    if expected == "G or H":
        assert found is not None and found[0] in {"G", "H"}
    else:
        assert found == expected


def test_segment_group_reaching_its_own_import_is_found():
    """import and segment jobs in one group: segment -> train -> import leaves and re-enters it."""
    dependencies = {"seg": ["train", "imp_test"], "train": ["imp_train"], "imp_train": [], "imp_test": []}
    group, outside = self_dependent_group(dependencies, {"seg": "X", "imp_train": "X", "imp_test": "X"})
    assert group == "X" and outside == ["train"]


def test_long_chains_need_no_recursion():
    n = 200_000
    dependencies = {i: [i + 1] for i in range(n)} | {n: []}
    assert self_dependent_group(dependencies, {i: "G" for i in range(0, n, 2)}) is not None
    assert self_dependent_group(dependencies, {i: i // 2 for i in range(n)}) is None  # pairs (2k, 2k+1)


def test_install_is_idempotent():
    assert install_linear_group_check() is True
    assert install_linear_group_check() is True


def test_the_environment_keeps_snakemakes_own_check(monkeypatch):
    """The fallback: ``UNET_PIPELINE_GROUP_CHECK=snakemake`` puts Snakemake's own methods back."""
    import snakemake.api  # noqa: F401
    from snakemake.dag import DAG

    assert install_linear_group_check() is True
    assert DAG._check_groups.__module__ == "unet_pipeline.dag_groups"
    monkeypatch.setenv(GROUP_CHECK_ENV, "snakemake")
    assert install_linear_group_check() is False
    assert DAG._check_groups.__module__ == DAG.validate_group.__module__ == "snakemake.dag"
    monkeypatch.delenv(GROUP_CHECK_ENV)
    assert install_linear_group_check() is True
