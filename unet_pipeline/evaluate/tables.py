"""The evaluation's CSV tables: metrics and volumes rows, written and read back.

One row per (case, class). Written with the columns given (extra keys dropped), NaN and
infinities as empty cells; read back with numbers as ``float`` (empty cell: NaN), ``True``/``False``
as ``bool`` and the text columns ``case``, ``label`` and ``empty_policy`` as ``str``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io.files import atomic_path

__all__ = ["METRIC_COLUMNS", "VOLUME_COLUMNS", "write_rows", "read_rows", "value_label_names"]

#: Columns of the per-case metrics CSVs and of ``metrics.csv``.
METRIC_COLUMNS = ["case", "label", "label_id", "dice", "iou", "precision", "recall", "hd_mm", "hd95_mm", "assd_mm",
                  "nsd", "vol_ref_ml", "vol_pred_ml", "vol_diff_ml", "ref_empty", "pred_empty", "empty_policy"]

#: Columns of the per-case volumes CSVs and of ``volumes.csv``
#: (rows from :func:`unet_pipeline.evaluate.volumes.case_volumes`).
VOLUME_COLUMNS = ["case", "label", "label_id", "volume_ml", "hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95",
                  "n_components", "empty", "touches_border", "qc_flags"]

_TEXT_COLUMNS = ("case", "label", "empty_policy")


def write_rows(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] = METRIC_COLUMNS) -> None:
    """Write ``rows`` as a CSV with ``columns`` (atomically); non-finite floats become empty cells."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()})


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_rows`, with numbers and flags parsed back."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k in _TEXT_COLUMNS:
                continue
            if v in ("True", "False"):
                r[k] = v == "True"
            else:
                try:
                    r[k] = float(v) if v != "" else float("nan")
                except ValueError:
                    pass
    return rows


def value_label_names(values: Sequence[int] | np.ndarray) -> dict[int, str]:
    """Class names for label values without a label map: ``{1: "label_1", 4: "label_4"}``
    (background 0 left out; the values must be whole numbers)."""
    values = np.asarray(values).ravel()
    if values.size and not np.array_equal(values, np.round(values)):
        raise ValueError(f"label values must be whole numbers, got {values[values != np.round(values)][:5].tolist()}")
    return {int(v): f"label_{int(v)}" for v in sorted({int(v) for v in values}) if v != 0}
