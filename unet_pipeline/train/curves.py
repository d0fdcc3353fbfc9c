"""Training curves: losses, validation Dice and learning rate per epoch, from ``train_log.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import atomic_path

__all__ = ["plot_training_curves", "pyplot", "save_figure", "read_csv_rows", "csv_float", "placeholder_figure"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def pyplot():
    """Import matplotlib with the Agg backend and return ``matplotlib.pyplot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | Path, dpi: int = 100) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    plt = pyplot()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def read_csv_rows(path: str | Path | None) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts; ``[]`` for a missing or empty file."""
    if path is None or not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def csv_float(value: Any) -> float:
    """A float, or NaN for empty/unparsable cells and ``None``."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def placeholder_figure(out_png: str | Path, message: str) -> None:
    """A small figure that only says ``message`` (used when there is nothing to plot)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def plot_training_curves(log_csv: str | Path, out_png: str | Path) -> None:
    """Plot the training log: losses per epoch (left) and validation Dice plus learning rate (right).

    Parameters
    ----------
    log_csv
        ``train_log.csv`` from :func:`unet_pipeline.train.loop.train`: one row per epoch with
        ``epoch``, ``train_loss``, ``lr``, ``val_dice_mean``, ``val_dice_<class>`` (empty cells
        when there is no validation set), ``seconds``, ``slices_per_s``; a ``val_loss`` column
        is plotted when present. A missing or empty log gives a figure that says so.
    out_png
        The PNG written (atomically).
    """
    rows = read_csv_rows(log_csv)
    if not rows:
        placeholder_figure(out_png, "no training epochs logged")
        return
    plt = pyplot()
    cols = list(rows[0].keys())
    data = {c: np.array([csv_float(r.get(c)) for r in rows]) for c in cols}
    epoch = data.get("epoch")
    if epoch is None or np.isnan(epoch).all():
        epoch = np.arange(1, len(rows) + 1, dtype=float)

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    style = {"marker": "o", "markersize": 3}
    for c in ("train_loss", "val_loss"):
        if c in data and not np.isnan(data[c]).all():
            ax_loss.plot(epoch, data[c], label=c.replace("_", " "), **style)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)

    dice_cols = [c for c in cols if c.startswith("val_dice_") and not np.isnan(data[c]).all()]
    dice_cols.sort(key=lambda c: (c != "val_dice_mean", c))
    for c in dice_cols:
        mean = c == "val_dice_mean"
        ax_dice.plot(epoch, data[c], label=("mean" if mean else c[len("val_dice_"):]),
                     linewidth=2.2 if mean else 1.0, color="black" if mean else None, **style)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_title("Validation Dice and learning rate")
    ax_dice.grid(alpha=0.3)
    if dice_cols:
        ax_dice.set_ylim(-0.02, 1.02)
    else:
        ax_dice.text(0.5, 0.5, "no validation set", transform=ax_dice.transAxes, ha="center", va="center",
                     color="gray")
    handles, labels = ax_dice.get_legend_handles_labels()
    if "lr" in data and not np.isnan(data["lr"]).all():
        ax_lr = ax_dice.twinx()
        line, = ax_lr.plot(epoch, data["lr"], color="tab:gray", linestyle="--", label="learning rate")
        ax_lr.set_ylabel("learning rate")
        lr = data["lr"][np.isfinite(data["lr"])]
        if lr.size and (lr > 0).all() and lr.max() / lr.min() > 20:
            ax_lr.set_yscale("log")
        handles.append(line)
        labels.append("learning rate")
    if handles:
        ax_dice.legend(handles, labels, fontsize=8, loc="best")
    if len(epoch) == 1:
        for ax in (ax_loss, ax_dice):
            ax.set_xlim(epoch[0] - 1, epoch[0] + 1)
    fig.tight_layout()
    save_figure(fig, out_png)
