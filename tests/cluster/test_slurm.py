"""The cluster path on a real Slurm: runs ``tests/cluster/slurm.sh`` (see there) as a test.

Unless a Slurm controller is already up (then it uses that cluster and leaves it running), the
script installs and starts a one-node Slurm cluster with accounting and a fake GPU through the
project's ``tests/cluster/start-slurm.sh`` (copied from the shared cluster scripts), runs the demo workflow on
a tiny config through ``snakemake --executor slurm`` with the project's Slurm profile, checks the
outputs and that every job was a COMPLETED Slurm job, and then stops the cluster it started with
``tests/cluster/stop-slurm.sh``. It is opt-in: it runs only with ``pytest --run-cluster`` or
``UNET_PIPELINE_CLUSTER_TESTS=1`` (``.ci/run`` sets it; see ``tests/conftest.py``), so a plain
``pytest`` never installs system packages. Opted in, it needs root on Debian/Ubuntu (apt-get);
otherwise it is skipped, naming what is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "cluster" / "slurm.sh"
SLURM_SCRIPTS = REPO / "tests" / "cluster"  # start-slurm.sh, stop-slurm.sh: the project's own
TIMEOUT_S = 1200  # apt installs + cluster start + the workflow; the script stops Snakemake at 900 s
SUMMARY = re.compile(r"SLURM-TEST OK: (\d+) slurm jobs COMPLETED \((\d+) rule jobs\) in (\d+) s")


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "needs root: it installs and starts the Slurm daemons (run as root, or skip)"
    if shutil.which("apt-get") is None or not Path("/etc/debian_version").exists():
        return "needs a Debian/Ubuntu machine with apt-get"
    if not (REPO / ".venv" / "bin" / "python").exists():
        return f"needs the project's virtual environment at {REPO / '.venv'}"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    missing = [name for name in ("start-slurm.sh", "stop-slurm.sh") if not (SLURM_SCRIPTS / name).is_file()]
    if missing:
        return f"the Slurm scripts are absent: no {', '.join(missing)} in {SLURM_SCRIPTS}"
    return None


def _run_script(timeout_s: int) -> tuple[int, str]:
    """Run slurm.sh; on timeout send SIGTERM so its trap stops Snakemake and the daemons."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env, text=True, encoding="utf-8", errors="replace",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        out += f"\n(test: slurm.sh stopped after {timeout_s} s)"
    return proc.returncode, out


@pytest.mark.cluster
def test_workflow_runs_through_real_slurm():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    rc, out = _run_script(TIMEOUT_S)
    print(out[-8000:])
    assert rc == 0, f"slurm.sh exited with {rc}:\n{out[-6000:]}"
    found = SUMMARY.search(out)
    assert found, f"no summary line in the output:\n{out[-3000:]}"
    slurm_jobs, rule_jobs = int(found.group(1)), int(found.group(2))
    assert slurm_jobs > 0
    # Grouped per-case jobs share a Slurm job, so there are fewer Slurm jobs than rule jobs.
    assert slurm_jobs < rule_jobs, (slurm_jobs, rule_jobs)
    assert "not COMPLETED" not in out
