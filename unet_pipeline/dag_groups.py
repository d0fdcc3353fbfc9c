"""A linear-time check of Snakemake group jobs, for cohorts of thousands of cases on a cluster.

The Slurm profile bundles the per-case jobs of each stage into group jobs (``groups`` and
``group-components`` in ``workflow/profiles/slurm/config.yaml``). Snakemake 9 then checks that no
group depends on itself, i.e. that no path of jobs leaves a group and enters it again (such a
group could never start). Its check (``DAG.validate_group`` on every group, then
``DAG._check_groups``) walks, for every job of a group and again for every other member of that
group, through *all* jobs upstream of it. A segmentation job reaches ``train`` and through it every
training case, so the check costs members x group size x cohort: about 3 minutes for 1,000 cases
with groups of 20 cases, and hours for 4,000.

:func:`self_dependent_group` answers the same question in one pass over the DAG: contract each
group to one node; a group depends on itself exactly when that contracted graph has a cycle
through it. (It also reports two groups that wait for each other through members that are not
connected to each other, which Snakemake's walk misses but which would deadlock just the same.)
:func:`install_linear_group_check` puts it in place of Snakemake's two checks (the workflow calls
it when it loads; without groups the check returns at once). This module imports only the
standard library until that call.

The replacement touches two private methods of Snakemake's ``DAG``, so ``pyproject.toml`` allows
only the Snakemake versions that have them (``snakemake>=9.4,<10``; 9.0 to 9.3 check groups inside
``DAG.update_groups``), and
``tests/workflow/test_dag_groups_differential.py`` checks, on small real DAGs of this workflow,
that it accepts and refuses exactly the groups Snakemake's own check does. With another major
version, a ``DAG`` without those methods, or ``UNET_PIPELINE_GROUP_CHECK=snakemake`` in the
environment, Snakemake's own check stays. Which check is active is logged once per process.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping

__all__ = ["self_dependent_group", "install_linear_group_check", "GROUP_CHECK_ENV"]

_GROUP = object()  # tags contracted group nodes so they never collide with jobs
#: Environment variable: ``snakemake`` keeps Snakemake's own group check (the fallback).
GROUP_CHECK_ENV = "UNET_PIPELINE_GROUP_CHECK"
_logged: list[str] = []  # the message logged in this process (once)
_snakemakes: dict[str, object] = {}  # Snakemake's own DAG methods, kept when replaced


def self_dependent_group(dependencies: Mapping[Hashable, Iterable[Hashable]],
                         group_of: Mapping[Hashable, Hashable]) -> tuple[Hashable, list[Hashable]] | None:
    """Find a group that depends on itself, in time linear in the jobs and dependencies.

    Parameters
    ----------
    dependencies
        Job -> the jobs it depends on (its inputs' producers), for every job of the DAG.
    group_of
        Job -> its group's key, for the jobs that belong to a group.

    Returns
    -------
    tuple or None
        ``(group key, jobs outside the group on the path back into it)`` for one such group, or
        None when every group can run as one unit.
    """
    def node(job: Hashable) -> Hashable:
        key = group_of.get(job, _GROUP)
        return job if key is _GROUP else (_GROUP, key)

    edges: dict[Hashable, set[Hashable]] = {}
    for job, deps in dependencies.items():
        source = node(job)
        targets = edges.setdefault(source, set())
        for dep in deps:
            target = node(dep)
            if target != source:
                targets.add(target)
    state: dict[Hashable, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if start in state:
            continue
        state[start] = 1
        path = [start]
        stack = [iter(edges[start])]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(target) == 1:
                cycle = path[path.index(target):]
                group = next((n for n in cycle if isinstance(n, tuple) and len(n) == 2 and n[0] is _GROUP), None)
                if group is not None:  # (a cycle of plain jobs is not a group's problem)
                    at = cycle.index(group)
                    return group[1], cycle[at + 1:] + cycle[:at]
            elif target not in state:
                state[target] = 1
                path.append(target)
                stack.append(iter(edges.get(target, ())))
    return None


def install_linear_group_check() -> bool:
    """Put :func:`self_dependent_group` in place of Snakemake's group checks (Snakemake 9).

    Returns True when in place; False (Snakemake's own checks stay) for another major version,
    a DAG class without the expected methods, or ``UNET_PIPELINE_GROUP_CHECK=snakemake``. Logs
    which check is active, once per process, through Snakemake's logger.
    """
    import snakemake
    import snakemake.api  # noqa: F401  (imports snakemake.dag in the order that avoids an import cycle)
    from snakemake.dag import DAG

    version = str(snakemake.__version__)
    if os.environ.get(GROUP_CHECK_ENV, "").strip().lower() == "snakemake":
        for name, method in _snakemakes.items():  # replaced earlier in this process: put them back
            setattr(DAG, name, method)
        DAG._linear_group_check = False
        return _active(False, f"Snakemake's own ({GROUP_CHECK_ENV}=snakemake)")
    if not version.startswith("9."):
        return _active(False, f"Snakemake's own (Snakemake {version}: the linear check is for 9.x)")
    if getattr(DAG, "_linear_group_check", False):
        return _active(True, f"unet_pipeline.dag_groups, linear (Snakemake {version})")
    if not all(callable(getattr(DAG, name, None)) for name in ("_check_groups", "validate_group", "update_groups")):
        return _active(False, f"Snakemake's own (Snakemake {version} lacks the DAG methods it replaces)")
    _patch(DAG)
    return _active(True, f"unet_pipeline.dag_groups, linear (Snakemake {version})")


def _active(installed: bool, which: str) -> bool:
    """Log ``which`` group check is active (once per process); return ``installed``."""
    if not _logged:
        from snakemake.logging import logger

        _logged.append(f"group jobs: checked by {which}")
        (logger.info if installed else logger.warning)(_logged[0])
    return installed


def _patch(DAG) -> None:
    """Replace ``DAG._check_groups`` and ``DAG.validate_group`` (see the module docstring)."""
    from snakemake.exceptions import WorkflowError

    _snakemakes.update(_check_groups=DAG._check_groups, validate_group=DAG.validate_group)
    snakemake_check = DAG._check_groups

    def check_groups(dag) -> None:
        try:
            groups, dependencies = dag._group, dag._dependencies
        except AttributeError:  # internals changed: Snakemake's own (slow) check
            return snakemake_check(dag)
        if not groups:
            return None
        found = self_dependent_group(dependencies, {job: id(group) for job, group in groups.items()})
        if found is None:
            return None
        key, outside = found
        group = next(g for g in groups.values() if id(g) == key)
        rules = sorted({getattr(getattr(j, "rule", None), "name", str(j)) for j in outside if not isinstance(j, tuple)})
        raise WorkflowError(
            f"Group {group.groupid} depends on itself: a path of jobs leaves it (through rule(s) "
            f"{', '.join(rules) or 'of other groups'}) and enters it again, so the group could never start. "
            "Add those rules to the group or take the group's rules on that path out of it.")

    # validate_group checks each group before group-components merges them; a path that leaves
    # a group and enters it again still does so once groups are merged, so the check of the
    # merged groups above covers it.
    DAG._check_groups = check_groups
    DAG.validate_group = lambda dag, group: None
    DAG._linear_group_check = True
