"""What goes into the report besides the figures: overlay picks and their grouping, the cohort's
geometry table and the provenance (library versions, model weights' hashes)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..evaluate.tables import read_rows
from ..io.files import load_json

__all__ = ["pick_overlay_cases", "group_overlays", "geometry_rows", "versions", "model_identity"]

#: Distributions whose versions the report names (those that shape the results or read the inputs).
VERSIONED = ("torch", "numpy", "scipy", "nibabel", "SimpleITK", "monai", "snakemake", "pydicom", "highdicom")


def pick_overlay_cases(metrics_csv: str | Path, n: int = 3) -> list[dict]:
    """Per class, the best, median and worst case by that class's Dice.

    Parameters
    ----------
    metrics_csv
        ``metrics.csv``: one row per (case, class) with ``case``, ``label``, ``label_id``, ``dice``;
        rows with an empty (NaN) Dice are left out, so a class without any finite Dice has no picks.
    n
        At most this many picks per class, taken in the order worst, best, median (``n >= 3``: all three).

    Returns
    -------
    list of dict
        Classes in ``label_id`` order (then name), within a class best, median, worst; each dict
        has ``label`` (class name), ``label_id`` (int, or ``None`` when the column is empty),
        ``case``, ``dice``, ``roles`` (e.g. ``["best"]``, or ``["best", "median"]`` when one case
        is both: each (case, class) appears once, so at most 3 per class) and ``caption``, e.g.
        ``"liver — worst: demo_003 (Dice 0.912)"``.

    Notes
    -----
    Ties are broken by case id: the class's cases are sorted by (Dice, case id); worst is the
    first, median the element ``len // 2``, best the last (so with tied Dice the three are still
    different cases where there are three).
    """
    order: dict[str, tuple] = {}
    by_class: dict[str, list[tuple[float, str]]] = {}
    for r in read_rows(metrics_csv):
        label = str(r.get("label", ""))
        label_id = r.get("label_id")
        label_id = int(label_id) if isinstance(label_id, float) and np.isfinite(label_id) else None
        order.setdefault(label, (label_id is None, label_id if label_id is not None else 0, label))
        dice = r.get("dice")
        if isinstance(dice, float) and np.isfinite(dice):
            by_class.setdefault(label, []).append((dice, str(r["case"])))
    out = []
    for label in sorted(by_class, key=lambda k: order[k]):
        ranked = sorted(by_class[label])
        chosen = {"worst": ranked[0], "best": ranked[-1], "median": ranked[len(ranked) // 2]}
        chosen = dict(list(chosen.items())[:max(int(n), 0)])
        roles: dict[str, list[str]] = {}
        for role in ("best", "median", "worst"):
            if role in chosen:
                roles.setdefault(chosen[role][1], []).append(role)
        dice_of = dict((c, d) for d, c in ranked)
        label_id = order[label][1] if not order[label][0] else None
        for cid, what in roles.items():
            out.append({"label": label, "label_id": label_id, "case": cid, "dice": dice_of[cid], "roles": what,
                        "caption": f"{label} — {', '.join(what)}: {cid} (Dice {dice_of[cid]:.3f})"})
    return out


def group_overlays(entries: Sequence[tuple[str | None, tuple[str, Path]]],
                   names: Mapping[int, str]) -> list | dict:
    """The report's overlay figures, listed as given or grouped by class.

    ``entries``: per figure, its group (a class name, or None) and ``(caption, png)``. Without any
    group, the ``(caption, png)`` list as given; otherwise a dict class name -> list, one key per
    class of ``names`` (label order, background left out, empty when nothing was picked) and then
    any other group (``"other"`` for a figure without one), each figure once per group.
    """
    if not any(group is not None for group, _ in entries):
        return [entry for _, entry in entries]
    overlays: dict[str, list] = {name: [] for k, name in sorted(names.items()) if k != 0}
    seen: set = set()
    for group, entry in entries:
        if (group, entry[1]) not in seen:
            seen.add((group, entry[1]))
            overlays.setdefault(str(group if group is not None else "other"), []).append(entry)
    return overlays


def geometry_rows(case_records: Sequence[str | Path], splits: Mapping[str, str] | None = None) -> list[dict]:
    """One row per case record (``case.json``): ``case_id``, ``shape``, ``spacing_mm``,
    ``orientation`` and ``split`` (from ``splits``; ``"train/val"`` when the case is not in it)."""
    rows = []
    for rec_path in case_records:
        rec = load_json(rec_path)
        row = {k: rec.get(k) for k in ("case_id", "shape", "spacing_mm", "orientation")}
        row["split"] = (splits or {}).get(rec.get("case_id"), "train/val")
        rows.append(row)
    return rows


def versions() -> dict[str, str]:
    """Installed versions of :data:`VERSIONED` (``"not installed"`` for a missing one)."""
    from importlib import metadata

    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def model_identity(model_dir: str | Path) -> dict:
    """A model folder and the SHA-256 of its weights (None when the weights are not there)."""
    weights = Path(model_dir) / "model.safetensors"
    if not weights.exists():
        return {"path": str(model_dir), "sha256": None}
    st = weights.stat()
    return {"path": str(model_dir), "sha256": _file_sha256(str(weights.resolve()), st.st_size, st.st_mtime_ns)}


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, hashed once per (path, size, time): predict_cohort names it in every sidecar."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
