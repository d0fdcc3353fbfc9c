"""The package's shape: sub-packages in the order the data flows, no cycles, small functions.

Each module may import only from its own sub-package and from those earlier in ``LAYERS``
(lazy imports inside functions count too). Read from the source with :mod:`ast`; nothing is
imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "unet_pipeline"

#: Top-level modules and sub-packages, in the order the data flows: each may import only itself
#: and those before it. ``unet_pipeline`` itself (``__version__``) comes first.
LAYERS = [
    "",  # unet_pipeline/__init__.py
    "errors",
    "schema",
    "runlog",
    "resources",
    "device",  # the CPU/GPU a job computes on (training and prediction)
    "io",
    "cohort",
    "plan",
    "preprocess",
    "model",
    "postprocess",  # label-mask cleanup: chosen by train/, applied by infer/, its components counted by evaluate/
    "quality",  # review signals, their calibration (fitted by train/) and the review list
    "train",
    "infer",
    "evaluate",
    "report",
    "config",
    "demo",
    "stages_evaluate",  # the evaluation and report stages, re-exported by stages
    "stages",
    "chain",
    "cli",
    "dag_groups",  # workflow helper (Snakemake job groups); imports nothing of the package
]

MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["unet_pipeline", *parts])


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports (a ``from x import y`` of a module ``x.y`` counts as ``x.y``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "unet_pipeline"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "unet_pipeline":
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            found |= subs or {target}
    return found - {name}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, tree, set(mods)) for name, (path, tree) in mods.items()}


def test_every_module_is_in_a_layer(graph):
    unknown = sorted({_layer(m) for m in graph} - set(LAYERS))
    assert not unknown, f"add these to LAYERS, in the order the data flows: {unknown}"


def test_no_import_of_a_later_stage(graph):
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    bad = [f"{m} imports {d}" for m, deps in sorted(graph.items()) for d in sorted(deps)
           if rank.get(_layer(d), -1) > rank.get(_layer(m), len(LAYERS))]
    assert not bad, "imports of a later stage:\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_function_over_80_lines():
    long = []
    for name, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n_lines = node.end_lineno - first + 1
                if n_lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n_lines} lines ({path.name}:{node.lineno})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_checks_see_a_later_import_and_a_cycle():
    """The graph builder resolves relative imports (else the tests above would pass vacuously)."""
    tree = ast.parse("from ..train.loop import train\nfrom . import images\n")
    found = _imports("unet_pipeline.io.files", PACKAGE / "io" / "files.py", tree,
                     {"unet_pipeline.io.images", "unet_pipeline.train.loop"})
    assert found == {"unet_pipeline.train.loop", "unet_pipeline.io.images"}


def test_no_module_imports_another_modules_private_name():
    """``from x import _name`` across modules: a private helper belongs to its module (or becomes public)."""
    found = []
    for name, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                found += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)
