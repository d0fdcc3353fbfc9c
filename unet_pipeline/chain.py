"""The workflow's chain of stages run in one process: ``unet-pipeline train`` and ``predict``.

The Snakemake rules run the stages of :mod:`unet_pipeline.stages` one job each; the CLI runs the
same functions here, in the rules' order and with the arguments the same builders give the rules
(:func:`unet_pipeline.config.import_options`, :func:`~unet_pipeline.config.fingerprint_options`,
:func:`~unet_pipeline.config.plan_options`, :func:`~unet_pipeline.config.slice_options`, :func:`~unet_pipeline.config.train_options`), on the
cases :func:`unet_pipeline.cohort.workflow_cases.workflow_cases` gives the workflow: one recipe,
whichever door. Segmentations get the workflow's sidecar (:func:`unet_pipeline.stages.write_sidecar`)
and DICOM names (:data:`unet_pipeline.stages.DICOM_OUTPUT_SUFFIXES`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import stages
from .errors import CaseError
from .evaluate import tables

__all__ = ["train_cohort", "predict_cohort"]

log = logging.getLogger(__name__)


def train_cohort(config: Mapping, out_dir: str | Path, work_dir: str | Path):
    """The workflow's chain up to the model(s), for the cohort a checked ``config`` names.

    The same cases, splits (kept in ``work_dir/splits.json``), stages and arguments as the
    workflow's rules; intermediate files go to ``work_dir`` in the workflow's layout. With
    ``split.folds`` k > 1, one model per fold goes to ``out_dir/fold_<i>``.

    Returns
    -------
    tuple
        ``(cases, model folders)``: the :class:`~unet_pipeline.cohort.workflow_cases.WorkflowCases`
        (train, validation, test and rejected ids) and the folders written.
    """
    from .cohort.workflow_cases import workflow_cases
    from .config import fingerprint_options, import_options, plan_options, slice_options, train_options

    work, out = Path(work_dir), Path(out_dir)
    cases = workflow_cases(config, work)
    demo = config["cohort"]["demo"]
    if demo["enabled"] and not (work / "demo_cohort" / "dataset.json").exists():
        stages.demo_cohort(work / "demo_cohort", n_cases=int(demo["n_cases"]), seed=int(demo["seed"]))
    labels, imported, pre, sliced = cases.labels, work / "imported", work / "preprocessed", work / "slices"
    ids = sorted(cases.train + cases.val)
    log.info("training cases %s, validation cases %s, held out for testing %s", cases.train, cases.val, cases.test)
    options = {**import_options(config), "roi_names": cases.roi_names}
    for cid in ids:
        spec = cases.cases[cid]
        stages.import_case(cid, spec.image, spec.label, imported / cid, labels=labels, series_uid=spec.series_uid,
                           **options)
        stages.import_label(spec.label, imported / cid / "image.nii.gz", imported / cid / "label.nii.gz",
                            labels=labels, roi_names=cases.roi_names, record=imported / cid / "case.json")
    fingerprint, plan = work / "fingerprint.json", work / "plan.json"
    stages.fingerprint([(c, imported / c) for c in cases.train], fingerprint, labels=labels,
                       **fingerprint_options(config))
    stages.plan(fingerprint, plan, **plan_options(config))
    for cid in ids:
        stages.preprocess(cid, imported / cid / "image.nii.gz", plan, pre / cid)
        stages.preprocess_label(imported / cid / "label.nii.gz", pre / cid / "meta.json", pre / cid / "label.npy")
        stages.slice_case(pre / cid, plan, sliced / cid, **slice_options(config))
    models = [(i, out / f"fold_{i}") for i in range(len(cases.folds))] or [(None, out)]
    for fold, model_dir in models:
        train_ids, val_ids = cases.fold_split(fold)
        stages.train(train_ids, val_ids, preprocessed_root=pre, slices_root=sliced, plan_path=plan,
                     out_dir=model_dir, **train_options(config))
    return cases, [d for _, d in models]


def predict_cohort(model_dirs: Sequence[str | Path], inputs: Sequence[tuple], out_dir: str | Path, *,
                   work_dir: str | Path, inference: Mapping | None = None, postprocess: Mapping | None = None,
                   keep_going: bool = True, overwrite: bool = False, dicom_seg: bool = False,
                   rtstruct: bool = False, overlap_stages: bool | None = None,
                   provenance: Mapping | None = None) -> dict[str, str]:
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
        atomically (the sidecar last), and ``volumes.csv`` and ``review.csv`` (the review list ranked
        over these cases: :func:`unet_pipeline.stages.review_list`) of every case of ``inputs`` that
        has a complete segmentation (written now or before).
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
    provenance
        Copied into every sidecar (``{"config_sha256": ...}``), as the workflow does.
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

    inference = dict(inference or {})
    model_dirs = [str(d) for d in model_dirs]
    predictor = Predictor(model_dirs, inference.get("device", "auto"))
    options = _predict_options(model_dirs, inference, postprocess, dicom_seg or rtstruct, provenance)
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
    _write_cohort_tables(Path(out_dir), status, rows_of)
    return status


def _write_cohort_tables(out_dir: Path, status: Mapping[str, str], rows_of: Mapping[str, list[dict]]) -> None:
    """``volumes.csv`` and ``review.csv`` of the cases with a complete segmentation (in ``status`` order)."""
    volume_rows = [row for case_id in status for row in rows_of.get(case_id, [])]
    if volume_rows:
        tables.write_rows(out_dir / "volumes.csv", volume_rows, columns=tables.VOLUME_COLUMNS)
    done = [out_dir / f"{case_id}.json" for case_id, state in status.items() if state in ("ok", "skipped")]
    if done:
        stages.review_list(done, out_dir / "review.csv")


def _predict_options(model_dirs: list[str], inference: dict, postprocess: Mapping | None, dicom_requested: bool,
                     provenance: Mapping | None) -> dict:
    """What every case of :func:`predict_cohort` is segmented with; the import checks are the
    workflow's predict-only ones (:func:`unet_pipeline.config.import_options` with the model's card)."""
    from .model.card import read_model_card

    card = read_model_card(model_dirs[0])
    return {"model_dirs": model_dirs, "inference": inference, "postprocess": postprocess,
            "dicom_requested": dicom_requested, "provenance": dict(provenance or {}),
            "import_options": {"min_slices": card.in_channels, "slice_axis": card.slice_axis}}


def _jobs_to_run(inputs: Sequence[tuple], out_dir: Path, work_dir: Path, status: dict, rows_of: dict, *,
                 dicom_seg: bool, rtstruct: bool, overwrite: bool, keep_going: bool) -> list[_CaseJob]:
    """The cases of ``inputs`` to segment; those skipped (complete) or failing already go into
    ``status`` (and their rows of an earlier ``volumes.csv`` into ``rows_of``)."""
    earlier = tables.read_rows(out_dir / "volumes.csv") if (out_dir / "volumes.csv").is_file() else []
    jobs = []
    for case_id, image, *series in inputs:
        job = _CaseJob(case_id, image, series[0] if series else None, out_dir, work_dir,
                       dicom_seg=dicom_seg, rtstruct=rtstruct)
        try:
            if not overwrite and _output_complete(case_id, job.out, job.dicom_out):
                status[case_id] = "skipped"
                rows_of[case_id] = [r for r in earlier if r.get("case") == case_id]
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
        from .cohort.discovery import CaseSpec

        is_dicom = CaseSpec(case_id, str(image), series_uid=series_uid).is_dicom_series
        self.dicom_out = stages.dicom_output_paths(self.out, dicom_seg=dicom_seg, rtstruct=rtstruct) if is_dicom else {}
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
    record = job.timed("import", stages.import_case, job.case_id, job.image, None, job.work / "imported",
                       labels=predictor.labels, series_uid=job.series_uid, **options["import_options"])
    job.timed("preprocess", stages.preprocess, job.case_id, job.work / "imported" / "image.nii.gz",
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
    _, applied = job.timed("reassemble", stages.write_segmentation, job.work / "probs.npy", job.work / "pre", imported, job.out,
                           model_dirs, options["postprocess"])
    rows = job.timed("volumes", volume_rows, job.case_id, job.out, imported, dict(labels))
    review = job.timed("review", stages.review_case, job.case_id, job.work / "probs.npy", job.work / "pre", model_dirs,
                       applied)
    if job.dicom_out:
        job.timed("dicom_export", stages.export_dicom, job.out, job.image, labels=labels, series_uid=job.series_uid,
                  out_seg=job.dicom_out.get("seg"), out_rtstruct=job.dicom_out.get("rtstruct"))
    elif options["dicom_requested"]:
        log.info("%s: not read from a DICOM series, so no DICOM-SEG/RTSTRUCT is written", job.case_id)
    stages.write_sidecar(job.out, case_id=job.case_id, source=job.image, labels=labels, model_dirs=model_dirs,
                  postprocess=applied, inference={**info, "settings": options["inference"]},
                  warnings=record.get("warnings", []), timings=job.timings, provenance=options["provenance"],
                  review=review)
    log.info("%s: segmented (%s)", job.case_id, ", ".join(f"{k} {v:.1f} s" for k, v in job.timings.items()))
    return rows


def _output_complete(case_id: str, out: Path, dicom_out: Mapping[str, Path]) -> bool:
    """Whether ``out`` (and each DICOM output asked for) is complete, so :func:`predict_cohort` skips the case."""
    if stages.segmentation_complete(out) and all(p.is_file() for p in dicom_out.values()):
        log.info("%s: %s is complete, skipped (overwrite to redo it)", case_id, out)
        return True
    return False


def _failure(case_id: str, exc: Exception) -> str:
    """The status of a case that failed with ``exc`` (the message of a ``CaseError``), logged."""
    message = str(exc) if isinstance(exc, CaseError) else f"{type(exc).__name__}: {exc}"
    log.error("%s: %s", case_id, message)
    log.debug("%s failed", case_id, exc_info=exc)
    return message


