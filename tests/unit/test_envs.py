"""The one lock (``constraints.txt``) and the conda environment files: pins inside pyproject's ranges.

Conda itself cannot run here, so this checks what ``--use-conda`` would build: every rule names an
existing env file; ``constraints.txt`` pins every dependency of ``pyproject.toml`` (runtime and
extras) with ``==`` inside pyproject's range; every env pins each runtime dependency with the same
version as ``constraints.txt`` and a Python that ``requires-python`` allows; and the rule scripts
make ``unet_pipeline`` importable from any directory. Nothing here compares with the versions
installed on the machine that runs the tests: any install that pyproject allows passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
ENVS = sorted((REPO / "workflow" / "envs").glob("*.yaml"))


CONSTRAINTS = REPO / "constraints.txt"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _pyproject_requirements(*, extras: bool = False) -> dict[str, list[Requirement]]:
    """Name -> its requirements in pyproject (a name may appear in several extras)."""
    project = _pyproject()
    lines = list(project["dependencies"])
    if extras:
        lines += [r for group in project["optional-dependencies"].values() for r in group]
    found: dict[str, list[Requirement]] = {}
    for line in lines:
        req = Requirement(line)
        found.setdefault(canonicalize_name(req.name), []).append(req)
    return found


def _constraints() -> dict[str, str]:
    pins = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt: {line!r} is not one == pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = specs[0].version
    return pins


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


def _outside(pins: dict[str, str], required: dict[str, list[Requirement]]) -> list[str]:
    return [f"{name}=={version} outside pyproject's {req}" for name, version in sorted(pins.items())
            for req in required.get(name, ()) if not req.specifier.contains(version, prereleases=True)]


def test_constraints_pin_every_dependency_inside_pyprojects_range():
    pins, required = _constraints(), _pyproject_requirements(extras=True)
    missing = sorted(set(required) - set(pins))
    assert not missing, f"constraints.txt lacks dependencies of pyproject.toml: {missing}"
    assert not _outside(pins, required), _outside(pins, required)


def test_the_pin_check_refuses_a_pin_outside_the_range():
    """The check above can fail: a pin below pyproject's floor is named."""
    assert _outside({"numpy": "1.20.0"}, {"numpy": [Requirement("numpy>=1.26")]}) == \
        ["numpy==1.20.0 outside pyproject's numpy>=1.26"]


def test_readme_and_ci_install_with_the_constraints():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for name, text in (("README.md", readme), (".ci/run", ci)):
        installs = re.findall(r"pip install[^\n`&]*-e [^\n`&]*", text)
        assert installs, f"{name}: no pip install -e"
        assert all("-c constraints.txt" in line for line in installs), f"{name}: an install without the lock: {installs}"


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
def test_env_pins_match_the_constraints(env_file):
    pins, lock = _pins(env_file), _constraints()
    required = _pyproject_requirements()
    required.pop("snakemake", None)  # the workflow engine runs the env, it is not needed inside it
    missing = sorted(set(required) - set(pins))
    assert not missing, f"{env_file.name} lacks runtime dependencies of pyproject.toml: {missing}"
    assert not _outside(pins, required), _outside(pins, required)
    differ = {name: (version, lock.get(name)) for name, version in pins.items() if lock.get(name) != version}
    assert not differ, f"{env_file.name} and constraints.txt pin differently (env, lock): {differ}"
    python = [d for d in yaml.safe_load(env_file.read_text(encoding="utf-8"))["dependencies"]
              if isinstance(d, str) and d.split("=")[0].strip() == "python"]
    assert python, f"{env_file.name} pins no python"
    version = python[0].split("=", 1)[1].lstrip("=")
    assert SpecifierSet(_pyproject()["requires-python"]).contains(f"{version}.0"), \
        f"{env_file.name}: python={version} outside requires-python {_pyproject()['requires-python']}"


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
