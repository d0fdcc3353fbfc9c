"""Tests for unet_pipeline.report.html: figures and the self-contained HTML report."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from unet_pipeline.report.html import overlay_figure, plot_metric_boxes, write_report
from unet_pipeline.train.curves import plot_training_curves

EVIL = "<script>alert(1)</script>"
METRIC_COLUMNS = ["case", "label", "label_id", "dice", "iou", "precision", "recall", "hd_mm", "hd95_mm", "assd_mm",
                  "nsd", "vol_ref_ml", "vol_pred_ml", "vol_diff_ml", "ref_empty", "pred_empty", "empty_policy"]


def _write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames or list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _assert_png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    return img


@pytest.fixture
def figures(monkeypatch):
    """What each figure written shows, in order: a summary of every figure passed to the save function.

    Each entry: ``{"suptitle", "legend": [texts], "axes": [{"title", "lines": {label: (x, y)},
    "texts": [...], "xticklabels": [...], "points": [y values of scatters], "images": [arrays]}]}``.
    The PNG is still written.
    """
    import unet_pipeline.report.html as report
    import unet_pipeline.train.curves as curves

    shown: list[dict] = []
    save = curves.save_figure

    def capture(fig, out_png, dpi=100):
        shown.append({
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "legend": [t.get_text() for lg in fig.legends for t in lg.get_texts()],
            "axes": [{
                "title": ax.get_title(),
                "lines": {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
                          for ln in ax.lines},
                "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                "texts": [t.get_text() for t in ax.texts],
                "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
                "points": [np.asarray(c.get_offsets())[:, 1] for c in ax.collections if hasattr(c, "get_offsets")
                           and len(c.get_offsets())],
                "images": [np.asarray(im.get_array()) for im in ax.images],
                "contours": sum(1 for c in ax.collections if type(c).__name__ in ("QuadContourSet", "ContourSet")),
            } for ax in fig.axes if ax.get_visible()],
        })
        save(fig, out_png, dpi)

    monkeypatch.setattr(curves, "save_figure", capture)
    monkeypatch.setattr(report, "_save", capture)
    return shown


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def _train_log(path: Path, n_epochs: int, with_val: bool = True) -> Path:
    rows = []
    for e in range(1, n_epochs + 1):
        row = {"epoch": e, "train_loss": round(1.0 / e, 4), "lr": 1e-3 * 0.9 ** e}
        row["val_dice_mean"] = round(0.5 + 0.04 * e, 4) if with_val else ""
        row["val_dice_liver"] = round(0.6 + 0.03 * e, 4) if with_val else ""
        row["val_dice_tumour"] = round(0.4 + 0.05 * e, 4) if with_val else ""
        row["seconds"] = 1.5
        row["slices_per_s"] = 100.0
        rows.append(row)
    return _write_csv(path, rows)


def _metrics_csv(path: Path, case_name: str = "case_001") -> Path:
    rows = []
    rng = np.random.default_rng(1)
    for i, case in enumerate([case_name, "case_002", "case_003", "case_004"]):
        for label_id, label in ((1, "liver"), (2, "tumour")):
            empty = label == "tumour" and i == 3
            rows.append({
                "case": case, "label": label, "label_id": label_id,
                "dice": "" if empty else round(float(rng.uniform(0.6, 0.95)), 4),
                "iou": round(float(rng.uniform(0.5, 0.9)), 4), "precision": 0.9, "recall": 0.85,
                "hd_mm": 12.0, "hd95_mm": "" if empty else round(float(rng.uniform(1, 10)), 3),
                "assd_mm": 1.2, "nsd": "" if empty else round(float(rng.uniform(0.7, 1.0)), 4),
                "vol_ref_ml": 1500.0, "vol_pred_ml": 1480.0, "vol_diff_ml": -20.0,
                "ref_empty": empty, "pred_empty": False, "empty_policy": "nan",
            })
    return _write_csv(path, rows, METRIC_COLUMNS)


def _stats(mean):
    return {"mean": mean, "std": 0.0421, "median": 0.8766, "min": 0.6012, "max": 0.9456, "ci95": [0.7123, 0.8877]}


def _summary_json(path: Path) -> Path:
    summary = {
        "n_cases": 4, "empty_policy": "both empty -> NaN",
        "per_class": {
            "liver": {"n_cases": 4, "dice": _stats(0.8312), "hd95_mm": _stats(4.5678), "assd_mm": _stats(1.2345),
                      "nsd": _stats(0.9111), "iou": _stats(0.7222)},
            EVIL: {"n_cases": 3, "dice": {"mean": None, "std": None, "median": None, "min": None, "max": None,
                                          "ci95": [None, None]},
                   "hd95_mm": None, "assd_mm": {}, "nsd": _stats(0.5556), "iou": _stats(0.4444)},
        },
    }
    path.write_text(json.dumps(summary), encoding="utf-8")
    return path


# ------------------------------------------------------------------ plot_training_curves

@pytest.mark.parametrize("n_epochs,with_val", [(5, True), (1, True), (4, False), (1, False)])
def test_training_curves(tmp_path, n_epochs, with_val, figures):
    log = _train_log(tmp_path / "train_log.csv", n_epochs, with_val)
    out = tmp_path / "plots" / "curves.png"
    plot_training_curves(log, out)
    _assert_png(out)
    _no_temp_files(out.parent)
    epochs = np.arange(1, n_epochs + 1, dtype=float)
    loss, dice, lr = figures[-1]["axes"]
    assert loss["title"] == "Loss" and list(loss["lines"]) == ["train loss"]
    np.testing.assert_allclose(loss["lines"]["train loss"][0], epochs)
    np.testing.assert_allclose(loss["lines"]["train loss"][1], np.round(1.0 / epochs, 4))
    np.testing.assert_allclose(lr["lines"]["learning rate"][1], 1e-3 * 0.9 ** epochs)
    if with_val:  # the mean first (black, thick), then each class, in the legend with the learning rate
        assert list(dice["lines"]) == ["mean", "liver", "tumour"]
        np.testing.assert_allclose(dice["lines"]["tumour"][1], np.round(0.4 + 0.05 * epochs, 4))
        np.testing.assert_allclose(dice["lines"]["mean"][1], np.round(0.5 + 0.04 * epochs, 4))
        assert dice["legend"] == ["mean", "liver", "tumour", "learning rate"]
        assert "no validation set" not in dice["texts"]
    else:
        assert not dice["lines"] and "no validation set" in dice["texts"]
        assert dice["legend"] == ["learning rate"]


def test_training_curves_val_loss_column(tmp_path, figures):
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "lr": 1e-3} for e in (1, 2, 3)]
    log = _write_csv(tmp_path / "train_log.csv", rows)
    plot_training_curves(log, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")
    loss = figures[-1]["axes"][0]
    assert list(loss["lines"]) == ["train loss", "val loss"] and loss["legend"] == ["train loss", "val loss"]
    np.testing.assert_allclose(loss["lines"]["val loss"][1], [1.2, 0.6, 0.4])


@pytest.mark.parametrize("content", [None, "", "epoch,train_loss,lr\n"])
def test_training_curves_missing_or_empty_log(tmp_path, content, figures):
    log = tmp_path / "train_log.csv"
    if content is not None:
        log.write_text(content, encoding="utf-8")
    plot_training_curves(log, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")
    (only,) = figures[-1]["axes"]
    assert only["texts"] == ["no training epochs logged"] and not only["lines"]


# ------------------------------------------------------------------ plot_metric_boxes

def test_metric_boxes(tmp_path, figures):
    metrics = _metrics_csv(tmp_path / "metrics.csv")
    out = tmp_path / "boxes.png"
    plot_metric_boxes(metrics, out)
    _assert_png(out)
    _no_temp_files(tmp_path)
    with open(metrics, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    axes = {ax["title"]: ax for ax in figures[-1]["axes"]}
    for column, title in (("dice", "Dice"), ("hd95_mm", "HD95 (mm)")):
        ax = axes[title]
        assert ax["xticklabels"] == ["liver", "tumour"]  # by label_id
        for points, cls in zip(ax["points"], ("liver", "tumour")):  # one point per case with a value
            expected = sorted(float(r[column]) for r in rows if r["label"] == cls and r[column])
            np.testing.assert_allclose(sorted(points), expected)
    assert len(axes["Dice"]["points"][1]) == 3  # the empty tumour case is left out, not drawn as 0


def test_metric_boxes_show_every_metric(tmp_path, monkeypatch):
    import unet_pipeline.report.html as report

    shown = {}

    def capture(fig, out_png, dpi=100):
        shown["titles"] = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        shown["ylim"] = {ax.get_title(): ax.get_ylim() for ax in fig.axes if ax.get_visible()}

    monkeypatch.setattr(report, "_save", capture)
    plot_metric_boxes(_metrics_csv(tmp_path / "metrics.csv"), tmp_path / "boxes.png")
    assert shown["titles"] == [name for _, name in report.BOX_METRICS]
    assert {"Dice", "IoU", "Precision", "Recall", "NSD", "HD (mm)", "HD95 (mm)", "ASSD (mm)"} <= set(shown["titles"])
    assert shown["ylim"]["Dice"] == pytest.approx((-0.02, 1.02))


def test_metric_boxes_class_without_values(tmp_path, figures):
    rows = [{c: "" for c in METRIC_COLUMNS} | {"case": "a", "label": "liver", "label_id": 1, "dice": 0.9,
                                               "hd95_mm": 2.0, "nsd": 0.95},
            {c: "" for c in METRIC_COLUMNS} | {"case": "a", "label": "tumour", "label_id": 2}]
    metrics = _write_csv(tmp_path / "metrics.csv", rows, METRIC_COLUMNS)
    plot_metric_boxes(metrics, tmp_path / "boxes.png")
    _assert_png(tmp_path / "boxes.png")
    axes = {ax["title"]: ax for ax in figures[-1]["axes"]}
    assert axes["Dice"]["xticklabels"] == ["liver", "tumour"] and axes["Dice"]["texts"] == ["n/a"]
    np.testing.assert_allclose(np.concatenate(axes["Dice"]["points"]), [0.9])
    assert axes["IoU"]["texts"] == ["n/a", "n/a"] and not axes["IoU"]["points"]  # no value of either class


def test_metric_boxes_header_only(tmp_path, figures):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(",".join(METRIC_COLUMNS) + "\n", encoding="utf-8")
    plot_metric_boxes(metrics, tmp_path / "boxes.png")
    _assert_png(tmp_path / "boxes.png")
    (only,) = figures[-1]["axes"]
    assert only["texts"] == ["no metrics"]


# ------------------------------------------------------------------ overlay_figure

def _volume(shape=(10, 24, 20)):
    z, y, x = shape
    image = np.full(shape, -1000.0)
    image[:, 2:-2, 2:-2] = 40.0
    ref = np.zeros(shape, np.uint8)
    ref[3:8, 5:12, 4:10] = 1
    ref[4:7, 14:20, 8:16] = 2
    pred = np.zeros(shape, np.uint8)
    pred[3:8, 6:13, 4:11] = 1
    pred[5:7, 14:19, 9:16] = 2
    return image, ref, pred


LABELS = {0: "background", 1: "liver", 2: EVIL}


@pytest.mark.parametrize("with_ref", [True, False])
def test_overlay_figure(tmp_path, with_ref):
    image, ref, pred = _volume()
    out = tmp_path / "ov" / "overlay.png"
    overlay_figure(image, ref if with_ref else None, pred, (3.0, 0.8, 0.8), LABELS, out, title="case <1>")
    img = _assert_png(out)
    assert img.shape[1] > img.shape[0]  # three columns side by side
    _no_temp_files(out.parent)


def _fill_alpha(view: dict) -> np.ndarray:
    """The prediction layer of one drawn section (the second image): its alpha per pixel."""
    return view["images"][1][..., 3]


def test_overlay_figure_empty_masks(tmp_path, figures):
    image, _, _ = _volume()
    empty = np.zeros(image.shape, np.uint8)
    overlay_figure(image, empty, empty, (2.0, 1.0, 1.0), LABELS, tmp_path / "a.png")
    overlay_figure(image, None, empty, (2.0, 1.0, 1.0), {1: "liver"}, tmp_path / "b.png")
    _assert_png(tmp_path / "a.png")
    _assert_png(tmp_path / "b.png")
    with_ref, without = figures
    for fig in figures:  # three sections, CT drawn, nothing filled, no contour
        assert len(fig["axes"]) == 3
        assert all(len(v["images"]) == 2 and not _fill_alpha(v).any() and v["contours"] == 0 for v in fig["axes"])
    assert with_ref["legend"] == ["liver", EVIL, "prediction (fill)", "reference (contour)"]
    assert without["legend"] == ["liver", "prediction (fill)", "no reference"]


def test_overlay_figure_single_slice_and_full_mask(tmp_path, figures):
    image = np.zeros((1, 8, 9))
    full = np.ones(image.shape, np.uint8)
    overlay_figure(image, full, full, (1.0, 1.0, 2.0), {1: "body"}, tmp_path / "o.png", title="one slice")
    _assert_png(tmp_path / "o.png")
    (fig,) = figures
    assert fig["suptitle"] == "one slice" and len(fig["axes"]) == 3
    shapes = [v["images"][0].shape for v in fig["axes"]]
    assert shapes == [(8, 9), (1, 9), (1, 8)]  # axial (Y, X), coronal (Z, X), sagittal (Z, Y)
    assert all(_fill_alpha(v).all() for v in fig["axes"])  # the full mask fills every pixel of every view


def test_overlay_figure_bad_input(tmp_path):
    image, ref, pred = _volume()
    with pytest.raises(ValueError, match="prediction"):
        overlay_figure(image, ref, pred[:-1], (1.0, 1.0, 1.0), LABELS, tmp_path / "x.png")
    with pytest.raises(ValueError, match="reference"):
        overlay_figure(image, ref[:, :-1], pred, (1.0, 1.0, 1.0), LABELS, tmp_path / "x.png")
    with pytest.raises(ValueError, match="spacing_mm"):
        overlay_figure(image, ref, pred, (1.0, 0.0, 1.0), LABELS, tmp_path / "x.png")
    with pytest.raises(ValueError, match="image"):
        overlay_figure(image[0], ref[0], pred[0], (1.0, 1.0, 1.0), LABELS, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ write_report

def test_write_report_full(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    metrics = _metrics_csv(inputs / "metrics.csv", case_name=EVIL)
    summary = _summary_json(inputs / "summary.json")
    log = _train_log(inputs / "train_log.csv", 3)
    image, ref, pred = _volume()
    overlay_png = inputs / "overlay.png"
    overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), LABELS, overlay_png, title="best")
    geometry = [{"case_id": EVIL, "shape": [24, 20, 10], "spacing_mm": [0.8, 0.8, 3.0], "orientation": "RAS",
                 "split": "test"},
                {"case_id": "case_002", "shape": [24, 20, 10], "spacing_mm": [0.8, 0.8, 3.0], "orientation": "LPS",
                 "split": "train/val"}]
    provenance = {"unet_pipeline": "1.2.3", "python": "3.11",
                  "config": {"model": {"depth": 4}, "note": EVIL, "url": "http://example.org"}}
    from unet_pipeline.evaluate.volumes import VOLUME_COLUMNS

    volumes = _write_csv(inputs / "volumes.csv", [{"case": EVIL, "label": "liver", "label_id": 1, "volume_ml": 1480.0,
                                                   "empty": False, "qc_flags": ""}], VOLUME_COLUMNS)
    from unet_pipeline.quality.review import REVIEW_COLUMNS, write_review_csv

    review = inputs / "review.csv"
    write_review_csv(review, [{"case": EVIL, "class": "liver", "predicted_dice": 0.4321, "review_rank": 1,
                               "reason": "volume 4.0x the training median"},
                              {"case": "case_002", "class": "liver", "predicted_dice": 0.91, "review_rank": 2,
                               "reason": "no signal out of the usual"}])
    assert review.read_text(encoding="utf-8").splitlines()[0] == ",".join(REVIEW_COLUMNS)
    out = tmp_path / "out" / "report.html"
    write_report(out, metrics_csv=metrics, summary_json=summary, train_logs=[log],
                 overlays=[(f"worst: {EVIL}", overlay_png)], geometry_rows=geometry, provenance=provenance,
                 title="Report <b>x</b>", empty_policy="Both empty: Dice = 1 & <NaN>.", volumes_csv=volumes,
                 review_csv=review, review_overlays=[(f"#1 {EVIL} liver", overlay_png)])
    text = out.read_text(encoding="utf-8")

    assert text.startswith("<!DOCTYPE html>")
    # The report opens with the review list: its rows in order, then the top case's overlay.
    first = text.split("<section><h2>")[1]
    assert first.startswith("Review first</h2>")
    assert first.index("0.4321") < first.index("0.91") and "volume 4.0x the training median" in first
    assert "2 first of 2 rows" in first and first.count("data:image/png;base64,") == 1
    # four figures embedded: the review overlay, boxes, curves, overlay
    assert text.count("data:image/png;base64,") == 4
    assert 'src="http' not in text and "href=" not in text
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Report &lt;b&gt;x&lt;/b&gt;" in text
    assert "Both empty: Dice = 1 &amp; &lt;NaN&gt;." in text
    # summary numbers
    for number in ("0.831", "0.042", "0.877", "0.601", "0.946", "0.712", "0.888", "4.568", "0.556"):
        assert number in text, number
    # per-case table, geometry, provenance
    assert "case_002" in text and "hd95_mm" in text
    assert "24 × 20 × 10" in text and "LPS" in text and "train/val" in text
    assert "unet_pipeline" in text and "1.2.3" in text and "&quot;depth&quot;: 4" in text
    assert "not available" not in text
    # every embedded image decodes to a PNG
    import base64

    for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
        assert base64.b64decode(data)[:4] == b"\x89PNG"
    _no_temp_files(out.parent)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_write_report_predict_only(tmp_path):
    out = tmp_path / "report.html"
    write_report(out)
    text = out.read_text(encoding="utf-8")
    for heading in ("Review first", "Summary per class", "Metric distributions", "Per-case metrics",
                    "Volumes and QC flags", "Training curves", "Overlays", "Cohort geometry", "Provenance",
                    "Empty-mask policy"):
        assert heading in text
    assert text.count("not available") == 10  # every section says so
    assert "data:image/png;base64," not in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_missing_files_and_reused_curves(tmp_path):
    log = _train_log(tmp_path / "train_log.csv", 2)
    plot_training_curves(log, tmp_path / "curves.png")
    out = tmp_path / "report.html"
    write_report(out, metrics_csv=tmp_path / "nope.csv", summary_json=tmp_path / "nope.json", train_logs=[log],
                 overlays=[("gone", tmp_path / "gone.png")], provenance={"a": 1})
    text = out.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1
    assert "gone: not available" in text
    assert "summary: not available" in text and "metrics: not available" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "report.html", "train_log.csv"]


def test_write_report_policy_from_summary(tmp_path):
    summary = _summary_json(tmp_path / "summary.json")
    out = tmp_path / "report.html"
    write_report(out, summary_json=summary)
    assert "both empty -&gt; NaN" in out.read_text(encoding="utf-8")


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, unet_pipeline.report.html; print('matplotlib.pyplot' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", check=True)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------ a real browser

def _browser() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_a_headless_browser(tmp_path):
    """The page opens offline in Chromium and its figures render (apt-get install chromium)."""
    import subprocess

    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    inputs = tmp_path / "in"
    inputs.mkdir()
    image, ref, pred = _volume()
    overlay_png = inputs / "overlay.png"
    overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), LABELS, overlay_png, title="best")
    out = tmp_path / "report.html"
    write_report(out, metrics_csv=_metrics_csv(inputs / "metrics.csv"), summary_json=_summary_json(inputs / "s.json"),
                 train_logs=[_train_log(inputs / "train_log.csv", 3)], overlays=[("best", overlay_png)],
                 geometry_rows=[], provenance={"unet_pipeline": "test"})
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,2400", f"--screenshot={shot}", out.as_uri()],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, cwd=tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    pixels = _assert_png(shot)
    rgb = pixels[..., :3].astype(float)
    assert rgb.shape[0] >= 2000 and rgb.shape[1] >= 1000
    # Rendered figures: many non-white pixels and real colour (the class fills and curves).
    assert (rgb.mean(axis=2) < 0.9).mean() > 0.05
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 0.2).mean() > 0.005
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, cwd=tmp_path).stdout
    assert dom.count("<img") == 3 and "Summary" in dom


# ------------------------------------------------------------------ per-class overlays

from unet_pipeline.report.html import sections_through  # noqa: E402

# Dice per (case, class): the best, median and worst differ between the classes.
#   liver:  d 0.70 < b 0.80 < c 0.90 < a 0.95        -> best a, median c (sorted[4 // 2]), worst d
#   tumour: a 0.30 < d 0.60 < b 0.85, c empty (NaN)  -> best b, median d (sorted[3 // 2]), worst a
PER_CLASS_DICE = {"liver": {"a": 0.95, "b": 0.80, "c": 0.90, "d": 0.70},
                  "tumour": {"a": 0.30, "b": 0.85, "c": None, "d": 0.60}}
PER_CLASS_PICKS = {"liver": [("best", "a"), ("median", "c"), ("worst", "d")],
                   "tumour": [("best", "b"), ("median", "d"), ("worst", "a")]}
PER_CLASS_LABELS = {0: "background", 1: "liver", 2: "tumour"}


def _per_class_metrics(path: Path, dice: dict = PER_CLASS_DICE) -> Path:
    ids = {name: k for k, name in PER_CLASS_LABELS.items()}
    rows = []
    for label in sorted(dice, key=lambda n: -ids.get(n, 99)):  # tumour rows first: the order must come from label_id
        for case, d in dice[label].items():
            rows.append({c: "" for c in METRIC_COLUMNS} | {"case": case, "label": label, "label_id": ids.get(label, ""),
                                                           "dice": "" if d is None else d, "empty_policy": "nan"})
    return _write_csv(path, rows, METRIC_COLUMNS)


def test_pick_overlay_cases_per_class(tmp_path):
    from unet_pipeline.report.assembly import pick_overlay_cases

    picks = pick_overlay_cases(_per_class_metrics(tmp_path / "metrics.csv"))
    assert [(p["label"], p["roles"], p["case"]) for p in picks] == [
        (label, [role], case) for label in ("liver", "tumour") for role, case in PER_CLASS_PICKS[label]]
    assert [p["label_id"] for p in picks] == [1, 1, 1, 2, 2, 2]
    assert picks[2]["caption"] == "liver — worst: d (Dice 0.700)"
    assert picks[3]["caption"] == "tumour — best: b (Dice 0.850)"
    assert picks[3]["dice"] == pytest.approx(0.85)
    # n caps the picks per class: worst first, then best, then median; still shown best -> worst
    assert [(p["label"], p["case"]) for p in pick_overlay_cases(tmp_path / "metrics.csv", n=1)] == [
        ("liver", "d"), ("tumour", "a")]
    assert [p["roles"] for p in pick_overlay_cases(tmp_path / "metrics.csv", n=2)] == [["best"], ["worst"]] * 2


def test_pick_overlay_cases_ties_and_few_cases(tmp_path):
    from unet_pipeline.report.assembly import pick_overlay_cases

    dice = {"liver": {"d": 1.0, "b": 1.0, "a": 1.0, "c": 1.0},  # all tied: sorted by id, a b c d
            "spleen": {"b": 0.8, "a": 0.8, "c": 0.3},  # tie at the top: a b sorted by id, c lowest
            "tumour": {"b": 0.5, "a": None}}  # one finite Dice: one figure, all three roles
    picks = pick_overlay_cases(_per_class_metrics(tmp_path / "m.csv", dice))
    assert [(p["label"], p["case"], p["roles"]) for p in picks] == [
        ("liver", "d", ["best"]), ("liver", "c", ["median"]), ("liver", "a", ["worst"]),
        ("tumour", "b", ["best", "median", "worst"]),
        ("spleen", "b", ["best"]), ("spleen", "a", ["median"]), ("spleen", "c", ["worst"])]  # no label_id: last
    assert picks[0]["caption"] == "liver — best: d (Dice 1.000)"
    assert picks[3]["caption"] == "tumour — best, median, worst: b (Dice 0.500)"
    assert picks[4]["label_id"] is None
    # a class without any finite Dice has no picks; no rows at all: nothing
    assert pick_overlay_cases(_per_class_metrics(tmp_path / "n.csv", {"liver": {"a": None}})) == []
    header_only = tmp_path / "h.csv"
    header_only.write_text(",".join(METRIC_COLUMNS) + "\n", encoding="utf-8")
    assert pick_overlay_cases(header_only) == []


def test_sections_through_box_and_non_convex_structure():
    box = np.zeros((12, 20, 16), bool)
    box[3:8, 5:12, 4:11] = True  # centre (5, 8, 7)
    assert sections_through(box) == (5, 8, 7)
    # largest section wins over the centre of mass: areas 1, 4, 9 on z = 1, 2, 3
    cone = np.zeros((6, 8, 8), np.uint8)
    cone[1, 0:1, 0:1] = cone[2, 0:2, 0:2] = cone[3, 0:3, 0:3] = 1
    assert sections_through(cone)[0] == 3
    # two columns with the centre of mass (x = 5.5) in the gap between them: the sagittal section
    # still cuts through the structure (x = 2 and 9 are equally near it: the lower); y = 4, 5 tie -> 4
    u = np.zeros((5, 10, 12), bool)
    u[:, :, 0:3] = u[:, :, 9:12] = True
    z, y, x = sections_through(u)
    assert (z, y, x) == (2, 4, 2) and u[:, :, x].any() and u[z].any() and u[:, y].any()
    assert sections_through(np.zeros((3, 4, 5), bool)) is None
    with pytest.raises(ValueError, match="mask"):
        sections_through(np.ones((4, 5), bool))


def test_overlay_figure_focus_cuts_through_the_class(tmp_path, monkeypatch):
    import unet_pipeline.report.html as rep

    centres = []
    views = rep._views
    monkeypatch.setattr(rep, "_views", lambda shape, centre, spacing: centres.append(centre) or
                        views(shape, centre, spacing))
    image, ref, pred = _volume()
    labels = {0: "background", 1: "liver", 2: "tumour", 3: "spleen"}
    overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), labels, tmp_path / "t.png", title="tumour — best", focus=2)
    overlay_figure(image, None, pred, (3.0, 0.8, 0.8), labels, tmp_path / "l.png", focus=1)
    overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), labels, tmp_path / "s.png", title="spleen", focus=3)
    overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), labels, tmp_path / "all.png")
    # tumour: the reference box [4:7, 14:20, 8:16]; liver without reference: the predicted box [3:8, 6:13, 4:11]
    assert centres[0] == (5, 16, 11) and centres[1] == (5, 9, 7)
    # spleen is in neither: the same sections as without focus (median centre of the reference's foreground)
    assert centres[2] == centres[3]
    for name in ("t", "l", "s", "all"):
        _assert_png(tmp_path / f"{name}.png")


def _write_case(root: Path, case: str, boxes: dict[int, tuple[slice, slice, slice]], shape=(8, 20, 18)):
    """A case as NIfTI files; ``boxes`` and the returned label volume are canonical ``(Z, Y, X)``.

    The files have a diagonal RAS affine, so the stored ``(i, j, k)`` array is the canonical one transposed.
    """
    import nibabel as nib

    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    image = np.full(shape, -800, np.int16)
    image[:, 2:-2, 2:-2] = 40
    label = np.zeros(shape, np.uint8)
    for k, box in boxes.items():
        label[box] = k
    folder = root / case
    folder.mkdir(parents=True)
    paths = {}
    for name, data in (("image", image), ("ref", label), ("pred", label)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine), str(paths[name]))
    return {k: str(v) for k, v in paths.items()}, label


def test_report_from_workflow_per_class_sections(tmp_path, monkeypatch):
    import html as html_lib

    import unet_pipeline.io.images as uio
    import unet_pipeline.report.html as rep
    from unet_pipeline import stages

    # liver and tumour sit in different places in every case, so a section through one need not cut the other
    boxes = {"a": {1: np.s_[1:4, 3:9, 2:7], 2: np.s_[5:7, 12:17, 10:15]},
             "b": {1: np.s_[2:6, 4:10, 3:8], 2: np.s_[4:6, 13:18, 11:16]},
             "c": {1: np.s_[3:7, 2:8, 2:9]},
             "d": {1: np.s_[1:5, 5:11, 4:10], 2: np.s_[6:8, 11:16, 9:14]}}
    cases, refs = {}, {}
    for cid, b in boxes.items():
        paths, refs[cid] = _write_case(tmp_path / "in", cid, b)
        cases[cid] = {**paths, "split": "test"}
    reads, figures = [], []
    read_voxels = uio.read_voxels
    monkeypatch.setattr(uio, "read_voxels", lambda img, path: reads.append(str(path)) or read_voxels(img, path))
    views, overlay = rep._views, rep.overlay_figure
    monkeypatch.setattr(rep, "_views", lambda shape, centre, spacing: figures[-1].append(centre) or
                        views(shape, centre, spacing))
    monkeypatch.setattr(rep, "overlay_figure", lambda *a, **kw: figures.append([Path(a[5]).name]) or overlay(*a, **kw))
    out = tmp_path / "report.html"
    stages.report_from_workflow(out, inputs={"metrics": str(_per_class_metrics(tmp_path / "metrics.csv"))},
                                cases=cases, labels=PER_CLASS_LABELS, config={"x": 1}, work_dir=tmp_path / "fig")
    text = out.read_text(encoding="utf-8")

    # six distinct (case, class) figures, each case's three volumes read once although a, b and d show twice
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == sorted(
        f"overlay_{case}_label{k}.png" for k, label in ((1, "liver"), (2, "tumour"))
        for _, case in PER_CLASS_PICKS[label])
    assert sorted(reads) == sorted(p for c in cases.values() for k, p in c.items() if k != "split")
    assert text.count("data:image/png;base64,") == 1 + 6  # box plots + overlays
    # one sub-section per class, in label order, with best, median and worst naming the right cases
    sections = re.findall(r'<section class="overlay-class"><h3>(.*?)</h3>(.*?)</section>', text, re.S)
    assert [name for name, _ in sections] == ["liver", "tumour"]
    for name, content in sections:
        captions = [html_lib.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", content)]
        expected = PER_CLASS_PICKS[name]
        assert [c.split(" (Dice")[0] for c in captions] == [f"{name} — {role}: {case}" for role, case in expected]
        for caption, (_, case) in zip(captions, expected):
            assert f"(Dice {PER_CLASS_DICE[name][case]:.3f})" in caption
    # every figure's three sections cut through its class in that case's reference
    assert len(figures) == 6
    for name, (z, y, x) in figures:
        case, k = re.fullmatch(r"overlay_(\w)_label(\d)\.png", name).groups()
        ref = refs[case] == int(k)  # canonical (Z, Y, X)
        assert ref[z].any() and ref[:, y].any() and ref[:, :, x].any(), (case, k)
        assert (z, y, x) == sections_through(ref)


def test_report_from_workflow_predict_only_keeps_first_cases(tmp_path):
    from unet_pipeline import stages

    cases = {}
    for cid in ("p1", "p2", "p3", "p4"):
        paths, _ = _write_case(tmp_path / "in", cid, {1: np.s_[2:5, 4:9, 3:8]})
        cases[cid] = {"image": paths["image"], "pred": paths["pred"], "ref": None, "split": "predict"}
    out = tmp_path / "report.html"
    stages.report_from_workflow(out, inputs={}, cases=cases, labels=PER_CLASS_LABELS, config={},
                                work_dir=tmp_path / "fig")
    text = out.read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["overlay_p1.png", "overlay_p2.png",
                                                                     "overlay_p3.png"]
    assert re.findall(r"<figcaption>(.*?)</figcaption>", text) == [f"{c} (no reference)" for c in ("p1", "p2", "p3")]
    assert "overlay-class" not in text and "<h3>" not in text


def test_report_from_workflow_opens_with_the_review_list_and_its_top_cases(tmp_path):
    """The report rule with review.csv: the "Review first" section lists its rows and draws the
    top-ranked (case, class) rows, each cut through its class, in rank order."""
    from unet_pipeline import stages
    from unet_pipeline.quality.review import write_review_csv

    cases = {}
    for cid in ("p1", "p2", "p3", "p4"):
        paths, _ = _write_case(tmp_path / "in", cid, {1: np.s_[2:5, 4:9, 3:8], 2: np.s_[5:7, 12:16, 10:14]})
        cases[cid] = {"image": paths["image"], "pred": paths["pred"], "ref": None, "split": "predict"}
    review = tmp_path / "review.csv"
    order = [("p3", "tumour", 0.05, "probably absent"), ("p1", "liver", 0.41, "volume 3.0x the training median"),
             ("p4", "liver", 0.62, "unsure boundary"), ("p2", "liver", 0.97, "no signal out of the usual")]
    write_review_csv(review, [{"case": c, "class": k, "predicted_dice": d, "review_rank": i, "reason": r}
                              for i, (c, k, d, r) in enumerate(order, start=1)])
    out = tmp_path / "report.html"
    stages.report_from_workflow(out, inputs={"review": str(review)}, cases=cases, labels=PER_CLASS_LABELS, config={},
                                work_dir=tmp_path / "fig")
    text = out.read_text(encoding="utf-8")
    first = text.split("<section><h2>")[1]
    assert first.startswith("Review first</h2>") and "4 first of 4 rows" in first
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", first)
    assert [c.split(":")[0] for c in captions] == ["#1 p3 tumour", "#2 p1 liver", "#3 p4 liver"]
    assert "probably absent" in captions[0]
    drawn = {p.name for p in (tmp_path / "fig").iterdir()}
    assert {"overlay_p3_label2.png", "overlay_p1_label1.png", "overlay_p4_label1.png"} <= drawn


def test_write_report_overlays_per_class(tmp_path):
    image, ref, pred = _volume()
    pngs = {}
    for k in (1, 2):
        pngs[k] = tmp_path / f"ov{k}.png"
        overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), LABELS, pngs[k], focus=k)
    overlays = {"liver": [("liver — best: a (Dice 0.950)", pngs[1]), ("liver — worst: d (Dice 0.700)", pngs[1])],
                EVIL: [(f"{EVIL} — best, median, worst: b (Dice 0.850)", pngs[2])],
                "spleen": []}
    out = tmp_path / "report.html"
    write_report(out, overlays=overlays)
    text = out.read_text(encoding="utf-8")
    sections = re.findall(r'<section class="overlay-class"><h3>(.*?)</h3>(.*?)</section>', text, re.S)
    assert [name for name, _ in sections] == ["liver", "&lt;script&gt;alert(1)&lt;/script&gt;", "spleen"]
    assert [s.count("<figcaption>") for _, s in sections] == [2, 1, 0]
    assert "spleen: no case with a finite Dice: not available" in sections[2][1]
    assert "worst: d (Dice 0.700)" in sections[0][1] and "<script" not in text.lower()
    assert text.count("data:image/png;base64,") == 3
    assert "best, median and worst case by that class" in text


def test_report_per_class_renders_in_a_headless_browser(tmp_path):
    """The per-class overlay sub-sections render in Chromium (screenshot kept in tmp_path)."""
    import subprocess

    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    image, ref, pred = _volume()
    overlays = {}
    for k, name in ((1, "liver"), (2, "tumour")):
        overlays[name] = []
        for role in ("best", "median", "worst"):
            png = tmp_path / f"{name}_{role}.png"
            caption = f"{name} — {role}: case_{k}{role[0]} (Dice 0.9{k}0)"
            overlay_figure(image, ref, pred, (3.0, 0.8, 0.8), {1: "liver", 2: "tumour"}, png, title=caption, focus=k)
            overlays[name].append((caption, png))
    out = tmp_path / "report.html"
    write_report(out, overlays=overlays, provenance={"unet_pipeline": "test"})
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,4000", f"--screenshot={shot}", out.as_uri()],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, cwd=tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    rgb = _assert_png(shot)[..., :3].astype(float)
    assert (rgb.mean(axis=2) < 0.9).mean() > 0.05
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 0.2).mean() > 0.005
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
                         cwd=tmp_path).stdout
    assert dom.count("<img") == 6 and dom.count("<h3>") == 2
    assert "liver — worst: case_1w (Dice 0.910)" in dom and "tumour — best: case_2b (Dice 0.920)" in dom


def test_volumes_section_summarises_each_class(tmp_path):
    """Predict-only runs have no metrics: the report still shows volumes and QC flags per class."""
    from unet_pipeline.evaluate.volumes import VOLUME_COLUMNS

    rows = []
    for i, (vol, flags) in enumerate([(100.0, ""), (200.0, "fragmented"), (300.0, "touches_border;fragmented")]):
        rows.append({"case": f"c{i}", "label": "liver", "label_id": 1, "volume_ml": vol, "empty": False,
                     "qc_flags": flags})
        rows.append({"case": f"c{i}", "label": "spleen", "label_id": 2, "volume_ml": 0.0, "empty": True,
                     "qc_flags": "empty"})
    volumes = _write_csv(tmp_path / "volumes.csv", rows, VOLUME_COLUMNS)
    out = tmp_path / "report.html"
    write_report(out, volumes_csv=volumes)
    html = out.read_text(encoding="utf-8")
    section = html[html.index("Volumes and QC flags"):]
    section = section[:section.index("</section>")]
    # liver: 3 cases, median 200 mL, quartiles 150-250, 0 empty, 2 fragmented, 1 touching the border
    assert "<td>liver</td><td>3</td><td>200.0</td><td>150.0 &ndash; 250.0</td><td>0</td><td>2</td><td>1</td>" in section
    assert "<td>spleen</td><td>3</td><td>&ndash;</td><td>&ndash; &ndash; &ndash;</td><td>3</td><td>0</td><td>0</td>" in section
    write_report(tmp_path / "none.html")
    assert "not available" in (tmp_path / "none.html").read_text(encoding="utf-8").split("Volumes and QC flags")[1][:200]


def test_report_versions_name_the_dicom_libraries():
    from unet_pipeline.report.assembly import versions

    found = versions()
    assert {"torch", "monai", "pydicom", "highdicom"} <= set(found)
    assert found["pydicom"] != "not installed" and found["highdicom"] != "not installed"
