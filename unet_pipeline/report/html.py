"""Figures and the self-contained HTML report.

* training curves come from :func:`unet_pipeline.train.curves.plot_training_curves` (drawn by
  training itself; redrawn here when a log is newer than its ``curves.png``).
* :func:`plot_metric_boxes` -- per-class box plots of Dice, HD95 (mm) and NSD from ``metrics.csv``.
* :func:`overlay_figure` -- axial, coronal and sagittal CT sections with the reference (contours)
  and the prediction (semi-transparent fill), optionally cut through one class
  (:func:`sections_through` picks the slices).
* :func:`write_report` -- one HTML file with every figure embedded as a base64 data URI, inline
  CSS and no scripts or external links; every string taken from data is HTML-escaped.

matplotlib is imported inside the functions (with the non-interactive ``Agg`` backend), so
importing this module is cheap. Every file is written atomically (:func:`unet_pipeline.io.files.atomic_path`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import atomic_path
from ..train.curves import csv_float, placeholder_figure, plot_training_curves, pyplot, read_csv_rows
from ..train.curves import save_figure as _save  # a module attribute: the one place every figure is written

__all__ = ["plot_metric_boxes", "sections_through", "overlay_figure", "write_report"]


#: Abdomen window: width and level in HU.
WINDOW_HU = (400.0, 40.0)
#: Metrics shown as box plots: (column of metrics.csv, axis title).
BOX_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("precision", "Precision"), ("recall", "Recall"),
               ("nsd", "NSD"), ("hd_mm", "HD (mm)"), ("hd95_mm", "HD95 (mm)"), ("assd_mm", "ASSD (mm)"),
               ("vol_diff_ml", "Volume difference (mL)"))
#: Metrics on a 0..1 scale (fixed axis limits).
_UNIT_METRICS = {"dice", "iou", "precision", "recall", "nsd"}
_SUMMARY_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("hd95_mm", "HD95 (mm)"), ("assd_mm", "ASSD (mm)"),
                    ("nsd", "NSD"))
_NA = "not available"


def plot_metric_boxes(metrics_csv: str | Path, out_png: str | Path) -> None:
    """Per-class box plots of every metric of :data:`BOX_METRICS`, each case a jittered point, to ``out_png``.

    ``metrics_csv`` is a ``metrics.csv``: one row per (case, class) with columns ``case``,
    ``label``, ``label_id``, ``dice``, ``hd95_mm``, ``nsd``, ... ; empty cells are NaN and left
    out of the plot. The PNG is written atomically; without rows it says "no metrics".
    """
    rows = read_csv_rows(metrics_csv)
    if not rows:
        return placeholder_figure(out_png, "no metrics")
    plt = pyplot()
    order: dict[str, float] = {}
    for r in rows:
        order.setdefault(r.get("label", ""), csv_float(r.get("label_id")))
    classes = sorted(order, key=lambda k: (math.isnan(order[k]), order[k], k))
    rng = np.random.default_rng(0)
    n_cols = 5  # two compact rows: the page stays short
    n_rows = math.ceil(len(BOX_METRICS) / n_cols)
    width = max(2.8, 0.45 * len(classes) + 1.2)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, 3.1 * n_rows), squeeze=False)
    for ax in axes.flat[len(BOX_METRICS):]:
        ax.set_visible(False)
    for ax, (col, name) in zip(axes.flat, BOX_METRICS):
        values = []
        for cls in classes:
            v = np.array([csv_float(r.get(col)) for r in rows if r.get("label", "") == cls])
            values.append(v[np.isfinite(v)])
        positions = [i + 1 for i, v in enumerate(values) if v.size]
        if positions:
            ax.boxplot([values[p - 1] for p in positions], positions=positions, widths=0.5, showfliers=False)
        for i, v in enumerate(values):
            if v.size:
                ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, v.size), v, s=12, alpha=0.7, color="tab:blue",
                           zorder=3)
            else:
                ax.text(i + 1, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", color="gray")
        ax.set_xticks(range(1, len(classes) + 1))
        ax.set_xticklabels(classes, rotation=30, ha="right")
        ax.set_xlim(0.5, len(classes) + 0.5)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
        if col in _UNIT_METRICS:
            ax.set_ylim(-0.02, 1.02)
        elif col == "vol_diff_ml":
            ax.axhline(0.0, color="gray", lw=0.8)
    fig.tight_layout()
    _save(fig, out_png)


def _centre(mask: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """``(z, y, x)`` voxel through which the views pass: the foreground's centroid (else the middle)."""
    if mask is not None and mask.any():
        idx = np.nonzero(mask)
        return tuple(int(round(float(np.median(i)))) for i in idx)  # type: ignore[return-value]
    return tuple(int(n) // 2 for n in shape)  # type: ignore[return-value]


def sections_through(mask: np.ndarray) -> tuple[int, int, int] | None:
    """``(z, y, x)`` indices of the axial, coronal and sagittal sections that cut through ``mask``.

    Parameters
    ----------
    mask
        Boolean (or 0/1) volume, shape ``(Z, Y, X)``, canonical orientation (as in
        :func:`overlay_figure`), e.g. ``reference == label``.

    Returns
    -------
    tuple of int or None
        Per axis, the slice holding the most voxels of ``mask`` (the structure's largest
        section); among equal slices the one nearest the mask's centre of mass along that axis,
        then the lower index. Each section therefore always passes through the structure, also
        for a non-convex one whose centre of mass lies outside it. ``None`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask: expected a 3-D (Z, Y, X) array, got shape {mask.shape}")
    if not mask.any():
        return None
    out = []
    for axis in range(3):
        counts = mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        idx = np.arange(counts.size)
        centre = float((idx * counts).sum()) / float(counts.sum())
        fullest = np.flatnonzero(counts == counts.max())
        out.append(int(fullest[np.argmin(np.abs(fullest - centre))]))  # argmin: first, i.e. lower index, on a tie
    return tuple(out)  # type: ignore[return-value]


# Views through the canonical (Z, Y, X) = (S, A, R) volume, in radiological display: each takes a
# 2-D section and the spacings, and returns (section flipped for display, aspect, side markers).
def _views(volume_shape: Sequence[int], centre: tuple[int, int, int], spacing_mm: Sequence[float]):
    z, y, x = centre
    sz, sy, sx = (float(s) for s in spacing_mm)
    return [
        # axial: anterior at the top, patient right on the left
        ("axial", f"z = {z} ({z * sz:.1f} mm)", lambda v: v[z, ::-1, ::-1], sy / sx, ("R", "L", "A", "P")),
        # coronal: superior at the top, patient right on the left
        ("coronal", f"y = {y} ({y * sy:.1f} mm)", lambda v: v[::-1, y, ::-1], sz / sx, ("R", "L", "S", "I")),
        # sagittal: superior at the top, anterior on the left
        ("sagittal", f"x = {x} ({x * sx:.1f} mm)", lambda v: v[::-1, ::-1, x], sz / sy, ("A", "P", "S", "I")),
    ]


def overlay_figure(image: np.ndarray, reference: np.ndarray | None, prediction: np.ndarray,
                   spacing_mm: Sequence[float], labels: Mapping[int, str], out_png: str | Path,
                   title: str = "", focus: int | None = None) -> None:
    """Axial, coronal and sagittal sections with the reference as contours and the prediction filled.

    Parameters
    ----------
    image
        CT volume in HU, float, shape ``(Z, Y, X)`` in canonical orientation: z superior
        increasing, y anterior increasing, x (patient) right increasing.
    reference
        Integer label volume of the same shape, or ``None`` (no reference).
    prediction
        Integer label volume of the same shape.
    spacing_mm
        Voxel size ``(sz, sy, sx)`` in mm; sets the displayed aspect ratio of each view.
    labels
        ``{label value: class name}``; 0 (background) is not drawn.
    out_png
        The PNG written (atomically).
    title
        Figure title.
    focus
        A label value: cut the sections through that class (see below), draw its reference
        contour thicker and its legend entry in bold. ``None``: through all foreground.

    Notes
    -----
    With ``focus``, each section is the slice with the most voxels of that class in the
    reference (:func:`sections_through`), else in the prediction; when the class is in neither,
    the figure falls back to the sections used without ``focus`` and the title says so. Without
    ``focus``, the three sections pass through the (median) centre of the reference's foreground
    (else the prediction's, else the volume's middle). All classes are drawn in every view, with
    the abdomen window (W 400, L 40 HU), in radiological convention: patient right on the image
    left; anterior at the top of the axial view and on the left of the sagittal view; superior at
    the top of the coronal and sagittal views. Each view is titled with its slice index and
    position (index × spacing, mm).
    """
    image, reference, prediction = _check_overlay_inputs(image, reference, prediction, spacing_mm)
    plt = pyplot()
    classes = sorted((int(k), str(v)) for k, v in labels.items() if int(k) != 0)
    cmap = plt.get_cmap("tab10")
    colours = {k: cmap(i % 10) for i, (k, _) in enumerate(classes)}
    focus = None if focus is None else int(focus)
    centre, title = _overlay_centre(image.shape, reference, prediction, focus, dict(classes), title)
    views = _views(image.shape, centre, spacing_mm)
    fig, axes = plt.subplots(1, len(views), figsize=(4.2 * len(views), 4.6), squeeze=False)
    for ax, view in zip(axes[0], views):
        _draw_view(ax, view, image, reference, prediction, classes, colours, focus)
    _overlay_legend(fig, classes, colours, focus, has_reference=reference is not None)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, (0.95 - 0.04 * title.count("\n")) if title else 1))
    _save(fig, out_png)


def _check_overlay_inputs(image, reference, prediction, spacing_mm):
    """``(image, reference, prediction)`` as arrays; ``ValueError`` on a shape or spacing :func:`overlay_figure` cannot draw."""
    image = np.asarray(image)  # sections are converted to float when cut, not the whole volume
    if image.ndim != 3:
        raise ValueError(f"image: expected a 3-D (Z, Y, X) array, got shape {image.shape}")
    prediction = np.asarray(prediction)
    if prediction.shape != image.shape:
        raise ValueError(f"prediction: shape {prediction.shape} differs from image shape {image.shape}")
    if reference is not None:
        reference = np.asarray(reference)
        if reference.shape != image.shape:
            raise ValueError(f"reference: shape {reference.shape} differs from image shape {image.shape}")
    if len(spacing_mm) != 3 or not all(float(s) > 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm: expected three positive values (sz, sy, sx), got {spacing_mm!r}")
    return image, reference, prediction


def _overlay_centre(shape, reference, prediction, focus: int | None, names: Mapping[int, str],
                    title: str) -> tuple[tuple[int, int, int], str]:
    """The ``(z, y, x)`` the sections pass through, and the title (saying so when ``focus`` is absent)."""
    centre = None
    if focus is not None:
        for source in (reference, prediction):
            if source is not None and centre is None:
                centre = sections_through(source == focus)
        if centre is None:
            name = names.get(focus, str(focus))
            title = f"{title}\n({name} in neither reference nor prediction)" if title else \
                f"{name} in neither reference nor prediction"
    if centre is None:
        guide = reference if reference is not None and reference.any() else prediction
        centre = _centre(guide > 0, shape)
    return centre, title


def _draw_view(ax, view, image, reference, prediction, classes, colours, focus: int | None) -> None:
    """One section: CT in the abdomen window, the prediction filled, the reference as contours, orientation marks."""
    from matplotlib.colors import to_rgba

    name, where, cut, aspect, (left, right, top, bottom) = view
    width, level = WINDOW_HU
    img, pred = np.asarray(cut(image), dtype=float), cut(prediction)
    ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect,
              interpolation="nearest")
    fill = np.zeros((*pred.shape, 4))
    for k, _ in classes:
        fill[pred == k] = to_rgba(colours[k], 0.4)
    ax.imshow(fill, aspect=aspect, interpolation="nearest")
    if reference is not None:
        ref = cut(reference)
        for k, _ in classes:
            m = (ref == k).astype(float)
            if m.any() and not m.all() and min(m.shape) > 1:
                ax.contour(m, levels=[0.5], colors=[colours[k]], linewidths=2.0 if k == focus else 1.2)
    ax.set_title(f"{name}, {where}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for x, y, s, ha, va in ((0.02, 0.5, left, "left", "center"), (0.98, 0.5, right, "right", "center"),
                            (0.5, 0.98, top, "center", "top"), (0.5, 0.02, bottom, "center", "bottom")):
        ax.text(x, y, s, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=8)


def _overlay_legend(fig, classes, colours, focus: int | None, *, has_reference: bool) -> None:
    """Classes (the focus in bold), then what the fill and the contours mean."""
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=to_rgba(colours[k], 0.6), edgecolor=colours[k], label=name) for k, name in classes]
    handles.append(Patch(facecolor=to_rgba("gray", 0.4), label="prediction (fill)"))
    if has_reference:
        handles.append(Line2D([], [], color="gray", label="reference (contour)"))
    else:
        handles.append(Line2D([], [], color="none", label="no reference"))
    legend = fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if focus is not None:
        for text, (k, _) in zip(legend.get_texts(), classes):
            if k == focus:
                text.set_fontweight("bold")


# --------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; }
h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
h3 { margin: 1.5em 0 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
.scroll { max-height: 30em; overflow: auto; }
img { max-width: 100%; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #444; }
.na { color: #888; font-style: italic; }
pre { background: #f6f6f6; padding: 0.5em; overflow: auto; font-size: 0.8em; }
dt { font-weight: bold; margin-top: 0.4em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _na(what: str = "") -> str:
    return f'<p class="na">{_esc(what + ": " if what else "")}{_NA}</p>'


def _fmt(value: Any, digits: int = 3) -> str:
    """A number rounded for display; '–' for None/NaN; other values as text (escaped)."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return _esc(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "&ndash;" if not math.isfinite(value) else f"{value:.{digits}f}"
    return _esc(value)


def _cell(text: str) -> str:
    """A CSV cell for display: numbers rounded to 4 significant digits, the rest escaped."""
    if text is None or text == "":
        return "&ndash;"
    if text.lstrip("-").isdigit():
        return text
    try:
        x = float(text)
    except ValueError:
        return _esc(text)
    return "&ndash;" if not math.isfinite(x) else f"{x:.4g}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; ``header`` is escaped here, cells must already be HTML."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_section(summary_json: str | Path | None) -> str:
    if summary_json is None or not Path(summary_json).is_file():
        return _na("summary")
    summary = json.loads(Path(summary_json).read_text(encoding="utf-8"))
    per_class = summary.get("per_class") or {}
    if isinstance(per_class, list):
        per_class = {str(r.get("label", i)): r for i, r in enumerate(per_class)}
    if not per_class:
        return _na("summary")
    header = ["class", "n cases"]
    for _, name in _SUMMARY_METRICS:
        header += [f"{name} mean ± sd", f"{name} median", f"{name} min–max", f"{name} 95% CI"]
    rows = []
    for label, stats in per_class.items():
        stats = stats or {}
        row = [_esc(label), _fmt(stats.get("n_cases"))]
        for key, _ in _SUMMARY_METRICS:
            s = stats.get(key) or {}
            ci = s.get("ci95") or [None, None]
            ci = list(ci) + [None] * (2 - len(ci))
            row += [f"{_fmt(s.get('mean'))} ± {_fmt(s.get('std'))}", _fmt(s.get("median")),
                    f"{_fmt(s.get('min'))} – {_fmt(s.get('max'))}", f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"]
        rows.append(row)
    n = summary.get("n_cases")
    intro = f"<p>Test cases: {_fmt(n)}.</p>" if n is not None else ""
    return intro + f'<div class="scroll">{_table(header, rows)}</div>'


def _boxes_section(metrics_csv: str | Path | None, tmp: Path) -> str:
    if metrics_csv is None or not read_csv_rows(metrics_csv):
        return _na("metrics")
    png = tmp / "boxes.png"
    plot_metric_boxes(metrics_csv, png)
    return _img(png.read_bytes(), "per-class metric distributions")


def _cases_section(metrics_csv: str | Path | None) -> str:
    rows = read_csv_rows(metrics_csv)
    if not rows:
        return _na("per-case metrics")
    header = list(rows[0].keys())
    body = [[_cell(r.get(h) or "") for h in header] for r in rows]
    return f'<div class="scroll">{_table(header, body)}</div>'


def _volumes_section(volumes_csv: str | Path | None) -> str:
    """Per class over the segmented cases: volume median and quartiles (mL) and the QC flag counts."""
    rows = read_csv_rows(volumes_csv)
    if not rows:
        return _na("volumes")
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_class.setdefault(r.get("label", ""), []).append(r)
    body = []
    for name, items in by_class.items():
        vols = np.array([csv_float(r.get("volume_ml")) for r in items if r.get("empty") != "True"])
        vols = vols[np.isfinite(vols)]
        q = np.percentile(vols, [25, 50, 75]) if vols.size else [float("nan")] * 3
        flags = [r.get("qc_flags", "") for r in items]
        body.append([_esc(name), str(len(items)), _fmt(float(q[1]), 1), f"{_fmt(float(q[0]), 1)} &ndash; {_fmt(float(q[2]), 1)}",
                     *(str(sum(flag in f.split(";") for f in flags)) for flag in ("empty", "fragmented", "touches_border"))])
    header = ["class", "cases", "median volume (mL)", "quartiles (mL)", "empty", "fragmented", "touches border"]
    return (f"{_table(header, body)}<p>Per segmented case and class in <code>volumes.csv</code>: volume, HU "
            "statistics and QC flags (empty: nothing segmented; fragmented: more than one connected component; "
            "touches border: the structure reaches the edge of the image and may be cut off).</p>")


#: Rows of ``review.csv`` shown in the report's "Review first" table.
REVIEW_ROWS_SHOWN = 15


def _review_section(review_csv: str | Path | None, overlays: Sequence[tuple[str, str | Path]]) -> str:
    """The first rows of ``review.csv`` (review order) and the overlays of the top-ranked cases."""
    rows = read_csv_rows(review_csv)
    if not rows:
        return _na("review list")
    header = ["review_rank", "case", "class", "predicted_dice", "reason", "volume_ml", "soft_dice", "mean_maxprob"]
    body = [[_cell(r.get(h) or "") for h in header] for r in rows[:REVIEW_ROWS_SHOWN]]
    note = (f"<p>The {min(len(rows), REVIEW_ROWS_SHOWN)} first of {len(rows)} rows of <code>review.csv</code> "
            "(one per case and class, sorted by predicted Dice, lowest first; classes with nothing segmented last). "
            "The predicted Dice is an estimate from signals without a reference (see the README): use it to "
            "order the reading, not as a measurement.</p>")
    return f'{note}<div class="scroll">{_table(header, body)}</div>{_figures(overlays)}'


def _curves_section(train_logs: Sequence[str | Path], tmp: Path) -> str:
    logs = [Path(p) for p in train_logs if p]
    if not logs:
        return _na("training curves")
    parts = []
    for i, log_csv in enumerate(logs):
        beside = log_csv.with_name("curves.png")
        if beside.is_file() and (not log_csv.is_file() or beside.stat().st_mtime >= log_csv.stat().st_mtime):
            png = beside
        else:
            png = tmp / f"curves_{i}.png"
            plot_training_curves(log_csv, png)
        caption = f"{log_csv.parent.name}/{log_csv.name}"
        parts.append(f"<figure>{_img(png.read_bytes(), 'training curves')}"
                     f"<figcaption>{_esc(caption)}</figcaption></figure>")
    return "".join(parts)


_OVERLAYS_PER_CLASS_NOTE = ("Per class: the best, median and worst case by that class's Dice (ties by case id), "
                             "with the axial, coronal and sagittal sections through that structure (the slices "
                             "with the most voxels of the class in the reference, else in the prediction). "
                             "Reference: contours (the class's thicker); prediction: semi-transparent fill.")


def _figures(overlays: Sequence[tuple[str, str | Path]]) -> str:
    parts = []
    for caption, png in overlays:
        if png is None or not Path(png).is_file():
            parts.append(f"<figure>{_na(str(caption))}</figure>")
            continue
        parts.append(f"<figure>{_img(Path(png).read_bytes(), str(caption))}"
                     f"<figcaption>{_esc(caption)}</figcaption></figure>")
    return "".join(parts)


def _overlays_section(overlays: Sequence[tuple[str, str | Path]] | Mapping[str, Sequence[tuple[str, str | Path]]]
                      ) -> str:
    if not overlays:
        return _na("overlays")
    if not isinstance(overlays, Mapping):
        return _figures(overlays)
    parts = [f"<p>{_esc(_OVERLAYS_PER_CLASS_NOTE)}</p>"]
    for group, figures in overlays.items():
        figures = list(figures or ())
        content = _figures(figures) if figures else _na(f"{group}: no case with a finite Dice")
        parts.append(f'<section class="overlay-class"><h3>{_esc(group)}</h3>{content}</section>')
    return "".join(parts)


def _geometry_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " × ".join(_fmt(v, 3) if isinstance(v, float) else _esc(v) for v in value)
    return _fmt(value)


def _geometry_section(geometry_rows: Sequence[Mapping]) -> str:
    if not geometry_rows:
        return _na("cohort geometry")
    header = ["case_id", "shape", "spacing_mm", "orientation", "split"]
    rows = [[_geometry_value(r.get(h)) for h in header] for r in geometry_rows]
    return f'<p>Cases: {len(rows)}.</p><div class="scroll">{_table(header, rows)}</div>'


def _provenance_section(provenance: Mapping | None) -> str:
    if not provenance:
        return _na("provenance")
    items = []
    for key, value in provenance.items():
        if isinstance(value, (Mapping, list, tuple)):
            text = f"<pre>{_esc(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"
        else:
            text = _esc(value)
        items.append(f"<dt>{_esc(key)}</dt><dd>{text}</dd>")
    return f"<dl>{''.join(items)}</dl>"


def write_report(out_html: str | Path, *, metrics_csv: str | Path | None = None,
                 summary_json: str | Path | None = None, train_logs: Sequence[str | Path] = (),
                 overlays: Sequence[tuple[str, str | Path]] | Mapping[str, Sequence[tuple[str, str | Path]]] = (),
                 geometry_rows: Sequence[Mapping] = (),
                 provenance: Mapping | None = None, title: str = "U-Net segmentation report",
                 empty_policy: str = "", volumes_csv: str | Path | None = None,
                 review_csv: str | Path | None = None,
                 review_overlays: Sequence[tuple[str, str | Path]] = ()) -> None:
    """Write the self-contained HTML report.

    Parameters
    ----------
    out_html
        The HTML file written (atomically). Figures are embedded as base64 PNG data URIs; the
        page has inline CSS only, no scripts and no external links.
    metrics_csv
        Per-(case, class) metrics table, or ``None`` (predict-only run).
    summary_json
        ``{"n_cases", "empty_policy", "per_class": {label: {"n_cases", "dice": {"mean", "std",
        "median", "min", "max", "ci95": [lo, hi]}, "hd95_mm": ..., "assd_mm": ..., "nsd": ...,
        "iou": ...}}}``; null values are shown as dashes. ``None`` when there are no metrics.
    train_logs
        ``train_log.csv`` files; a newer ``curves.png`` beside a log is reused.
    overlays
        ``(caption, png path)`` pairs, e.g. from :func:`overlay_figure`, shown in that order; or
        ``{class name: [(caption, png path), ...]}``, the per-class best/median/worst picks: one
        sub-section (``<h3>``) per class in the mapping's order, "not available" for a class
        with an empty list. Each PNG is embedded as given (pass each figure once).
    geometry_rows
        Dicts with ``case_id``, ``shape``, ``spacing_mm``, ``orientation``, ``split``.
    provenance
        Versions, configuration etc. (nested dict, JSON-serialisable or stringified).
    title
        Page title.
    empty_policy
        The sentence that states how empty reference/prediction masks are scored.
    volumes_csv
        ``volumes.csv`` (one row per segmented case and class), summarised per class; ``None``
        leaves the section "not available".
    review_csv, review_overlays
        ``review.csv`` (:mod:`unet_pipeline.quality.review`, rows in review order) and the
        ``(caption, png path)`` overlays of its top-ranked cases: the first section, "Review first".

    Every missing input gives a section that says "not available".
    """
    if not empty_policy and summary_json is not None and Path(summary_json).is_file():
        with_policy = json.loads(Path(summary_json).read_text(encoding="utf-8"))
        empty_policy = str(with_policy.get("empty_policy") or "") if isinstance(with_policy, dict) else ""
    with tempfile.TemporaryDirectory(prefix="report-") as td:
        tmp = Path(td)
        sections = [
            ("Review first", _review_section(review_csv, list(review_overlays))),
            ("Summary per class", _summary_section(summary_json)),
            ("Metric distributions", _boxes_section(metrics_csv, tmp)),
            ("Per-case metrics", _cases_section(metrics_csv)),
            ("Volumes and QC flags", _volumes_section(volumes_csv)),
            ("Training curves", _curves_section(list(train_logs), tmp)),
            ("Overlays", _overlays_section(overlays if isinstance(overlays, Mapping) else list(overlays))),
            ("Cohort geometry", _geometry_section(list(geometry_rows))),
            ("Provenance", _provenance_section(provenance)),
            ("Empty-mask policy", f"<p>{_esc(empty_policy)}</p>" if empty_policy else _na("empty-mask policy")),
        ]
    body = "".join(f'<section><h2>{_esc(h)}</h2>{content}</section>' for h, content in sections)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{_esc(title)}</h1>{body}</body></html>\n")
    with atomic_path(out_html) as tmp_html:
        tmp_html.write_text(page, encoding="utf-8")
