"""One function per workflow stage: paths and plain values in, files out.

The stages of evaluation and the report live in :mod:`unet_pipeline.stages_evaluate` and are
re-exported here, so ``unet_pipeline.stages`` stays the one API the rules and the CLI call.

The Snakemake rule scripts and the ``unet-pipeline`` CLI both call these; none of them sees
Snakemake. Every file is written atomically, so a failed stage leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CaseError
from .io.files import atomic_path, load_json, save_json
from .stages_evaluate import (aggregate_metrics, aggregate_volumes, evaluate, report_from_files, report_from_workflow,
                              volumes)

if TYPE_CHECKING:
    from .plan.plan import Plan

__all__ = [
    "demo_cohort",
    "import_case",
    "fingerprint",
    "plan",
    "import_label",
    "preprocess",
    "preprocess_label",
    "slice_case",
    "train",
    "infer",
    "reassemble",
    "export_dicom",
    "dicom_output_paths",
    "DICOM_OUTPUT_SUFFIXES",
    "evaluate",
    "volumes",
    "aggregate_metrics",
    "aggregate_volumes",
    "report_from_files",
    "report_from_workflow",
    "write_segmentation",
    "write_sidecar",
    "SIDECAR_KEYS",
    "review_case",
    "review_list",
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


def fingerprint(cases: Sequence[tuple[str, str | Path]], out_fingerprint: str | Path, *, labels: Mapping,
                slice_axis: str | None = None, seed: int = 0) -> dict:
    """Statistics of the imported training cases ``(case_id, imported_dir)``; writes ``fingerprint.json``.

    The one planning step that reads the images (:func:`unet_pipeline.plan.fingerprint.fingerprint_cases`):
    spacings and shapes along ``slice_axis`` (``axial``, ``coronal``, ``sagittal``; None: axial),
    HU statistics of the foreground and body sampled with ``seed``, voxels per class.
    """
    from .plan.fingerprint import fingerprint_cases

    triples = [(cid, Path(d) / "image.nii.gz", Path(d) / "label.nii.gz") for cid, d in cases]
    stats = fingerprint_cases(triples, _labels(labels), slice_axis=slice_axis, seed=seed)
    save_json(stats, out_fingerprint)
    return stats


def plan(fingerprint_path: str | Path, out_plan: str | Path, *, target_spacing_mm: Sequence[float] | None = None,
         patch_size: Sequence[int] | None = None, max_patch: int = 256, max_patch_mm: float | None = 192.0,
         intensity: str = "body", hu_window: Sequence[float] | None = None) -> dict:
    """The plan from ``fingerprint.json`` and the planning options (no image read); writes ``plan.json``.

    The slicing plane is the fingerprint's, recorded in the plan and in every model trained from
    it; the options are those of :class:`unet_pipeline.plan.planner.PlanOptions`.
    """
    from .plan.planner import PlanOptions, plan_from_fingerprint

    options = PlanOptions(target_spacing_mm=target_spacing_mm, patch_size=patch_size, max_patch=max_patch,
                          max_patch_mm=max_patch_mm, intensity=intensity, hu_window=hu_window)
    content = plan_from_fingerprint(load_json(fingerprint_path), options).to_dict()
    save_json(content, out_plan)
    return content


def _read_plan(plan_path: str | Path) -> Plan:
    """The :class:`~unet_pipeline.plan.plan.Plan` of a ``plan.json`` or of a trained model's ``model.json``."""
    from .model.card import read_model_card
    from .plan.plan import load_plan

    plan_path = Path(plan_path)
    return read_model_card(plan_path.parent).plan if plan_path.name == "model.json" else load_plan(plan_path)


def preprocess(case_id: str, imported_image: str | Path, plan_path: str | Path, out_dir: str | Path) -> dict:
    """Preprocess one imported image; ``plan_path`` is a ``plan.json`` or a trained ``model.json``."""
    from .preprocess.transform import preprocess_image

    return preprocess_image(imported_image, _read_plan(plan_path), out_dir, case_id=case_id)


def preprocess_label(imported_label: str | Path, meta_path: str | Path, out_npy: str | Path) -> None:
    """The label of one case on its preprocessed grid (``meta.json`` from :func:`preprocess`)."""
    from .preprocess import transform

    transform.preprocess_label(imported_label, load_json(meta_path), out_npy)


def slice_case(preprocessed_dir: str | Path, plan_path: str | Path, out_dir: str | Path, *, weight_map: bool = False,
               w0: float = 10.0, sigma_px: float = 5.0) -> dict:
    """Slice index (+ weight maps) of one preprocessed case."""
    from .preprocess.slice_index import build_slice_index

    return build_slice_index(preprocessed_dir, out_dir, num_classes=_read_plan(plan_path).num_classes,
                             weight_map=weight_map, w0=w0, sigma_px=sigma_px)


def train(train_ids: Sequence[str], val_ids: Sequence[str], *, preprocessed_root: str | Path, slices_root: str | Path,
          plan_path: str | Path, out_dir: str | Path, model: Mapping, training: Mapping, augment: Mapping,
          loss: Mapping | None = None, postprocess: Mapping | None = None) -> dict:
    """Train on ``train_ids`` (validating on ``val_ids``); writes the model folder.

    ``postprocess`` (the config's section) is recorded in ``model.json``: segmentations made with
    the model apply it unless told otherwise (:func:`unet_pipeline.config.effective_postprocess`).
    None (the schema's default) records the postprocessing chosen by the data after training
    (``postprocess_choice`` in ``model.json``: per class, the largest component kept when that
    does not lower the class's validation Dice, and a ``min_volume_ml`` learned from the labels,
    see :func:`unet_pipeline.postprocess.learn_min_volumes`). ``postprocess_source`` in
    ``model.json`` says which: ``"config"`` or ``"postprocess_choice"``.
    """
    from .model.card import write_model_card
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
    meta = loop.train(pairs(train_ids), pairs(val_ids), _read_plan(plan_path), out_dir, model_config=model,
                  train_config=loop.TrainConfig.from_dict(training), augment_config=AugmentConfig.from_dict(augment),
                  loss_options=loss)
    chosen = (meta.get("postprocess_choice") or {}).get("config", {})
    meta = {**meta, "postprocess": dict(postprocess) if postprocess is not None else dict(chosen),
            "postprocess_source": "config" if postprocess is not None else "postprocess_choice"}
    return write_model_card(out_dir, meta).meta


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
               case_record: str | Path | Mapping | None = None, infer_info: str | Path | Mapping | None = None,
               provenance: Mapping | None = None) -> dict:
    """Probabilities -> segmentation NIfTI with the input's exact geometry, plus a sidecar JSON.

    Parameters
    ----------
    model_dir
        The model folder, or the list of ensembled folders.
    postprocess
        The config's ``postprocess`` section. None (the schema's default): the postprocessing
        recorded in the model's ``model.json`` at training; a mapping replaces it (``{}``: none).
        See :func:`unet_pipeline.config.effective_postprocess`.
    case_record
        The case's import record (``case.json`` of :func:`import_case`: a path or its content):
        its case id, source and warnings go into the sidecar.
    infer_info
        The JSON written by :func:`infer` (a path) or its content: device, settings, seconds.
    provenance
        E.g. ``{"config_sha256": ...}``, copied into the sidecar.

    Returns
    -------
    dict
        The sidecar's content (:func:`write_sidecar`); ``postprocess`` in it is the postprocessing applied.
    """
    model_dirs = _as_list(model_dir)
    t0 = time.perf_counter()
    labels, applied = write_segmentation(probs_path, preprocessed_dir, imported_image, out_nifti, model_dirs, postprocess)
    seconds = round(time.perf_counter() - t0, 3)
    record = load_json(case_record) if isinstance(case_record, (str, Path)) else dict(case_record or {})
    info = load_json(infer_info) if isinstance(infer_info, (str, Path)) else dict(infer_info or {})
    t0 = time.perf_counter()
    review = review_case(record.get("case_id") or _sidecar_path(out_nifti).stem, probs_path, preprocessed_dir,
                         model_dirs, applied)
    timings = {"infer": info.get("seconds"), "reassemble": seconds, "review": round(time.perf_counter() - t0, 3)}
    return write_sidecar(out_nifti, case_id=record.get("case_id"), source=record.get("source_image"), labels=labels,
                         model_dirs=model_dirs, postprocess=applied, inference=info,
                         warnings=record.get("warnings", []), timings=timings, provenance=provenance, review=review)


def review_case(case_id: str, probs_path: str | Path, preprocessed_dir: str | Path,
                model_dirs: Sequence[str | Path], postprocess: Mapping | None = None) -> dict:
    """The sidecar's ``review`` of one case, from its probabilities while they exist: the review
    signals and per-class predicted Dice and reasons (:func:`unet_pipeline.quality.review.review_from_files`)
    of the segmentation after ``postprocess`` (the postprocessing applied to the output).
    Called by :func:`reassemble` (the workflow) and by ``unet-pipeline predict``."""
    from .quality.review import review_from_files

    return review_from_files(case_id, probs_path, preprocessed_dir, _as_list(model_dirs)[0], postprocess)


def review_list(sidecars: Sequence[str | Path | Mapping], out_csv: str | Path) -> list[dict]:
    """``review.csv`` of a cohort: the rows of every segmentation sidecar's ``review``, ranked over the
    cohort (``review_rank`` 1 = look first; :func:`unet_pipeline.quality.review.review_cohort`).
    The workflow's rule review and ``unet-pipeline predict`` both write it with this."""
    from .quality.review import review_cohort

    return review_cohort([load_json(s) if isinstance(s, (str, Path)) else s for s in sidecars], out_csv)


#: File name endings of the DICOM results beside ``<case>.nii.gz``: ``<case>.dcm`` (DICOM-SEG) and
#: ``<case>_rtstruct.dcm``; the workflow's rule export_dicom and ``unet-pipeline predict`` both use them.
DICOM_OUTPUT_SUFFIXES = {"seg": ".dcm", "rtstruct": "_rtstruct.dcm"}


def dicom_output_paths(out_nifti: str | Path, *, dicom_seg: bool = False, rtstruct: bool = False) -> dict[str, Path]:
    """Where the DICOM results of ``<case>.nii.gz`` go (:data:`DICOM_OUTPUT_SUFFIXES`), for those asked for."""
    out_nifti = Path(out_nifti)
    name = out_nifti.name[:-7] if out_nifti.name.endswith(".nii.gz") else out_nifti.stem
    asked = {"seg": dicom_seg, "rtstruct": rtstruct}
    return {k: out_nifti.with_name(name + suffix) for k, suffix in DICOM_OUTPUT_SUFFIXES.items() if asked[k]}


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


def write_segmentation(probs_path: str | Path, preprocessed_dir: str | Path, imported_image: str | Path, out_nifti: str | Path,
             model_dirs: Sequence[str | Path], postprocess: Mapping | None) -> tuple[dict[int, str], dict]:
    """Write one case's segmentation as both :func:`reassemble` (the workflow) and
    :func:`predict_cohort` (the CLI) do; returns ``(label names, postprocessing applied)``.

    An earlier sidecar is removed first, so a run stopped before the new sidecar is written
    leaves a segmentation without one (incomplete: :func:`segmentation_complete`).
    """
    from .config import effective_postprocess
    from .infer.reassembly import reassemble_case
    from .model.card import read_model_card

    card = read_model_card(model_dirs[0])
    labels = card.labels
    applied = effective_postprocess(postprocess, card.meta)
    _sidecar_path(out_nifti).unlink(missing_ok=True)
    reassemble_case(probs_path, Path(preprocessed_dir) / "meta.json", imported_image, out_nifti,
                    num_classes=len(labels) + 1, postprocess=applied, labels=labels)
    return labels, applied


#: The keys of every segmentation sidecar, whichever door wrote it (the workflow or ``predict``).
SIDECAR_KEYS = ("case", "source", "labels", "model", "model_sha256", "models", "unet_pipeline", "postprocess",
                "device", "inference", "warnings", "timings", "provenance", "review")


def write_sidecar(out_nifti: str | Path, *, case_id: str | None, source: str | Path | None,
                  labels: Mapping[int, str], model_dirs: str | Path | Sequence[str | Path], postprocess: Mapping,
                  inference: Mapping, warnings: Sequence[str], timings: Mapping[str, float | None],
                  provenance: Mapping | None, review: Mapping | None = None) -> dict:
    """``<case>.json`` beside a segmentation (:data:`SIDECAR_KEYS`): the one writer of the workflow's
    rule reassemble and of ``unet-pipeline predict``.

    ``case`` and ``source`` (the input image or DICOM folder), label names, the models (path +
    SHA-256), the package version, the postprocessing applied, the device and the inference record
    (settings, slices, seconds), the import warnings, seconds per step and ``provenance`` (the
    config's SHA-256), and ``review``: the review signals and per-class predicted Dice of
    :func:`review_case` (None when not computed). Written atomically, after the segmentation: its presence marks the case as
    done (:func:`segmentation_complete`). Returns its content.
    """
    from . import __version__
    from .report.assembly import model_identity

    models = [model_identity(d) for d in _as_list(model_dirs)]
    sidecar = {"case": case_id, "source": str(source) if source else None,
               "labels": {str(k): v for k, v in labels.items()}, "model": models[0]["path"],
               "model_sha256": models[0]["sha256"], "models": models, "unet_pipeline": __version__,
               "postprocess": dict(postprocess), "device": inference.get("device"), "inference": dict(inference),
               "warnings": list(warnings), "timings": dict(timings), "provenance": dict(provenance or {}),
               "review": dict(review) if review is not None else None}
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
