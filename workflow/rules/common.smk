# Shared helpers: config validation, the case table, wildcard constraints, input functions.
import json
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # unet_pipeline importable without installing it

from unet_pipeline.cohort.validation import rejection_message
from unet_pipeline.cohort.workflow_cases import workflow_cases
from unet_pipeline.config import (
    fingerprint_options,
    import_options,
    inference_options,
    model_label_names,
    plan_options,
    predict_model_dirs,
    slice_options,
    train_options,
)
from unet_pipeline.dag_groups import install_linear_group_check
from unet_pipeline.errors import ConfigError
from unet_pipeline.resources import job_mem_mb, job_runtime_min
from unet_pipeline.model.card import read_model_card
from unet_pipeline.cohort.naming import CASE_ID_PATTERN
from unet_pipeline.schema import check_config
from unet_pipeline.stages import DICOM_OUTPUT_SUFFIXES


install_linear_group_check()  # group jobs (Slurm profile): Snakemake's own check is quadratic in the cohort


# The config is checked (unknown keys named, defaults filled in from the one schema) and the
# cohort discovered before any job; a problem stops the run with one line, without a traceback.
try:
    check_config(config)
    RESULTS = config["results"]
    CASES = workflow_cases(config, RESULTS)
    PREDICT_ONLY = bool(config["predict"]["model"])
    if PREDICT_ONLY:
        MODEL_DIRS = predict_model_dirs(config)
        # The class names travel with the model; a cohort naming other classes is refused.
        CASES.labels = model_label_names(MODEL_DIRS, CASES.labels)
        MODEL_CARD = read_model_card(MODEL_DIRS[0])
    else:
        MODEL_DIRS = [f"{RESULTS}/model/fold_{i}" for i in range(len(CASES.folds))] or [f"{RESULTS}/model"]
        MODEL_CARD = None
except ConfigError as exc:
    sys.exit(f"error: {exc}")
LOGS = f"{RESULTS}/logs"
MODEL_DIR = MODEL_DIRS[0]
# The arguments of each stage: the same functions build them for the CLI (unet_pipeline.config).
# Only what shapes a stage's output is a param, so a speed-only key never reruns a job.
IMPORT_OPTIONS = import_options(config, MODEL_CARD)
IMPORT_OPTIONS["roi_names"] = CASES.roi_names
FINGERPRINT_OPTIONS = fingerprint_options(config)
PLAN_OPTIONS = plan_options(config)
SLICE_OPTIONS = slice_options(config)
TRAIN_OPTIONS = train_options(config, speed=False)
INFERENCE_OPTIONS = inference_options(config, speed=False)
NEEDS_WEIGHT_MAP = SLICE_OPTIONS["weight_map"]


wildcard_constraints:
    case=CASE_ID_PATTERN,


def kept_if_asked(path):
    """Probabilities are temporary unless ``inference.save_probabilities`` asks to keep them."""
    return path if config["inference"]["save_probabilities"] else temp(path)


def case_sources(wildcards):
    """Source image (and label, for labelled cases) of a case."""
    spec = CASES.cases[wildcards.case]
    sources = {"image": spec.image}
    if spec.label:
        sources["label"] = spec.label
    return sources


def source_label(wildcards):
    """Source label of a labelled case. Raising for an unlabelled one keeps rule import_label from
    matching it at a constant cost per lookup (a wildcard constraint listing every labelled id
    grows with the cohort)."""
    label = CASES.cases[wildcards.case].label
    if not label:
        raise ValueError(f"case {wildcards.case!r} has no label: rule import_label does not apply")
    return label


def case_params(wildcards):
    spec = CASES.cases[wildcards.case]
    return {"case_id": spec.case_id, "image": spec.image, "label": spec.label, "series_uid": spec.series_uid}


def plan_file(wildcards):
    """Training plan: from this run, or from the trained model in predict-only mode."""
    return f"{MODEL_DIR}/model.json" if PREDICT_ONLY else f"{RESULTS}/plan.json"


def folder_of_output_dataset(wildcards, output):
    """The demo cohort folder: where its dataset.json goes."""
    return str(Path(output.dataset).parent)


def model_folders_of_inputs(wildcards, input):
    """The model folders (one per ensembled fold): where the inputs named model.safetensors lie."""
    return [str(Path(p).parent) for p in input if Path(p).name == "model.safetensors"]


def model_files():
    """Weights and metadata of every model that is ensembled (one per fold)."""
    return [f"{d}/{name}" for d in MODEL_DIRS for name in ("model.safetensors", "model.json")]


def _fold_of(wildcards):
    """Fold index of a train job (``model/fold_3`` -> 3), None for the single model."""
    head, _, index = wildcards.model_dir.rpartition("fold_")
    return int(index) if head else None


def fold_train_ids(wildcards):
    return CASES.fold_split(_fold_of(wildcards))[0]


def fold_val_ids(wildcards):
    return CASES.fold_split(_fold_of(wildcards))[1]


def slice_outputs():
    outputs = {"index": f"{RESULTS}/slices/{{case}}/index.json"}
    if NEEDS_WEIGHT_MAP:
        outputs["weightmap"] = f"{RESULTS}/slices/{{case}}/weightmap.npy"
    return outputs


def training_inputs(wildcards):
    """The plan and the barrier file written once every training and validation case is sliced."""
    return {"plan": f"{RESULTS}/plan.json", "cases": f"{RESULTS}/training_cases/prepared.json"}


def write_case_list(path, cases, log):
    """Barrier rules: write the case ids the next step is made from (JSON list), and a log line."""
    Path(path).write_text(json.dumps(list(cases), indent=1) + "\n", encoding="utf-8")
    Path(log).write_text(f"{len(cases)} case(s) ready\n", encoding="utf-8")


def evaluated_cases():
    return [] if PREDICT_ONLY else CASES.test


def final_targets(with_rejected=True):
    targets = expand(f"{RESULTS}/segmentations/{{case}}.nii.gz", case=CASES.to_segment)
    for pattern in dicom_outputs().values():  # output.dicom_seg / output.rtstruct: cases read from DICOM
        targets += expand(pattern, case=DICOM_CASES)
    if evaluated_cases():
        targets += [f"{RESULTS}/metrics/metrics.csv", f"{RESULTS}/metrics/summary.json"]
    targets += [f"{RESULTS}/volumes.csv", f"{RESULTS}/review.csv", f"{RESULTS}/report.html"]
    if CASES.rejected and with_rejected:  # the job of rejected_cases runs last and fails, naming them
        targets.append(REJECTED_CASES)
    return targets


# DICOM results (export_dicom, predict.smk) for the segmented cases whose image is a DICOM series.
DICOM_CASES = sorted(c for c in CASES.to_segment if CASES.cases[c].is_dicom_series)


def dicom_outputs(rule=False):
    """The files of export_dicom that the config's output section asks for; with ``rule``, those
    the rule declares (the DICOM-SEG when none is asked for, and then no target needs the rule).
    Named as ``unet-pipeline predict`` names them (``unet_pipeline.stages.DICOM_OUTPUT_SUFFIXES``)."""
    paths = {key: f"{RESULTS}/segmentations/{{case}}{suffix}" for key, suffix in DICOM_OUTPUT_SUFFIXES.items()}
    wanted = {"seg": config["output"]["dicom_seg"], "rtstruct": config["output"]["rtstruct"]}
    asked = {key: path for key, path in paths.items() if wanted[key]}
    return asked or ({"seg": paths["seg"]} if rule else {})


def dicom_source(wildcards):
    """The DICOM series a case was read from: its folder and SeriesInstanceUID."""
    spec = CASES.cases[wildcards.case]
    return {"folder": spec.image, "series_uid": spec.series_uid}


# Cases left out because of their ids (unet_pipeline.cohort.validation.screen_cases): never written, so
# every run ends with the error of rule rejected_cases until the files are renamed.
REJECTED_CASES = f"{RESULTS}/rejected_cases.txt"
REJECTED_MESSAGE = rejection_message(CASES.rejected)


def print_rejected_cases(log):
    """onstart/onerror: name the rejected cases at the start and again at the end."""
    if REJECTED_MESSAGE:
        print(REJECTED_MESSAGE, file=sys.stderr)


def split_of(case):
    for name in ("train", "val", "test", "unlabelled"):
        if case in getattr(CASES, name):
            return name
    return "predict"


def report_inputs(wildcards):
    inputs = {
        "segmentations": expand(f"{RESULTS}/segmentations/{{case}}.nii.gz", case=CASES.to_segment),
        "records": expand(f"{RESULTS}/imported/{{case}}/case.json", case=sorted(CASES.cases)),
        "volumes": f"{RESULTS}/volumes.csv",
        "review": f"{RESULTS}/review.csv",
    }
    if evaluated_cases():
        inputs["metrics"] = f"{RESULTS}/metrics/metrics.csv"
        inputs["summary"] = f"{RESULTS}/metrics/summary.json"
    train_logs = [f"{d}/train_log.csv" for d in MODEL_DIRS]
    if PREDICT_ONLY:
        train_logs = [p for p in train_logs if Path(p).exists()]
    if train_logs:
        inputs["train_logs"] = train_logs
    return inputs


def report_case_table(wildcards):
    """Per segmented case: imported image, segmentation, reference (if any), split."""
    table = {}
    for case in CASES.to_segment:
        ref = f"{RESULTS}/imported/{case}/label.nii.gz" if case in CASES.test else None
        table[case] = {
            "image": f"{RESULTS}/imported/{case}/image.nii.gz",
            "pred": f"{RESULTS}/segmentations/{case}.nii.gz",
            "ref": ref,
            "split": split_of(case),
        }
    return table


def volume_mem_mb(wildcards, input, attempt):
    """Memory for a per-case job from the image header's voxel count (grows with retries)."""
    from unet_pipeline.resources import volume_mem_mb as estimate

    return estimate(input[0] if input else None, attempt=attempt)


def training_runtime_min(wildcards, attempt):
    """Wall time for training from epochs x iterations, or its time budget (grows with retries)."""
    from unet_pipeline.resources import training_runtime_min as estimate

    return estimate(config["training"], attempt=attempt)
