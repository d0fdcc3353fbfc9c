"""The conda environment files: parse, pin what pyproject.toml declares, and reach the package.

Conda itself cannot run here, so this checks what ``--use-conda`` would build: every rule names an
existing env file; every env pins each runtime dependency of ``pyproject.toml`` with ``==``; each
pin satisfies pyproject's range and is the version installed in this (tested) environment, so it
exists on PyPI; and the rule scripts make ``unet_pipeline`` importable from any directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
ENVS = sorted((REPO / "workflow" / "envs").glob("*.yaml"))


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _pins(env_file: Path) -> dict[str, str]:
    env = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    assert isinstance(env, dict) and env.get("dependencies"), f"{env_file}: no dependencies"
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                name, sep, version = line.partition("==")
                assert sep, f"{env_file}: pip requirement {line!r} is not pinned with =="
                pins[canonicalize_name(name)] = version
    return pins


def test_every_rule_names_an_existing_env_file():
    """Every rule that runs a script names an env file; rules with a ``run:`` block (the barrier
    rules, which only write a list of case ids) run inside Snakemake itself, where Snakemake
    allows no ``conda:`` directive."""
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text(encoding="utf-8")
        blocks = re.split(r"^(?=rule \w+:)", text, flags=re.M)[1:]
        n_rules = sum(1 for block in blocks if not re.search(r"^    run:", block, flags=re.M))
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(envs) == n_rules, f"{smk.name}: {n_rules} rules, {len(envs)} conda: directives"
        for env in envs:
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env} missing"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_match_pyproject_and_installed_versions(env_file):
    pins = _pins(env_file)
    required = _pyproject_requirements()
    required.pop("snakemake", None)  # the workflow engine runs the env, it is not needed inside it
    missing = sorted(set(required) - set(pins))
    assert not missing, f"{env_file.name} lacks runtime dependencies of pyproject.toml: {missing}"
    for name, version in pins.items():
        if name in required:
            assert required[name].specifier.contains(version, prereleases=True), \
                f"{env_file.name}: {name}=={version} outside pyproject's {required[name]}"
        installed = metadata.version(name)
        assert installed.split("+")[0] == version, f"{env_file.name}: {name}=={version}, tested with {installed}"
    python = [d for d in yaml.safe_load(env_file.read_text(encoding="utf-8"))["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python and python[0].split("=", 1)[1] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_rule_scripts_make_the_package_importable_from_anywhere(tmp_path):
    """Each script puts the repository root on sys.path from its own location (snakemake.scriptdir)."""
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert scripts
    for script in scripts:
        assert "sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))" in script.read_text(encoding="utf-8"), script.name
    # Without site-packages (-S: no installed copy of the package) and from another directory.
    probe = ("import sys, types; from pathlib import Path; "
             f"snakemake = types.SimpleNamespace(scriptdir={str(REPO / 'workflow' / 'scripts')!r}); "
             "sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1])); "
             "import unet_pipeline; print(unet_pipeline.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", errors="replace", check=True)
    assert Path(out.stdout.strip()).resolve().parent == REPO / "unet_pipeline"
