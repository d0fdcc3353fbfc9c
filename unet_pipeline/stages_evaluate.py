"""The stages of ``workflow/rules/evaluate.smk``: per-case metrics and volumes, their tables, the report.

Paths and plain values in, files out, as every function of :mod:`unet_pipeline.stages` (which
re-exports these: the rules' scripts and the CLI call them as ``stages.<name>``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import CaseError
from .evaluate import tables
from .io.files import save_json

__all__ = ["evaluate", "volumes", "aggregate_volumes", "aggregate_metrics", "report_from_files", "report_from_workflow"]


def _labels(labels: Mapping) -> dict[int, str]:
    return {int(k): str(v) for k, v in labels.items()}


def evaluate(case_id: str, pred: str | Path, ref: str | Path, out_csv: str | Path, *, labels: Mapping | None,
             nsd_tolerance_mm: float | Mapping[str, float] = 2.0) -> list[dict]:
    """Metrics of one case (all classes) into a one-case CSV.

    ``labels``: label value -> class name; None: the non-zero values found in ``pred`` or ``ref``,
    named by :func:`unet_pipeline.evaluate.tables.value_label_names`.
    """
    import nibabel as nib

    from .evaluate.metrics import case_metrics
    from .io.formats import spacing_from_affine
    from .io.images import read_voxels

    pimg, rimg = nib.load(str(pred)), nib.load(str(ref))
    if pimg.shape != rimg.shape or not np.allclose(pimg.affine, rimg.affine, atol=1e-4):
        raise CaseError(pred, f"prediction grid {pimg.shape} does not match reference {ref} {rimg.shape}")
    pdata, rdata = read_voxels(pimg, pred), read_voxels(rimg, ref)
    if labels is None:
        labels = tables.value_label_names(np.union1d(np.unique(pdata), np.unique(rdata)))
    rows = case_metrics(pdata, rdata, spacing_from_affine(rimg.affine), _labels(labels), nsd_tolerance_mm)
    rows = [{"case": case_id, **r} for r in rows]
    tables.write_rows(out_csv, rows)
    return rows


def volumes(case_id: str, seg: str | Path, image: str | Path, out_csv: str | Path, *, labels: Mapping) -> list[dict]:
    """Volumes, HU statistics and QC flags of one segmentation into a one-case CSV."""
    from .evaluate.volumes import volume_rows

    rows = volume_rows(case_id, seg, image, _labels(labels))
    tables.write_rows(out_csv, rows, columns=tables.VOLUME_COLUMNS)
    return rows


def aggregate_volumes(case_csvs: Sequence[str | Path], out_csv: str | Path) -> int:
    """Concatenate per-case volume CSVs into one table; returns the number of rows."""
    rows = []
    for p in case_csvs:
        with open(p, newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    tables.write_rows(out_csv, rows, columns=tables.VOLUME_COLUMNS)
    return len(rows)


def aggregate_metrics(case_csvs: Sequence[str | Path], out_csv: str | Path, out_summary: str | Path,
                      out_boxes: str | Path | None = None) -> dict:
    """Concatenate per-case metric CSVs into ``metrics.csv``, write ``summary.json`` and (with
    ``out_boxes``) the per-class box plots of every metric as PNG."""
    from .evaluate.metrics import EMPTY_POLICY, summarize

    rows = [r for p in case_csvs for r in tables.read_rows(p)]
    tables.write_rows(out_csv, rows)
    if out_boxes:
        from .report.html import plot_metric_boxes

        plot_metric_boxes(out_csv, out_boxes)
    summary = {"n_cases": len({r["case"] for r in rows}), "empty_policy": EMPTY_POLICY, "per_class": summarize(rows)}
    save_json(summary, out_summary)
    return summary


def report_from_files(out_html: str | Path, *, metrics_csv: str | Path | None, summary_json: str | Path | None,
                      train_logs: Sequence[str | Path], overlay_cases: Sequence[Mapping],
                      case_records: Sequence[str | Path], provenance: Mapping, labels: Mapping,
                      work_dir: str | Path, splits: Mapping[str, str] | None = None,
                      volumes_csv: str | Path | None = None, review_csv: str | Path | None = None,
                      review_cases: Sequence[Mapping] = ()) -> None:
    """The HTML report from files named one by one: draws the overlays, reads the cases' geometry,
    then :func:`unet_pipeline.report.html.write_report` writes the page (summary, plots, curves,
    volumes, overlays, cohort geometry and provenance). :func:`report_from_workflow` calls it
    with the report rule's inputs.

    ``overlay_cases``: dicts with ``case``, ``image`` (imported NIfTI), ``pred``, optional ``ref``
    and ``caption``, and, for per-class picks (:func:`unet_pipeline.report.assembly.pick_overlay_cases`),
    ``group`` (the class name the figure is listed under) and ``focus`` (its label value: the sections cut through that
    class). With any ``group``, the report has one overlay sub-section per class of ``labels``
    (in label order, then any other group); otherwise the figures are listed as given. Each
    case's volumes are read once, however many figures show it; a repeated (case, focus) is drawn
    once. Figures are written to ``work_dir`` as ``overlay_<case>.png`` (no focus) or
    ``overlay_<case>_label<focus>.png``. ``review_csv`` and ``review_cases`` (dicts as
    ``overlay_cases``: the top of the review list) make the first section, "Review first".
    """
    import nibabel as nib

    from .evaluate.metrics import EMPTY_POLICY
    from .io.geometry import canonical_orientation
    from .io.images import read_voxels
    from .report.assembly import geometry_rows, group_overlays
    from .report.html import overlay_figure, write_report

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    names = _labels(labels)
    by_case: dict[str, list[Mapping]] = {}
    for item in [*overlay_cases, *review_cases]:
        by_case.setdefault(str(item["case"]), []).append(item)
    pngs: dict[tuple[str, int | None], Path] = {}
    for cid, items in by_case.items():  # one case at a time: its volumes are read once, then dropped
        first = items[0]
        img = nib.load(str(first["image"]))
        orient = canonical_orientation(np.asarray(img.affine), img.shape)
        to_c = lambda p: np.ascontiguousarray(orient.to_canonical(read_voxels(nib.load(str(p)), p)))  # noqa: E731
        image, pred = to_c(first["image"]), to_c(first["pred"])  # canonical (Z, Y, X); HU and label values
        ref = to_c(first["ref"]) if first.get("ref") else None
        for item in items:
            focus = None if item.get("focus") is None else int(item["focus"])
            if (cid, focus) in pngs:
                continue
            png = work / (f"overlay_{cid}.png" if focus is None else f"overlay_{cid}_label{focus}.png")
            overlay_figure(image, ref, pred, orient.canonical_spacing, names, png,
                           title=item.get("caption", cid), focus=focus)
            pngs[(cid, focus)] = png
        del image, pred, ref
    entries = []
    for item in overlay_cases:
        focus = None if item.get("focus") is None else int(item["focus"])
        entries.append((item.get("group"), (item.get("caption", item["case"]), pngs[(str(item["case"]), focus)])))
    overlays = group_overlays(entries, names)
    geometry = geometry_rows(case_records, splits)
    focus_of = lambda item: None if item.get("focus") is None else int(item["focus"])  # noqa: E731
    review_overlays = [(item.get("caption", item["case"]), pngs[(str(item["case"]), focus_of(item))])
                       for item in review_cases]
    write_report(out_html, metrics_csv=metrics_csv, summary_json=summary_json, train_logs=train_logs,
                 overlays=overlays, geometry_rows=geometry, provenance=provenance, empty_policy=EMPTY_POLICY,
                 volumes_csv=volumes_csv, review_csv=review_csv, review_overlays=review_overlays)


def report_from_workflow(out_html: str | Path, *, inputs: Mapping, cases: Mapping[str, Mapping], labels: Mapping,
                         config: Mapping, work_dir: str | Path, n_overlays: int = 3,
                         model_dirs: Sequence[str | Path] = ()) -> None:
    """The report rule: pick the overlays from the rule's inputs, then :func:`report_from_files`.

    With metrics: per class, the best, median and worst case by that class's Dice
    (:func:`unet_pipeline.report.assembly.pick_overlay_cases`, at most ``n_overlays`` per class), each
    cut through that class.
    Without (predict-only): the first ``n_overlays`` cases, all classes.
    """
    import platform

    from . import __version__
    from .report.assembly import model_identity, pick_overlay_cases, versions

    metrics = inputs.get("metrics")
    if metrics:
        ids = {name: k for k, name in _labels(labels).items()}
        overlay_cases = [{**cases[p["case"]], "case": p["case"], "caption": p["caption"], "group": p["label"],
                          "focus": p["label_id"] if p["label_id"] is not None else ids.get(p["label"])}
                         for p in pick_overlay_cases(metrics, n_overlays)]
    else:
        overlay_cases = [{**cases[cid], "case": cid, "caption": f"{cid} (no reference)"}
                         for cid in list(cases)[:n_overlays]]
    train_logs = inputs.get("train_logs") or []
    if isinstance(train_logs, (str, Path)):
        train_logs = [train_logs]
    provenance = {"unet_pipeline": __version__, "python": platform.python_version(), "versions": versions(),
                  "models": [model_identity(d) for d in model_dirs], "config": dict(config)}
    records = inputs.get("records", [])
    if isinstance(records, str):
        records = [records]
    review_cases = _review_overlay_cases(inputs.get("review"), cases, labels, n_overlays)
    report_from_files(out_html, metrics_csv=metrics, summary_json=inputs.get("summary"), train_logs=list(train_logs),
           overlay_cases=overlay_cases, case_records=records, provenance=provenance, labels=labels, work_dir=work_dir,
           splits={cid: c.get("split") for cid, c in cases.items()}, volumes_csv=inputs.get("volumes"),
           review_csv=inputs.get("review"), review_cases=review_cases)


def _review_overlay_cases(review_csv: str | Path | None, cases: Mapping[str, Mapping], labels: Mapping,
                          n: int) -> list[dict]:
    """The report's overlays of the ``n`` top rows of ``review.csv`` (each cut through its class)."""
    if not review_csv or not Path(review_csv).is_file():
        return []
    from .quality.review import read_review_csv

    ids = {name: k for k, name in _labels(labels).items()}
    picked = [r for r in read_review_csv(review_csv) if r["case"] in cases][:n]
    return [{**cases[r["case"]], "case": r["case"], "focus": ids.get(r["class"]),
             "caption": f"#{r['review_rank']} {r['case']} {r['class']}: predicted Dice {r['predicted_dice'] or '-'}"
                        f" ({r['reason']})"} for r in picked]
