"""One function per workflow stage: paths and plain values in, files out.

The Snakemake rule scripts and the ``unet-pipeline`` CLI both call these; none of them sees
Snakemake. Every file is written atomically, so a failed stage leaves nothing half-written.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import CaseError
from .evaluate import tables
from .io.files import atomic_path, load_json, save_json

__all__ = [
    "demo_cohort",
    "import_case",
    "fingerprint",
    "import_label",
    "preprocess",
    "preprocess_label",
    "slice_case",
    "train",
    "infer",
    "reassemble",
    "export_dicom",
    "dicom_output_paths",
    "evaluate",
    "aggregate_metrics",
    "report_from_files",
    "report_from_workflow",
    "predict_cohort",
    "segmentation_complete",
]

log = logging.getLogger(__name__)


def _labels(labels: Mapping) -> dict[int, str]:
    return {int(k): str(v) for k, v in labels.items()}


def demo_cohort(out_dir: str | Path, *, n_cases: int, seed: int) -> list[str]:
    """Write the synthetic demo cohort (images/, labels/, dataset.json) into ``out_dir``."""
    from .demo import write_demo_cohort

    return write_demo_cohort(out_dir, n_cases=n_cases, seed=seed)


def import_case(case_id: str, image: str | Path, label: str | Path | None, out_dir: str | Path, *,
                labels: Mapping, min_slices: int = 1, geometry_tolerance_mm: float = 1e-3,
                series_uid: str | None = None, slice_axis: str | None = None,
                roi_names: Mapping | None = None) -> dict:
    """Validate a case (image and label together) and write ``out_dir/image.nii.gz`` and ``case.json``.

    The label is only checked here; :func:`import_label` writes it. ``series_uid`` names the one
    DICOM series of an ``image`` folder to read (:attr:`unet_pipeline.cohort.discovery.CaseSpec.series_uid`);
    ``slice_axis`` is the dataset's slicing plane, along which ``min_slices`` are counted;
    ``roi_names`` maps the ROIs of an RTSTRUCT/SEG label to the classes
    (:attr:`unet_pipeline.cohort.discovery.Cohort.roi_names`). ``case.json`` records the series'
    ``frame_of_reference_uid`` (DICOM) and the label's ROIs.

    Raises
    ------
    CaseError
        Any error found by :func:`unet_pipeline.cohort.validation.check_case`, all listed in one message;
        nothing is written then.
    """
    import nibabel as nib

    from .cohort.discovery import CaseSpec
    from .cohort.validation import check_case, load_case_image
    from .io.images import read_voxels

    out_dir = Path(out_dir)
    spec = CaseSpec(case_id, str(image), str(label) if label else None, series_uid)
    check = check_case(spec, _labels(labels), min_slices=min_slices, geometry_tolerance_mm=geometry_tolerance_mm,
                       slice_axis=slice_axis, roi_names=_roi_names(roi_names))
    for w in check.warnings:
        log.warning("%s: %s", case_id, w)
    if not check.ok:
        raise CaseError(image, check.errors)
    img = load_case_image(spec)
    out_image = out_dir / "image.nii.gz"
    if str(image).lower().endswith(".nii.gz") and isinstance(img, nib.Nifti1Image) and len(img.shape) == 3:
        with atomic_path(out_image) as tmp:
            shutil.copyfile(image, tmp)
    else:
        data = read_voxels(img, image)
        hdr = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
        if np.issubdtype(data.dtype, np.floating) and data.size and np.array_equal(data, np.rint(data)) \
                and -32768 <= data.min() and data.max() <= 32767:
            data = data.astype(np.int16)  # whole HU values: store them exactly, as int16
        new = nib.Nifti1Image(data, img.affine, header=hdr)
        new.set_data_dtype(data.dtype)
        new.header.set_slope_inter(1.0, 0.0)
        if hdr is None or len(img.shape) != 3:
            new.header.set_qform(img.affine, code=int(img.header["qform_code"]) or 1)
            new.header.set_sform(img.affine, code=int(img.header["sform_code"]) or 1)
        with atomic_path(out_image) as tmp:
            nib.save(new, str(tmp))
    record = {"case_id": case_id, "source_image": str(image), "source_label": str(label) if label else None,
              "warnings": check.warnings, **check.info}
    save_json(record, out_dir / "case.json")
    return record


def _roi_names(roi_names: Mapping | None) -> dict:
    """ROI patterns with int label values (JSON and Snakemake params turn the keys into strings)."""
    return {int(k): v for k, v in (roi_names or {}).items()}


def import_label(label: str | Path, imported_image: str | Path, out_label: str | Path, *, labels: Mapping,
                 roi_names: Mapping | None = None, record: str | Path | Mapping | None = None) -> None:
    """Write a checked label as uint8 (uint16 beyond 255) NIfTI on the imported image's header.

    An RTSTRUCT or DICOM-SEG label is made on the imported image's grid
    (:func:`unet_pipeline.io.dicom_labels.read_dicom_label`), its ROIs mapped to ``labels`` with
    ``roi_names``; ``record`` (the ``case.json`` of :func:`import_case`, or its content) gives the
    image series' FrameOfReferenceUID, which the label must share.
    """
    import nibabel as nib

    from .infer.reassembly import write_segmentation
    from .io.dicom_labels import is_dicom_label
    from .io.formats import label_dtype
    from .io.images import load_image, read_voxels

    if is_dicom_label(label):
        from .io.dicom_labels import read_dicom_label

        ref = nib.load(str(imported_image))
        record = load_json(record) if isinstance(record, (str, Path)) else dict(record or {})
        made = read_dicom_label(label, np.asarray(ref.affine), ref.shape[:3], _labels(labels), _roi_names(roi_names),
                                frame_of_reference_uid=record.get("frame_of_reference_uid"))
        for w in made.warnings:
            log.warning("%s: %s", label, w)
        log.info("%s: classes from %s %s", label, made.info.modality, made.rois)
        write_segmentation(made.data, imported_image, out_label)
        return
    data = read_voxels(load_image(label), label)
    ref = nib.load(str(imported_image))
    if data.shape != ref.shape[:3]:
        raise CaseError(label, f"label shape {data.shape} differs from image shape {ref.shape}")
    values = np.rint(data).astype(label_dtype(max(_labels(labels), default=0) + 1))
    write_segmentation(values, imported_image, out_label)


def fingerprint(cases: Sequence[tuple[str, str | Path]], out_plan: str | Path, *, labels: Mapping,
                target_spacing_mm: Sequence[float] | None = None, patch_size: Sequence[int] | None = None,
                max_patch: int = 256, max_patch_mm: float | None = 192.0, seed: int = 0,
                slice_axis: str | None = None, intensity: str = "body",
                hu_window: Sequence[float] | None = None) -> dict:
    """Plan from the imported training cases ``(case_id, imported_dir)``; writes ``plan.json``.

    ``slice_axis`` (``axial``, ``coronal``, ``sagittal``; None: axial) is the one slicing plane
    of the dataset, recorded in the plan and in every model trained from it.
    """
    from .plan.fingerprint import make_plan

    triples = [(cid, Path(d) / "image.nii.gz", Path(d) / "label.nii.gz") for cid, d in cases]
    plan = make_plan(triples, _labels(labels), target_spacing_mm=target_spacing_mm, patch_size=patch_size,
                     max_patch=max_patch, max_patch_mm=max_patch_mm, seed=seed, slice_axis=slice_axis,
                     intensity=intensity, hu_window=hu_window)
    save_json(plan, out_plan)
    return plan


def preprocess(case_id: str, imported_image: str | Path, plan_path: str | Path, out_dir: str | Path) -> dict:
    """Preprocess one imported image; ``plan_path`` is a ``plan.json`` or a trained ``model.json``."""
    from .preprocess.transform import preprocess_image

    plan = load_json(plan_path)
    plan = plan.get("plan", plan)  # model.json carries the plan it was trained with
    return preprocess_image(imported_image, plan, out_dir, case_id=case_id)


def preprocess_label(imported_label: str | Path, meta_path: str | Path, out_npy: str | Path) -> None:
    """The label of one case on its preprocessed grid (``meta.json`` from :func:`preprocess`)."""
    from .preprocess import transform

    transform.preprocess_label(imported_label, load_json(meta_path), out_npy)


def slice_case(preprocessed_dir: str | Path, plan_path: str | Path, out_dir: str | Path, *, weight_map: bool = False,
               w0: float = 10.0, sigma_px: float = 5.0) -> dict:
    """Slice index (+ weight maps) of one preprocessed case."""
    from .preprocess.slice_index import build_slice_index

    plan = load_json(plan_path)
    return build_slice_index(preprocessed_dir, out_dir, num_classes=int(plan["num_classes"]), weight_map=weight_map, w0=w0,
                  sigma_px=sigma_px)


def train(train_ids: Sequence[str], val_ids: Sequence[str], *, preprocessed_root: str | Path, slices_root: str | Path,
          plan_path: str | Path, out_dir: str | Path, model: Mapping, training: Mapping, augment: Mapping,
          loss: Mapping | None = None, postprocess: Mapping | None = None) -> dict:
    """Train on ``train_ids`` (validating on ``val_ids``); writes the model folder.

    ``postprocess`` (the config's section) is recorded in ``model.json``: segmentations made with
    the model apply it unless told otherwise (:func:`unet_pipeline.config.effective_postprocess`).
    None (the schema's default) records the postprocessing chosen by the data after training
    (``postprocess_choice`` in ``model.json``: per class, the largest component kept when that
    does not lower the class's validation Dice).
    """
    from .train import loop
    from .train.augment import AugmentConfig

    pre, sl = Path(preprocessed_root), Path(slices_root)
    pairs = lambda ids: [(pre / i, sl / i) for i in ids]  # noqa: E731
    loss = dict(loss or {})
    training = {**training}
    name = loss.pop("name", training.get("loss", "dice_ce"))
    training["loss"] = name
    # Only the Dice losses take these options; w0 and sigma_px belong to the slice stage.
    dice_keys = ("include_background", "batch_dice", "smooth") if name in ("dice", "dice_ce") else ()
    loss = {k: v for k, v in loss.items() if k in dice_keys}
    meta = loop.train(pairs(train_ids), pairs(val_ids), load_json(plan_path), out_dir, model_config=model,
                  train_config=loop.TrainConfig.from_dict(training), augment_config=AugmentConfig.from_dict(augment),
                  loss_options=loss)
    chosen = (meta.get("postprocess_choice") or {}).get("config", {})
    meta = {**meta, "postprocess": dict(postprocess) if postprocess is not None else dict(chosen)}
    save_json(meta, Path(out_dir) / "model.json")
    return meta


def infer(model_dirs: Sequence[str | Path], preprocessed_dir: str | Path, out_probs: str | Path, *,
          inference: Mapping | None = None, out_info: str | Path | None = None,
          server_log_dir: str | Path | None = None) -> dict:
    """Tiled inference of one preprocessed case -> ``(Z, K, Y', X')`` float16 probabilities ``.npy``.

    Several model folders (cross-validation folds) are ensembled by averaging probabilities.
    With ``inference["model_server"]`` true (the workflow's default) the case is sent to the model
    server of :mod:`unet_pipeline.infer.server`, which loads the models once for all cases
    (started here when none runs; its log goes to ``server_log_dir``); if no server can be had,
    the models are loaded in this process. ``out_info`` (optional) receives the device,
    settings and timings as JSON, for provenance.
    """
    from .infer.predictor import Predictor
    from .infer.server import ServerUnavailable, infer_via_server

    inference = dict(inference or {})
    t0 = time.perf_counter()
    info = None
    if inference.get("model_server", False):
        try:
            info = infer_via_server(model_dirs, preprocessed_dir, out_probs, inference=inference,
                                    log_dir=server_log_dir)
            server = info["server"]
            log.info("inferred by the model server pid %s (case %s it served; models loaded once, in %.2f s)",
                     server["pid"], server["cases_served"], server["model_load_seconds"])
        except ServerUnavailable as exc:
            log.warning("%s; loading the models in this job instead", exc)
    if info is None:
        predictor = Predictor(model_dirs, inference.get("device", "auto"))
        info = predictor.predict(preprocessed_dir, out_probs, inference)
    info = {**info, "settings": inference, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("%s: %d slices on %s in %.1f s", preprocessed_dir, info["slices"], info["device"], info["seconds"])
    if out_info:
        save_json(info, out_info)
    return info


def reassemble(probs_path: str | Path, preprocessed_dir: str | Path, imported_image: str | Path, out_nifti: str | Path,
               *, model_dir: str | Path | Sequence[str | Path], postprocess: Mapping | None = None,
               provenance: Mapping | None = None, infer_info: str | Path | Mapping | None = None) -> dict:
    """Probabilities -> segmentation NIfTI with the input's exact geometry, plus a sidecar JSON.

    Parameters
    ----------
    model_dir
        The model folder, or the list of ensembled folders.
    postprocess
        The config's ``postprocess`` section. None (the schema's default): the postprocessing
        recorded in the model's ``model.json`` at training; a mapping replaces it (``{}``: none).
        See :func:`unet_pipeline.config.effective_postprocess`.
    provenance, infer_info
        Copied into the sidecar; ``infer_info`` is the JSON written by :func:`infer` (a path) or
        its content.

    Returns
    -------
    dict
        The sidecar's content; ``postprocess`` in it is the postprocessing applied.
    """
    model_dirs = _as_list(model_dir)
    t0 = time.perf_counter()
    labels, applied = _segment(probs_path, preprocessed_dir, imported_image, out_nifti, model_dirs, postprocess)
    extra = {**dict(provenance or {}), "postprocess": applied, "reassemble_seconds": round(time.perf_counter() - t0, 3)}
    if isinstance(infer_info, Mapping):
        extra["inference"] = dict(infer_info)
    elif infer_info and Path(infer_info).exists():
        extra["inference"] = load_json(infer_info)
    return _write_sidecar(out_nifti, labels, model_dirs, extra)


def dicom_output_paths(out_nifti: str | Path, *, dicom_seg: bool = False, rtstruct: bool = False) -> dict[str, Path]:
    """Where the DICOM results of ``<case>.nii.gz`` go: ``seg`` = ``<case>.dcm`` (DICOM-SEG) and
    ``rtstruct`` = ``<case>_rtstruct.dcm``, for those asked for."""
    out_nifti = Path(out_nifti)
    name = out_nifti.name[:-7] if out_nifti.name.endswith(".nii.gz") else out_nifti.stem
    paths = {"seg": out_nifti.with_name(f"{name}.dcm"), "rtstruct": out_nifti.with_name(f"{name}_rtstruct.dcm")}
    return {k: v for k, v in paths.items() if {"seg": dicom_seg, "rtstruct": rtstruct}[k]}


def export_dicom(segmentation: str | Path, dicom_folder: str | Path, *, labels: Mapping, series_uid: str | None = None,
                 out_seg: str | Path | None = None, out_rtstruct: str | Path | None = None) -> dict:
    """A segmentation of a case read from a DICOM series, written back as DICOM-SEG and/or RTSTRUCT.

    Parameters
    ----------
    segmentation
        The case's segmentation NIfTI (on the imported series' grid: :func:`reassemble`).
    dicom_folder, series_uid
        The source series (:attr:`unet_pipeline.cohort.discovery.CaseSpec`; ``series_uid`` None: the
        folder's only image series), which both outputs reference.
    labels
        Label value -> class name: one segment (ROI) per class.
    out_seg, out_rtstruct
        Where to write the DICOM-SEG (:func:`unet_pipeline.io.dicom_export.write_dicom_seg`) and the
        RTSTRUCT (:func:`unet_pipeline.io.dicom_export.write_rtstruct`); None: not written.

    Returns
    -------
    dict
        ``seg`` and/or ``rtstruct``: the UIDs and classes of what was written.
    """
    import nibabel as nib

    from .io.dicom_export import read_source_series, write_dicom_seg, write_rtstruct
    from .io.images import read_voxels

    img = nib.load(str(segmentation))
    data = read_voxels(img, segmentation)  # uint8/uint16 label values, (I, J, K)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data).astype(np.uint16)
    sources = read_source_series(dicom_folder, series_uid)
    names, written = _labels(labels), {}
    if out_seg:
        written["seg"] = write_dicom_seg(data, np.asarray(img.affine), sources, names, out_seg)
        log.info("%s: DICOM-SEG written to %s", segmentation, out_seg)
    if out_rtstruct:
        written["rtstruct"] = write_rtstruct(data, np.asarray(img.affine), sources, names, out_rtstruct)
        log.info("%s: RTSTRUCT written to %s", segmentation, out_rtstruct)
    return written


def _as_list(model_dir: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)


def _sidecar_path(out_nifti: str | Path) -> Path:
    """``<case>.json`` beside ``<case>.nii.gz`` (or ``<case>.nii``)."""
    out_nifti = Path(out_nifti)
    name = out_nifti.name[:-7] if out_nifti.name.endswith(".nii.gz") else out_nifti.stem
    return out_nifti.with_name(f"{name}.json")


def _segment(probs_path: str | Path, preprocessed_dir: str | Path, imported_image: str | Path, out_nifti: str | Path,
             model_dirs: Sequence[str | Path], postprocess: Mapping | None) -> tuple[dict[int, str], dict]:
    """Write one case's segmentation as both :func:`reassemble` (the workflow) and
    :func:`predict_cohort` (the CLI) do; returns ``(label names, postprocessing applied)``.

    An earlier sidecar is removed first, so a run stopped before the new sidecar is written
    leaves a segmentation without one (incomplete: :func:`segmentation_complete`).
    """
    from .config import effective_postprocess
    from .infer.reassembly import reassemble_case

    model_meta = load_json(Path(model_dirs[0]) / "model.json")
    labels = _labels(model_meta["labels"])
    applied = effective_postprocess(postprocess, model_meta)
    _sidecar_path(out_nifti).unlink(missing_ok=True)
    reassemble_case(probs_path, Path(preprocessed_dir) / "meta.json", imported_image, out_nifti,
                    num_classes=len(labels) + 1, postprocess=applied, labels=labels)
    return labels, applied


def _write_sidecar(out_nifti: str | Path, labels: Mapping[int, str], model_dirs: str | Path | Sequence[str | Path],
                   extra: Mapping | None) -> dict:
    """``<case>.json`` beside a segmentation: label names, models (path + SHA-256), version, provenance.

    Written atomically, after the segmentation: its presence marks the case as done. Returns its content.
    """
    from . import __version__
    from .report.assembly import model_identity

    models = [model_identity(d) for d in _as_list(model_dirs)]
    sidecar = {"labels": {str(k): v for k, v in labels.items()}, "model": models[0]["path"],
               "model_sha256": models[0]["sha256"], "models": models, "unet_pipeline": __version__,
               **dict(extra or {})}
    save_json(sidecar, _sidecar_path(out_nifti))
    return sidecar


def segmentation_complete(out_nifti: str | Path) -> bool:
    """Whether a segmentation written by :func:`reassemble` or :func:`predict_cohort` is complete.

    Complete: ``<case>.nii.gz`` and its sidecar ``<case>.json`` both exist, the sidecar is a JSON
    object with ``labels``, and the NIfTI's header and every voxel can be read (a truncated or
    corrupt file is not complete). Both files are written atomically, the sidecar last, so a run
    that was stopped leaves either a complete case or one that this reports as incomplete.
    """
    import nibabel as nib

    out_nifti = Path(out_nifti)
    sidecar = _sidecar_path(out_nifti)
    if not (out_nifti.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        np.asanyarray(nib.load(str(out_nifti)).dataobj)
    except Exception:  # noqa: BLE001 - whatever the reason, the output cannot be used as it is
        return False
    return isinstance(meta, dict) and "labels" in meta


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
                      volumes_csv: str | Path | None = None) -> None:
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
    ``overlay_<case>_label<focus>.png``.
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
    for item in overlay_cases:
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
    write_report(out_html, metrics_csv=metrics_csv, summary_json=summary_json, train_logs=train_logs,
                 overlays=overlays, geometry_rows=geometry, provenance=provenance, empty_policy=EMPTY_POLICY,
                 volumes_csv=volumes_csv)


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
    report_from_files(out_html, metrics_csv=metrics, summary_json=inputs.get("summary"), train_logs=list(train_logs),
           overlay_cases=overlay_cases, case_records=records, provenance=provenance, labels=labels, work_dir=work_dir,
           splits={cid: c.get("split") for cid, c in cases.items()}, volumes_csv=inputs.get("volumes"))


def predict_cohort(model_dirs: Sequence[str | Path], inputs: Sequence[tuple], out_dir: str | Path, *,
                   work_dir: str | Path, inference: Mapping | None = None, postprocess: Mapping | None = None,
                   keep_going: bool = True, overwrite: bool = False, dicom_seg: bool = False,
                   rtstruct: bool = False, overlap_stages: bool | None = None) -> dict[str, str]:
    """Segment many cases with the models loaded once: import -> preprocess -> infer -> reassemble.

    The stages and their arguments are those of the workflow's predict-only mode: the checks of
    :func:`import_case` (at least the model's ``in_channels`` slices along its slicing plane),
    :func:`preprocess` with the model's plan, :meth:`Predictor.predict` with ``inference``, and
    the reassembly and postprocessing of :func:`reassemble`; so a case's segmentation is the one
    the workflow writes with the same model and ``inference`` section.

    Parameters
    ----------
    model_dirs
        Model folder(s); several (cross-validation folds) are ensembled.
    inputs
        ``(case_id, image path)`` pairs (NIfTI, NRRD, MHA or a DICOM folder), or
        ``(case_id, DICOM folder, SeriesInstanceUID)`` for one series of a folder holding several.
    out_dir
        Receives ``<case>.nii.gz`` (the input's geometry) and ``<case>.json`` per case, each written
        atomically (the sidecar last), and ``volumes.csv`` of every case of ``inputs`` that has a
        complete segmentation (written now or before).
    dicom_seg, rtstruct
        For a case read from a DICOM series, also write ``<case>.dcm`` (DICOM-SEG) and/or
        ``<case>_rtstruct.dcm`` (RTSTRUCT) referencing it (:func:`export_dicom`); a case
        lacking one of them is not complete.
    work_dir
        Intermediate files, one folder per case, removed when the case is done.
    inference
        The ``inference`` config section (``device``, ``overlap``, ``batch_size``, ``mirror_tta``).
    postprocess
        None: the postprocessing recorded in the model; a mapping replaces it (``{}``: none).
    keep_going
        Record a failing case, whatever the exception, and go on with the others (an interrupt,
        ``KeyboardInterrupt``, still stops the run).
    overwrite
        Segment every case again; otherwise a case whose output is complete
        (:func:`segmentation_complete`) is skipped.
    overlap_stages
        While the network predicts one case, import and preprocess the next one in one background
        thread and reassemble, measure and write the previous one in another (the outputs are the
        same). None: on a GPU only; on a CPU the threads take cores from the network (2 cores,
        3 cases of 100 slices: 27.9 s overlapped, 26.9 s one case after the other).

    Returns
    -------
    dict
        case id -> ``"ok"``, ``"skipped"`` (a complete output was there) or the error message.
    """
    from .infer.predictor import Predictor
    from .io.geometry import model_slice_axis

    inference = dict(inference or {})
    model_dirs = [str(d) for d in model_dirs]
    predictor = Predictor(model_dirs, inference.get("device", "auto"))
    options = {"model_dirs": model_dirs, "inference": inference, "postprocess": postprocess,
               "dicom_requested": dicom_seg or rtstruct,
               "import_options": {"min_slices": int(predictor.meta["architecture"].get("in_channels", 1)),
                                  "slice_axis": model_slice_axis(model_dirs[0])}}
    status: dict[str, str] = {}  # case id -> "ok"/"skipped"/error
    rows_of: dict[str, list[dict]] = {}  # case id -> its volumes.csv rows
    jobs = _jobs_to_run(inputs, Path(out_dir), Path(work_dir), status, rows_of, dicom_seg=dicom_seg,
                        rtstruct=rtstruct, overwrite=overwrite, keep_going=keep_going)
    if overlap_stages is None:
        overlap_stages = predictor.device.type == "cuda"
    run = _run_overlapped if overlap_stages else _run_in_turn
    for case_id, outcome in run(predictor, jobs, options, stop_on_error=not keep_going):
        if isinstance(outcome, BaseException):
            if not keep_going or not isinstance(outcome, Exception):
                raise outcome
            status[case_id] = _failure(case_id, outcome)
        else:
            status[case_id], rows_of[case_id] = "ok", outcome
    status = {case_id: status[case_id] for case_id, *_ in inputs}  # the order of ``inputs``
    volume_rows = [row for case_id in status for row in rows_of.get(case_id, [])]
    if volume_rows:
        tables.write_rows(Path(out_dir) / "volumes.csv", volume_rows, columns=tables.VOLUME_COLUMNS)
    return status


def _jobs_to_run(inputs: Sequence[tuple], out_dir: Path, work_dir: Path, status: dict, rows_of: dict, *,
                 dicom_seg: bool, rtstruct: bool, overwrite: bool, keep_going: bool) -> list[_CaseJob]:
    """The cases of ``inputs`` to segment; those skipped (complete) or failing already go into
    ``status`` (and their volume rows into ``rows_of``)."""
    jobs = []
    for case_id, image, *series in inputs:
        job = _CaseJob(case_id, image, series[0] if series else None, out_dir, work_dir,
                       dicom_seg=dicom_seg, rtstruct=rtstruct)
        try:
            if not overwrite and _output_complete(case_id, job.out, job.dicom_out):
                status[case_id] = "skipped"
                rows_of[case_id] = load_json(_sidecar_path(job.out)).get("volumes") or []
                continue
        except Exception as exc:  # noqa: BLE001 - an unreadable sidecar fails this case only
            if not keep_going:
                raise
            status[case_id] = _failure(case_id, exc)
            continue
        jobs.append(job)
    return jobs


class _CaseJob:
    """One case of :func:`predict_cohort`: its input, output paths, work folder and step timings."""

    def __init__(self, case_id: str, image: str | Path, series_uid: str | None, out_dir: Path, work_dir: Path, *,
                 dicom_seg: bool, rtstruct: bool) -> None:
        self.case_id, self.image, self.series_uid = case_id, image, series_uid
        self.out = out_dir / f"{case_id}.nii.gz"
        self.work = work_dir / case_id
        self.dicom_out = dicom_output_paths(self.out, dicom_seg=dicom_seg, rtstruct=rtstruct) \
            if Path(image).is_dir() else {}
        self.timings: dict[str, float] = {}
        self.start = 0.0  # when its import began

    def timed(self, step: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[step] = round(time.perf_counter() - start, 3)


def _run_in_turn(predictor, jobs: Sequence[_CaseJob], options: Mapping, *, stop_on_error: bool = False):
    """Yield ``(case id, volume rows or the exception)`` per job, one case after the other.

    An exception that is not an ``Exception`` (an interrupt), or any with ``stop_on_error``,
    is raised at once."""
    for job in jobs:
        try:
            record = _prepare_case(predictor, job, options)
            outcome = _finish_case(predictor, job, record, _infer_case(predictor, job, options), options)
        except Exception as exc:  # noqa: BLE001 - handed to predict_cohort, which decides
            if stop_on_error:
                raise
            outcome = exc
        finally:
            shutil.rmtree(job.work, ignore_errors=True)
        yield job.case_id, outcome


def _run_overlapped(predictor, jobs: Sequence[_CaseJob], options: Mapping, *, stop_on_error: bool = False):
    """As :func:`_run_in_turn`, with case ``i + 1`` prepared and case ``i - 1`` finished in background
    threads while the network predicts case ``i``; outcomes are yielded in the jobs' order."""
    from concurrent.futures import ThreadPoolExecutor

    def finish(job: _CaseJob, prepared: dict, info: dict) -> list[dict]:
        try:
            return _finish_case(predictor, job, prepared, info, options)
        finally:
            shutil.rmtree(job.work, ignore_errors=True)

    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as prep, \
            ThreadPoolExecutor(1, thread_name_prefix="finish") as fin:
        pending = []  # (job, finishing future), in order
        next_prepared = prep.submit(_prepare_case, predictor, jobs[0], options) if jobs else None
        for i, job in enumerate(jobs):
            prepared_future = next_prepared
            next_prepared = prep.submit(_prepare_case, predictor, jobs[i + 1], options) if i + 1 < len(jobs) else None
            try:
                prepared = prepared_future.result()
                info = _infer_case(predictor, job, options)
            except Exception as exc:  # noqa: BLE001 - handed to predict_cohort, which decides
                shutil.rmtree(job.work, ignore_errors=True)
                if stop_on_error:
                    raise
                pending.append((job, exc))
            else:
                pending.append((job, fin.submit(finish, job, prepared, info)))
            while pending and (isinstance(pending[0][1], BaseException) or pending[0][1].done()):
                yield _outcome(*pending.pop(0))
        while pending:
            yield _outcome(*pending.pop(0))


def _outcome(job: _CaseJob, result) -> tuple[str, object]:
    """``(case id, rows or exception)`` of a finished job (``result``: a future or an exception)."""
    if isinstance(result, BaseException):
        return job.case_id, result
    try:
        return job.case_id, result.result()
    except Exception as exc:  # noqa: BLE001 - handed to predict_cohort, which decides
        return job.case_id, exc


def _prepare_case(predictor, job: _CaseJob, options: Mapping) -> dict:
    """Import and preprocess one case into its work folder; the import record."""
    job.start = time.perf_counter()
    shutil.rmtree(job.work, ignore_errors=True)
    record = job.timed("import", import_case, job.case_id, job.image, None, job.work / "imported",
                       labels=predictor.labels, series_uid=job.series_uid, **options["import_options"])
    job.timed("preprocess", preprocess, job.case_id, job.work / "imported" / "image.nii.gz",
              Path(options["model_dirs"][0]) / "model.json", job.work / "pre")
    return record


def _infer_case(predictor, job: _CaseJob, options: Mapping) -> dict:
    """The network's probabilities of one prepared case (``probs.npy`` in its work folder)."""
    return job.timed("infer", predictor.predict, job.work / "pre", job.work / "probs.npy", options["inference"])


def _finish_case(predictor, job: _CaseJob, record: dict, info: dict, options: Mapping) -> list[dict]:
    """Reassemble, postprocess, measure, export and describe one predicted case; its volume rows.

    The sidecar, written last, records the seconds of each step under ``timings`` (the profile of
    a case; with overlapped stages the steps of neighbouring cases ran at the same time)."""
    from .evaluate.volumes import volume_rows

    labels, model_dirs, imported = predictor.labels, options["model_dirs"], job.work / "imported" / "image.nii.gz"
    _, applied = job.timed("reassemble", _segment, job.work / "probs.npy", job.work / "pre", imported, job.out,
                           model_dirs, options["postprocess"])
    rows = job.timed("volumes", volume_rows, job.case_id, job.out, imported, _labels(labels))
    extra = {}
    if job.dicom_out:
        extra["dicom"] = job.timed("dicom_export", export_dicom, job.out, job.image, labels=labels,
                                   series_uid=job.series_uid, out_seg=job.dicom_out.get("seg"),
                                   out_rtstruct=job.dicom_out.get("rtstruct"))
    elif options["dicom_requested"]:
        log.info("%s: not read from a DICOM series, so no DICOM-SEG/RTSTRUCT is written", job.case_id)
    _write_sidecar(job.out, labels, model_dirs, {
        "case": job.case_id, "source": str(job.image), "device": info["device"],
        "seconds": round(time.perf_counter() - job.start, 3), "timings": job.timings, "postprocess": applied,
        "inference": {**info, "settings": options["inference"]}, "warnings": record.get("warnings", []),
        "volumes": rows, **extra})
    log.info("%s: segmented (%s)", job.case_id, ", ".join(f"{k} {v:.1f} s" for k, v in job.timings.items()))
    return rows


def _output_complete(case_id: str, out: Path, dicom_out: Mapping[str, Path]) -> bool:
    """Whether ``out`` (and each DICOM output asked for) is complete, so :func:`predict_cohort` skips the case."""
    if segmentation_complete(out) and all(p.is_file() for p in dicom_out.values()):
        log.info("%s: %s is complete, skipped (overwrite to redo it)", case_id, out)
        return True
    return False


def _failure(case_id: str, exc: Exception) -> str:
    """The status of a case that failed with ``exc`` (the message of a ``CaseError``), logged."""
    message = str(exc) if isinstance(exc, CaseError) else f"{type(exc).__name__}: {exc}"
    log.error("%s: %s", case_id, message)
    log.debug("%s failed", case_id, exc_info=exc)
    return message


