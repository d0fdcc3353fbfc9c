"""The review list: per case and class a predicted Dice, the reasons, and a rank over the cohort.

:func:`case_review` turns one case's signals (:mod:`unet_pipeline.quality.signals`) and the
model's ``review`` record (training distribution + calibration, ``model.json``) into one row per
class; the segmentation sidecar stores them. :func:`rank_rows` ranks the rows of a cohort
(``review_rank`` 1 = look first) and :func:`write_review_csv` writes ``review.csv``.

Order: ascending predicted Dice (ties: ascending ``soft_dice``), then the classes with nothing
segmented (no signals, ``predicted_dice`` empty). A class that is probably absent from the scan
(its largest cross-section in one slice under :data:`ABSENT_FRACTION` of the smallest such
cross-section of the training cases, whatever the scan's extent along the slices; or a class no
training case holds; or one whose surroundings, as the network sees them, are unlike the
training scans' around that class on at least half of its voxels and, in its median, by
:data:`~unet_pipeline.quality.context.ABSENT_DISTANCE` thresholds, in a scan where every
segmented class is unlike the training scans' around it: another body region,
:mod:`unet_pipeline.quality.context`) gets at most :data:`ABSENT_DICE`, whatever its softmax
says, so it ranks near the top with that reason. Where another structure of the same scan looks
familiar, far surroundings are local (an artefact, a contrast phase): a reason to look, not a
verdict. A class with nothing segmented that every training scan holds, in a scan covering
about as much of the body (:data:`COVERAGE`), is predicted 0 (probably missed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..io.files import atomic_path
from .calibration import UNCALIBRATED, features, predict_dice

__all__ = ["REVIEW_COLUMNS", "ABSENT_FRACTION", "ABSENT_DICE", "case_review", "rank_rows", "write_review_csv",
           "read_review_csv", "review_from_files", "review_cohort"]

#: Columns of ``review.csv``, in order.
REVIEW_COLUMNS = ["case", "class", "predicted_dice", "review_rank", "reason", "absent_suspected", "volume_ml",
                  "max_area_mm2", "volume_ratio", "soft_dice", "soft_dice_near", "far_share", "removed_share",
                  "mean_maxprob", "entropy", "largest_share", "n_components", "hu_median", "hu_shift", "scan_hu_shift",
                  "slice_thickness_mm", "noise_hu", "noise_ratio", "edge_slices", "context_distance",
                  "unfamiliar_share", "calibration"]
#: A class whose largest cross-section in a slice is less than this share of the training cases'
#: smallest one is probably absent.
ABSENT_FRACTION = 0.2
#: The most a probably absent class is predicted to score.
ABSENT_DICE = 0.05
#: At most this many reasons per row, the most telling first.
MAX_REASONS = 3
#: A scan covering at least this share of the training scans' extent along the slices should hold
#: every class all of them hold.
COVERAGE = 0.8
#: A structure with at least this share of its class's probability mass farther than
#: :data:`~unet_pipeline.quality.signals.NEAR_MM` from it gets a reason.
FAR_SHARE = 0.3
#: A scan whose soft-tissue noise is this many times the training scans' (or this many times
#: smaller) gets a reason.
NOISE_FACTOR = 3.0

_NAN = float("nan")

log = logging.getLogger(__name__)


def _num(x) -> float:
    return _NAN if x is None else float(x)


def _noise_ratio(scan: Mapping, ref: Mapping | None) -> float:
    """The scan's ``noise_hu`` over the training scans' median (NaN where either is missing)."""
    noise, ref_noise = _num(scan.get("noise_hu")), _num(((ref or {}).get("scan") or {}).get("noise_hu"))
    return noise / ref_noise if noise > 0 and ref_noise > 0 else _NAN


def _unlike(cls: Mapping) -> bool:
    """Whether the network's view around a segmented class is unlike the training scans' around it."""
    from .context import UNFAMILIAR_SHARE

    return _num(cls.get("unfamiliar_share")) >= UNFAMILIAR_SHARE


def _absent(cls: Mapping, ref_cls: Mapping | None, scan_unlike: bool = True) -> str:
    """The reason a predicted class is probably absent from the scan, or ``""``. ``scan_unlike``:
    every class segmented in the scan is :func:`_unlike` (only then does the context check call a
    class absent, as from another body region)."""
    from .context import ABSENT_DISTANCE

    unfamiliar, distance = _num(cls.get("unfamiliar_share")), _num(cls.get("context_distance"))
    if scan_unlike and _unlike(cls) and distance >= ABSENT_DISTANCE:
        return (f"surroundings far from the training scans' around this class on {unfamiliar:.0%} of it "
                f"(context distance {distance:.1f}x the threshold): another body region?")
    if ref_cls is None:
        return ""
    if not ref_cls.get("present_share"):
        return "absent in every training scan"
    smallest = _num(ref_cls.get("max_area_mm2_min"))
    area = _num(cls.get("max_area_mm2"))
    if smallest > 0 and area < ABSENT_FRACTION * smallest:
        return (f"{_num(cls.get('volume_ml')):.1f} mL, at most {area:.0f} mm² a slice where every training scan "
                f"has >= {smallest:.0f} mm²: probably absent from this scan")
    return ""


def _reasons(cls: Mapping, scan: Mapping, ref: Mapping | None, name: str, absent: str) -> list[str]:
    """Short reasons, most telling first (see :data:`REVIEW_COLUMNS`); empty when all signals look usual."""
    ref_cls = ((ref or {}).get("classes") or {}).get(name) or {}
    ref_scan = (ref or {}).get("scan") or {}
    out = [absent] if absent else []
    if not absent and _unlike(cls):
        out.append(f"surroundings unlike the training scans' (context distance "
                   f"{_num(cls.get('context_distance')):.1f}x the threshold: contrast, artefact or body region?)")
    med, vol = _num(ref_cls.get("volume_ml_median")), _num(cls.get("volume_ml"))
    if not absent and med > 0 and vol > 0 and not 0.5 <= vol / med <= 2.0:
        out.append(f"volume {vol / med:.1f}x the training median")
    hu, ref_hu = _num(cls.get("hu_median")), _num(ref_cls.get("hu_median"))
    if math.isfinite(hu - ref_hu) and abs(hu - ref_hu) >= 40:
        out.append(f"structure {hu - ref_hu:+.0f} HU from training (other contrast phase?)")
    body, ref_body = _num(scan.get("body_hu_median")), _num(ref_scan.get("body_hu_median"))
    if math.isfinite(body - ref_body) and abs(body - ref_body) >= 30:
        out.append(f"body {body - ref_body:+.0f} HU from training (other scanner's HU profile?)")
    thick, ref_thick = _num(scan.get("slice_thickness_mm")), _num(ref_scan.get("slice_thickness_mm"))
    if thick > 0 and ref_thick > 0 and not 2 / 3 <= thick / ref_thick <= 1.5:
        out.append(f"{thick:.1f} mm slices, training {ref_thick:.1f} mm")
    noise, ratio = _num(scan.get("noise_hu")), _noise_ratio(scan, ref)
    if ratio >= NOISE_FACTOR:
        out.append(f"noise {ratio:.1f}x the training scans' ({noise:.0f} HU)")
    elif ratio <= 1 / NOISE_FACTOR:
        out.append(f"image smoother than the training scans' (noise {noise:.0f} HU against {noise / ratio:.0f}: "
                   "blur or a soft kernel?)")
    soft = _num(cls.get("soft_dice_near", cls.get("soft_dice")))
    if soft < 0.85:
        out.append(f"unsure boundary (soft Dice {soft:.2f})")
    if _num(cls.get("far_share")) >= FAR_SHARE:
        out.append(f"{_num(cls.get('far_share')):.0%} of its probability lies away from it (other candidate pieces?)")
    if _num(cls.get("largest_share")) < 0.9:
        out.append(f"fragmented ({int(cls.get('n_components') or 0)} pieces)")
    if cls.get("edge_slices") and _num(ref_cls.get("edge_share", 0.0)) < 0.5:  # unusual in training scans
        out.append("reaches the first or last slice (cut by the field of view?)")
    return out


def _empty_class(scan: Mapping, ref: Mapping | None, ref_cls: Mapping | None) -> dict:
    """``predicted_dice``, ``absent_suspected`` and ``reason`` of a class with nothing segmented.

    A class every training scan holds, missing from a scan that covers at least
    :data:`COVERAGE` of the training scans' extent along the slices, is probably missed:
    predicted Dice 0. Otherwise (a shorter scan, or a class some training scans lack) nothing
    may be right: predicted Dice empty, ranked after every segmented class."""
    extent, ref_extent = _num(scan.get("z_extent_mm")), _num(((ref or {}).get("scan") or {}).get("z_extent_mm"))
    if (ref_cls or {}).get("present_share") == 1 and extent >= COVERAGE * ref_extent:
        return {"predicted_dice": 0.0, "absent_suspected": False,
                "reason": "nothing segmented, though every training scan holds it and this one covers as much"}
    return {"predicted_dice": _NAN, "absent_suspected": False, "reason": "nothing segmented"}


def case_review(case_id: str, signals: Mapping, review: Mapping | None) -> list[dict]:
    """Unranked review rows (:data:`REVIEW_COLUMNS` but ``review_rank``) of one case, one per class.

    ``signals``: the case's ``{"scan", "classes"}``; ``review``: the model's record (``reference``,
    ``calibration``; None for models without one: the uncalibrated default, no comparisons).
    """
    review = review or {}
    ref, calibration = review.get("reference"), review.get("calibration") or UNCALIBRATED
    scan = signals["scan"]
    scan_unlike = all(_unlike(cls) for cls in signals["classes"].values() if cls.get("volume_ml"))
    rows = []
    for name, cls in signals["classes"].items():
        ref_cls = ((ref or {}).get("classes") or {}).get(name)
        row = {"case": case_id, "class": name, "calibration": "fitted" if calibration is not UNCALIBRATED
               else "uncalibrated", "slice_thickness_mm": _num(scan.get("slice_thickness_mm"))}
        row.update({k: cls.get(k) for k in ("volume_ml", "max_area_mm2", "soft_dice", "soft_dice_near", "far_share",
                                             "removed_share", "mean_maxprob", "entropy", "largest_share",
                                             "n_components", "hu_median", "edge_slices", "context_distance",
                                             "unfamiliar_share")})
        row["noise_hu"], row["noise_ratio"] = _num(scan.get("noise_hu")), _noise_ratio(scan, ref)
        med = _num((ref_cls or {}).get("volume_ml_median"))
        row["volume_ratio"] = _num(cls.get("volume_ml")) / med if med > 0 else _NAN
        row["hu_shift"] = _num(cls.get("hu_median")) - _num((ref_cls or {}).get("hu_median"))
        row["scan_hu_shift"] = _num(scan.get("body_hu_median")) - _num(((ref or {}).get("scan") or {})
                                                                         .get("body_hu_median"))
        if not cls.get("volume_ml"):
            row.update(_empty_class(scan, ref, ref_cls))
        else:
            absent = _absent(cls, ref_cls, scan_unlike)
            dice = predict_dice(calibration, features(cls, scan, ref, name))
            row.update(predicted_dice=min(dice, ABSENT_DICE) if absent else dice, absent_suspected=bool(absent),
                       reason="; ".join(_reasons(cls, scan, ref, name, absent)[:MAX_REASONS]) or "no signal out of the usual")
        rows.append(row)
    return rows


def rank_rows(rows: Sequence[Mapping]) -> list[dict]:
    """The rows of a cohort in review order with ``review_rank`` 1..n (see the module's docstring)."""
    def key(r: Mapping) -> tuple:
        dice = _num(r.get("predicted_dice"))
        empty = not math.isfinite(dice)
        soft = _num(r.get("soft_dice"))
        return (empty, dice if not empty else 0.0, soft if math.isfinite(soft) else 1.0, str(r["case"]),
                str(r["class"]))

    return [{**r, "review_rank": i} for i, r in enumerate(sorted(rows, key=key), start=1)]


def _cell(v) -> object:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return round(v, 4) if isinstance(v, float) else v


def write_review_csv(path: str | Path, rows: Sequence[Mapping]) -> None:
    """``review.csv`` (:data:`REVIEW_COLUMNS`), atomically; empty cells for undefined values."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=REVIEW_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(r.get(k)) for k in REVIEW_COLUMNS})


def read_review_csv(path: str | Path) -> list[dict]:
    """Rows of ``review.csv`` as strings, in file (review) order."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def review_from_files(case_id: str, probs_path: str | Path, preprocessed_dir: str | Path,
                      model_dir: str | Path, postprocess: Mapping | None = None) -> dict:
    """A segmentation sidecar's ``review``: ``signals`` (:func:`~unet_pipeline.quality.signals.case_signals_from_files`
    of the case's probabilities, on the segmentation after ``postprocess``, the section applied to
    the output), with the context signals of :mod:`unet_pipeline.quality.context` where the model
    has a reference, and the unranked ``rows`` of :func:`case_review` with the model's ``review``
    record (the first model's, when folds are ensembled)."""
    from ..model.card import read_model_card
    from .signals import case_signals_from_files, segmentation_on_grid

    card = read_model_card(model_dir)
    names = list(card.labels.values())
    labels = segmentation_on_grid(probs_path, preprocessed_dir, names, postprocess)
    signals = case_signals_from_files(probs_path, preprocessed_dir, names, labels)
    context = (card.review or {}).get("context")
    skipped = None
    if context:
        from .context import CONTEXT_FILE

        if (Path(model_dir) / CONTEXT_FILE).is_file():
            for name, values in _context_signals(model_dir, preprocessed_dir, labels, context, names).items():
                signals["classes"][name].update(values)
        else:  # a model folder copied without it: the segmentation stands, the check cannot run
            skipped = (f"{Path(model_dir) / CONTEXT_FILE} missing (copy the whole model folder): "
                       "no context check, so another body region is not flagged")
            log.warning("%s: %s", case_id, skipped)
    out = {"signals": signals, "rows": case_review(case_id, signals, card.review)}
    return {**out, "context_skipped": skipped} if skipped else out


def _context_signals(model_dir: str | Path, preprocessed_dir: str | Path, labels, record: Mapping,
                     names: Sequence[str]) -> dict:
    """:func:`~unet_pipeline.quality.context.class_context` of one case, the network on the CPU."""
    from ..io.files import load_json
    from ..io.npy import NpyReader
    from ..model.folder import load_model
    from ..preprocess.transform import air_value
    from .context import class_context, load_context

    pre = Path(preprocessed_dir)
    inten = load_json(pre / "meta.json")["intensity"]
    pad = air_value(inten)
    model, _ = load_model(model_dir, "cpu")
    model.eval()
    return class_context(model, NpyReader(pre / "image.npy"), labels, record, load_context(model_dir), names, pad)


def review_cohort(sidecars: Sequence[Mapping], out_csv: str | Path) -> list[dict]:
    """``review.csv`` of a cohort from its segmentation sidecars (their ``review``), ranked; returns the rows.

    A sidecar without ``review`` (written by an older version) contributes no rows."""
    rows = [dict(r) for s in sidecars for r in ((s.get("review") or {}).get("rows") or [])]
    ranked = rank_rows(rows)
    write_review_csv(out_csv, ranked)
    return ranked
