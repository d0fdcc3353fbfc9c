"""The real Snakemake chain: lint, dry runs, a tiny end-to-end run and (slow) the full demo."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-5000:], proc.stderr[-10000:], sep="\n")
    return proc


def make_workdir(tmp_path: Path, config: Path | dict) -> Path:
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    if isinstance(config, dict):
        (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    else:
        shutil.copy(config, tmp_path / "config" / "config.yaml")
    return tmp_path


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint", "--configfile", "config/demo.yaml"], cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_template_alone_names_no_cohort_and_stops_before_any_job(tmp_path):
    """config/config.yaml is the user's template: with no cohort named it stops with one line (no
    traceback), and never falls back to the demo."""
    proc = run_snakemake(make_workdir(tmp_path, REPO / "config/config.yaml"), "-n", "--cores", "2")
    assert proc.returncode == 1
    assert "error: cohort: no cohort named: set cohort.images" in proc.stderr
    assert "Traceback" not in proc.stderr and "demo_cohort" not in proc.stdout


@pytest.mark.parametrize("override,message", [
    ("cohort={images: /data/does/not/exist}", "error: cohort.images: /data/does/not/exist does not exist"),
    ("cohort={images: /tmp, manifest: /tmp/cases.csv}", "cohort.images (/tmp) and cohort.manifest (/tmp/cases.csv) "
                                                       "are both set; name one cohort"),
    ("training={epocs: 3}", "error: training.epocs: unknown key; did you mean epochs?"),
])
def test_a_named_cohort_or_key_that_cannot_be_used_stops_the_run_with_one_line(tmp_path, override, message):
    proc = run_snakemake(make_workdir(tmp_path, REPO / "config/config.yaml"), "-n", "--cores", "2",
                         "--config", override)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_naming_a_cohort_on_top_of_the_demo_config_is_refused(tmp_path):
    proc = run_snakemake(make_workdir(tmp_path, REPO / "config/config.yaml"), "-n", "--cores", "2",
                         "--configfile", str(REPO / "config/demo.yaml"), "--config", f"cohort={{images: {tmp_path}}}")
    assert proc.returncode == 1 and "the demo is enabled and cohort.images is set" in proc.stderr


def test_the_demo_config_plans_the_demo(tmp_path):
    """The README's first command: the template plus config/demo.yaml plans the whole demo."""
    proc = run_snakemake(make_workdir(tmp_path, REPO / "config/config.yaml"), "-n", "--cores", "2",
                         "--configfile", str(REPO / "config/demo.yaml"))
    assert proc.returncode == 0
    counts = _job_counts(proc.stdout + proc.stderr)
    assert counts["demo_cohort"] == 1 and counts["import_case"] == 16 and counts["train"] == 1
    assert counts["infer"] == counts["reassemble"] == counts["evaluate"] == 4  # test_fraction 0.25 of 16


def _job_counts(output: str) -> dict[str, int]:
    """The first "Job stats" table of a Snakemake run: rule -> number of jobs."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_plans_the_jobs_of_each_rule_per_case(tmp_path):
    """5 demo cases, test_fraction 0.4: 2 test cases (inferred, evaluated) and 3 train + val cases
    (labels preprocessed and sliced); every case imported and preprocessed; one model."""
    proc = run_snakemake(make_workdir(tmp_path, REPO / "tests/workflow/config_tiny.yaml"), "-n", "--cores", "2")
    assert proc.returncode == 0
    assert _job_counts(proc.stdout + proc.stderr) == {
        "demo_cohort": 1, "import_case": 5, "import_label": 5, "training_cases_imported": 1, "fingerprint": 1,
        "plan": 1, "preprocess": 5, "preprocess_label": 3, "slice_case": 3, "training_cases_prepared": 1, "train": 1,
        "infer": 2, "reassemble": 2, "evaluate": 2, "volumes": 2, "aggregate_metrics": 1, "aggregate_volumes": 1,
        "review": 1, "report": 1, "all": 1, "total": 40}


def test_cross_validation_dry_run_trains_one_model_per_fold(tmp_path):
    config = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    config["cohort"]["demo"]["n_cases"] = 7
    config["split"] = {"test_fraction": 0.3, "folds": 3, "seed": 0}
    work = make_workdir(tmp_path, config)
    proc = run_snakemake(work, "-n", "--cores", "2")
    assert proc.returncode == 0
    planned = proc.stdout + proc.stderr
    for fold in range(3):
        assert f"results/model/fold_{fold}/model.safetensors" in planned
    assert "results/model/model.safetensors" not in planned
    assert planned.count("rule train:") == 3 or planned.count("localrule train:") == 3


def _check_outputs(work: Path, results: Path) -> list[dict]:
    segs = sorted((results / "segmentations").glob("*.nii.gz"))
    assert segs, "no segmentations written"
    for seg in segs:
        case = seg.name[:-7]
        image = nib.load(str(results / "imported" / case / "image.nii.gz"))
        source = nib.load(str(results / "demo_cohort" / "images" / f"{case}.nii.gz"))
        out = nib.load(str(seg))
        assert out.shape == source.shape == image.shape
        np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
        assert out.get_data_dtype() == np.uint8
        assert int(out.header["sform_code"]) == int(source.header["sform_code"])
        assert int(out.header["qform_code"]) == int(source.header["qform_code"])
        sidecar = json.loads((results / "segmentations" / f"{case}.json").read_text(encoding="utf-8"))
        assert sidecar["labels"]["1"] == "liver"
        assert len(sidecar["provenance"]["config_sha256"]) == 64 and len(sidecar["models"][0]["sha256"]) == 64
        assert sidecar["case"] == case and sidecar["source"].endswith(f"{case}.nii.gz")
        assert sidecar["inference"]["device"] == "cpu" and sidecar["inference"]["seconds"] > 0
    with open(results / "metrics" / "metrics.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("case", "label", "dice", "iou", "hd95_mm", "assd_mm", "nsd", "vol_ref_ml", "vol_pred_ml"):
        assert col in rows[0]
    summary = json.loads((results / "metrics" / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["per_class"]) == {"liver", "spleen", "kidney_left", "kidney_right"}
    with open(results / "volumes.csv", encoding="utf-8") as fh:
        volumes = list(csv.DictReader(fh))
    assert {r["case"] for r in volumes} == {s.name[:-7] for s in segs} and len(volumes) == 4 * len(segs)
    assert all(float(r["volume_ml"]) >= 0 for r in volumes) and "qc_flags" in volumes[0]
    with open(results / "review.csv", encoding="utf-8") as fh:
        review = list(csv.DictReader(fh))
    assert {(r["case"], r["class"]) for r in review} == {(r["case"], r["label"]) for r in volumes}
    assert [int(r["review_rank"]) for r in review] == list(range(1, len(review) + 1))
    assert all(r["predicted_dice"] == "" or 0.0 <= float(r["predicted_dice"]) <= 1.0 for r in review)
    html = (results / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "liver" in html
    assert html.split("<section><h2>")[1].startswith("Review first</h2>")
    for log in ("model/train.log", "fingerprint.log"):
        assert (results / "logs" / log).exists()
    return rows


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The workflow run once on the tiny config (shared by the tests that look at its outputs)."""
    work = make_workdir(tmp_path_factory.mktemp("tiny"), REPO / "tests/workflow/config_tiny.yaml")
    proc = run_snakemake(work, "--cores", "2")
    assert proc.returncode == 0
    return work


def test_tiny_end_to_end_run(tiny_run):
    work = tiny_run
    results = work / "results"
    rows = _check_outputs(work, results)
    assert len({r["case"] for r in rows}) == 2  # 40 % of 5 cases are test cases
    log = (results / "model" / "train_log.csv").read_text(encoding="utf-8").splitlines()
    assert len(log) == 3 and log[0].startswith("epoch,train_loss")
    # Every case's infer job went to one model server, which loaded the model once.
    infer_logs = [p.read_text(encoding="utf-8") for p in sorted((results / "logs" / "infer").glob("*.log"))
                  if not p.name.startswith("model_server_")]
    pids = {re.search(r"inferred by the model server pid (\d+)", text).group(1) for text in infer_logs}
    assert len(infer_logs) == 2 and len(pids) == 1, infer_logs
    server_logs = list((results / "logs" / "infer").glob("model_server_*.log"))
    assert len(server_logs) == 1 and server_logs[0].read_text(encoding="utf-8").count("loaded 1 model(s)") == 1
    deadline = time.monotonic() + 15  # the server ends with the Snakemake that started it
    while "has ended" not in server_logs[0].read_text(encoding="utf-8") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "has ended" in server_logs[0].read_text(encoding="utf-8")
    # Snakemake's own report (needs pygments) packs the registered figures and tables.
    proc = run_snakemake(work, "--cores", "2", "--report", str(work / "report.zip"))
    assert proc.returncode == 0 and zipfile.is_zipfile(work / "report.zip")
    names = zipfile.ZipFile(work / "report.zip").namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("curves.png") for n in names)
    assert any(n.endswith("boxes.png") for n in names)
    assert (results / "metrics" / "boxes.png").read_bytes()[:4] == b"\x89PNG"
    # The report's provenance names the model by the SHA-256 of its weights.
    weights_sha = json.loads(next((results / "segmentations").glob("*.json")).read_text(encoding="utf-8"))["model_sha256"]
    assert weights_sha in (results / "report.html").read_text(encoding="utf-8")
    # A second run has nothing to do; a deleted segmentation is redone without retraining.
    proc = run_snakemake(work, "--cores", "2", "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    seg = results / "segmentations" / f"{rows[0]['case']}.nii.gz"
    seg.rename(seg.with_suffix(".aside"))  # put back below: later tests need the finished run
    try:
        proc = run_snakemake(work, "--cores", "2", "-n")
    finally:
        seg.with_suffix(".aside").rename(seg)
    planned = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "rule reassemble" in planned and "rule train" not in planned


#: What a change of one kind of key reruns on a finished run (config/README.md, "What a change reruns").
_DOWNSTREAM_OF_SEGMENTATIONS = {"evaluate", "volumes", "aggregate_metrics", "aggregate_volumes", "review", "report"}
RERUNS = [
    ("training={device: cpu, threads: 2, prefetch: false, checkpoint_minutes: 5, progress: false}", set()),
    ("inference={device: cpu, batch_size: 2, model_server: false, chunk_slices: 3}", set()),
    ("output={dicom_seg: true}", set()),  # no case of the demo is read from DICOM
    ("evaluation={nsd_tolerance_mm: 1.0}", {"evaluate", "aggregate_metrics", "report"}),
    # The probabilities are temporary (inference.save_probabilities: false), so reassembling needs them again.
    ('postprocess={"*": {min_volume_ml: 0.2}}', {"infer", "reassemble"} | _DOWNSTREAM_OF_SEGMENTATIONS),
    ("inference={overlap: 0.25}", {"infer", "reassemble"} | _DOWNSTREAM_OF_SEGMENTATIONS),
    ("training={lr: 0.002}", {"train", "infer", "reassemble"} | _DOWNSTREAM_OF_SEGMENTATIONS),
    # A planning option is decided from fingerprint.json: no image is read again (fingerprint stays).
    ("plan={max_patch_mm: 100}", {"plan", "preprocess", "preprocess_label", "slice_case",
                                  "training_cases_prepared", "train", "infer", "reassemble"}
     | _DOWNSTREAM_OF_SEGMENTATIONS),
    ("plan={intensity: foreground}", {"plan", "preprocess", "preprocess_label", "slice_case",
                                      "training_cases_prepared", "train", "infer", "reassemble"}
     | _DOWNSTREAM_OF_SEGMENTATIONS),
    ("plan={slice_axis: coronal}", {"import_case", "import_label", "training_cases_imported", "fingerprint", "plan",
                                    "preprocess", "preprocess_label", "slice_case", "training_cases_prepared", "train",
                                    "infer", "reassemble"} | _DOWNSTREAM_OF_SEGMENTATIONS),
]


def _rules_to_run(work: Path, *args: str) -> set[str]:
    proc = run_snakemake(work, "-n", "--cores", "2", *args)
    assert proc.returncode == 0
    out = proc.stdout + proc.stderr
    return set() if "Job stats:" not in out else set(_job_counts(out)) - {"all", "total"}


def test_a_finished_run_has_nothing_to_do(tiny_run):
    assert _rules_to_run(tiny_run) == set()


@pytest.mark.parametrize("override,reruns", RERUNS, ids=[r[0].split("=")[0] + ":" + ",".join(sorted(r[1]))[:40]
                                                          for r in RERUNS])
def test_a_change_reruns_only_what_it_affects(tiny_run, override, reruns):
    """Speed-only keys (device, threads, batch sizes, model server) and reporting keys never rerun
    training or inference; a change reruns the rules whose output it shapes, and what follows."""
    assert _rules_to_run(tiny_run, "--config", override) == reruns


def test_every_config_override_of_the_readme_runs(tiny_run):
    """Each ``--config '...'`` example of the README is accepted by the workflow (here on a finished run)."""
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    examples = re.findall(r"--config '([^']+)'", readme)
    assert examples, "the README shows no --config example"
    for example in examples:
        proc = run_snakemake(tiny_run, "-n", "--cores", "2", "--config", example)
        assert proc.returncode == 0, example


def test_the_cli_trains_the_workflows_model_from_the_same_config(tiny_run, tmp_path):
    """One recipe whichever door: ``unet-pipeline train -c`` with the workflow's config trains on the
    same cases with the same settings and gives the very same weights (deterministic CPU run)."""
    from safetensors.numpy import load_file

    from unet_pipeline.cli import main as cli_main

    out = tmp_path / "cli_model"
    assert cli_main(["train", "-c", str(tiny_run / "config" / "config.yaml"), "-o", str(out),
                     "--work-dir", str(tmp_path / "cli_work")]) == 0
    cli, flow = (json.loads((d / "model.json").read_text(encoding="utf-8")) for d in (out, tiny_run / "results" / "model"))
    for key in ("architecture", "plan", "labels", "training", "augmentation", "loss", "train_cases", "val_cases",
                "postprocess", "steps_run"):
        assert cli[key] == flow[key], key
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(tiny_run / "results" / "model" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name


def test_predict_only_segments_a_new_unlabelled_cohort(tiny_run, tmp_path):
    """predict.model + a folder of images: nothing trained, every case segmented, volumes per class."""
    from unet_pipeline.demo import write_demo_cohort

    cohort = tmp_path / "new_cohort"
    write_demo_cohort(cohort, n_cases=2, seed=11)
    config = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    config["cohort"] = {"demo": {"enabled": False}, "images": str(cohort / "images")}  # no labels, no names
    config["predict"] = {"model": str(tiny_run / "results" / "model")}
    config["inference"] = {**config.get("inference", {}), "save_probabilities": True}
    work = make_workdir(tmp_path / "work", config)
    proc = run_snakemake(work, "--cores", "2")
    assert proc.returncode == 0
    results = work / "results"
    assert not (results / "model").exists() and not (results / "plan.json").exists()
    cases = sorted(p.name[:-7] for p in (cohort / "images").glob("*.nii.gz"))
    for case in cases:
        source = nib.load(str(cohort / "images" / f"{case}.nii.gz"))
        out = nib.load(str(results / "segmentations" / f"{case}.nii.gz"))
        assert out.shape == source.shape
        np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    with open(results / "volumes.csv", encoding="utf-8") as fh:
        volumes = list(csv.DictReader(fh))
    # The class names come from the trained model's model.json.
    assert sorted({r["case"] for r in volumes}) == cases
    assert {r["label"] for r in volumes} == {"liver", "spleen", "kidney_left", "kidney_right"}
    assert not (results / "metrics").exists()
    assert "liver" in (results / "report.html").read_text(encoding="utf-8")
    for case in cases:  # asked for: the probabilities are kept, float16 (Z, K, Y', X')
        probs = np.load(results / "probabilities" / f"{case}.npy", mmap_mode="r")
        meta = json.loads((results / "preprocessed" / case / "meta.json").read_text(encoding="utf-8"))
        assert probs.dtype == np.float16 and probs.shape == (meta["resampled_shape"][0], 5, *meta["resampled_shape"][1:])
        np.testing.assert_allclose(np.asarray(probs[0], np.float32).sum(0), 1.0, atol=1e-2)
    # Not asked for (the tiny run's default): deleted once the segmentations were written.
    assert not list((tiny_run / "results").glob("probabilities/*.npy"))


def test_cli_predict_writes_the_workflows_segmentations(tiny_run, tmp_path):
    """``unet-pipeline predict`` and the workflow write the same segmentation (every voxel and the
    header) with the same model and inference settings; both apply the postprocessing that
    training recorded in model.json."""
    from unet_pipeline.cli import main as cli_main

    results = tiny_run / "results"
    tiny = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    meta = json.loads((results / "model" / "model.json").read_text(encoding="utf-8"))
    assert meta["postprocess"] == tiny["postprocess"]
    config = tmp_path / "predict.yaml"
    config.write_text(yaml.safe_dump({"inference": tiny["inference"]}), encoding="utf-8")  # postprocess: the model's
    cases = sorted(p.name[:-7] for p in (results / "segmentations").glob("*.nii.gz"))
    assert cases
    images = tmp_path / "images"
    images.mkdir()
    for case in cases:
        shutil.copy(results / "demo_cohort" / "images" / f"{case}.nii.gz", images)
    assert cli_main(["predict", "-m", str(results / "model"), "-i", str(images), "-o", str(tmp_path / "out"),
                     "-c", str(config)]) == 0
    for case in cases:
        ours = nib.load(str(tmp_path / "out" / f"{case}.nii.gz"))
        theirs = nib.load(str(results / "segmentations" / f"{case}.nii.gz"))
        assert ours.header.binaryblock == theirs.header.binaryblock
        assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
        sidecars = [json.loads(p.read_text(encoding="utf-8"))
                    for p in (tmp_path / "out" / f"{case}.json", results / "segmentations" / f"{case}.json")]
        assert sidecars[0]["postprocess"] == sidecars[1]["postprocess"] == tiny["postprocess"]
        # One sidecar format, whichever door wrote it.
        from unet_pipeline.stages import SIDECAR_KEYS

        assert tuple(sidecars[0]) == tuple(sidecars[1]) == SIDECAR_KEYS
        assert sidecars[0]["case"] == sidecars[1]["case"] == case and sidecars[0]["labels"] == sidecars[1]["labels"]
        assert sidecars[0]["model_sha256"] == sidecars[1]["model_sha256"]


def test_predict_only_refuses_a_cohort_naming_other_classes(tmp_path):
    """predict.model with cohort.label_names other than the model's: the run stops when it loads,
    naming both label maps."""
    from tests.conftest import make_ct, save_nifti
    from unet_pipeline.model.card import write_model_card

    model = tmp_path / "model"
    model.mkdir()
    write_model_card(model, {"labels": {"1": "liver", "2": "spleen"}, "architecture": {}, "plan": {}})
    image, _, affine = make_ct()
    save_nifti(tmp_path / "images" / "a.nii.gz", image, affine)
    config = {"cohort": {"demo": {"enabled": False}, "images": str(tmp_path / "images"),
                         "label_names": {1: "spleen", 2: "liver"}}, "predict": {"model": str(model)}}
    proc = run_snakemake(make_workdir(tmp_path / "work", config), "-n", "--cores", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "{1: 'spleen', 2: 'liver'}" in output and "{1: 'liver', 2: 'spleen'}" in output


def test_dicom_cohort_with_rtstruct_labels_plans_dicom_outputs_for_dicom_cases(tmp_path):
    """Series with RTSTRUCTs beside them are labelled cases; output.dicom_seg/rtstruct add
    export_dicom jobs for the segmented DICOM cases only (not for a NIfTI image)."""
    pytest.importorskip("pydicom")
    from tests.conftest import make_ct, save_nifti
    from tests.unit.test_cli import _dicom_cohort

    _dicom_cohort(tmp_path / "images", {f"case_{i}": ["Liver"] for i in range(5)})
    image, _, affine = make_ct()
    save_nifti(tmp_path / "images" / "plain.nii.gz", image, affine)  # unlabelled: segmented, never DICOM
    config = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    config["cohort"] = {"images": str(tmp_path / "images"), "label_names": {"liver": ["Liver"]}}
    config["split"] = {"test_fraction": 0.4, "val_fraction": 0.34, "seed": 0}
    config["output"] = {"dicom_seg": True, "rtstruct": True}
    proc = run_snakemake(make_workdir(tmp_path / "work", config), "-n", "--cores", "1")
    assert proc.returncode == 0
    planned = proc.stdout
    assert planned.count("rule import_label:") == 5
    dicom = set(re.findall(r"results/segmentations/(\w+?)(?:_rtstruct)?\.dcm", planned))
    assert len(dicom) == 2 and "plain" not in dicom and planned.count("rule export_dicom:") == 2
    assert "results/segmentations/plain.nii.gz" in planned


def test_bad_case_fails_alone_with_keep_going(tmp_path):
    """A corrupt case fails its own import with a message naming the file; the others finish."""
    from unet_pipeline.demo import write_demo_cohort

    cohort = tmp_path / "cohort"
    write_demo_cohort(cohort, n_cases=5, seed=3)
    bad = cohort / "images" / "demo_004.nii.gz"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated gzip
    config = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    config["cohort"] = {"demo": {"enabled": False}, "images": str(cohort / "images"), "labels": str(cohort / "labels"),
                        "label_names": {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}}
    config["split"] = {"test_fraction": 0.4, "val_fraction": 0.34, "seed": 0}
    work = make_workdir(tmp_path / "work", config)
    proc = run_snakemake(work, "--cores", "2", "--keep-going")
    assert proc.returncode != 0
    log = (work / "results" / "logs" / "import_case" / "demo_004.log").read_text(encoding="utf-8")
    assert str(bad) in log and "truncated or corrupt" in log
    assert not (work / "results" / "imported" / "demo_004" / "image.nii.gz").exists()
    others = [p for p in (work / "results" / "imported").iterdir() if p.name != "demo_004"]
    assert len(others) == 4 and all((p / "image.nii.gz").exists() for p in others)


@pytest.mark.slow
def test_full_demo_reaches_dice_090(tmp_path):
    """The shipped config on the demo cohort: mean test Dice over the organ classes >= 0.90."""
    work = make_workdir(tmp_path, REPO / "config/config.yaml")
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(REPO / "config/demo.yaml"), timeout=3600)
    assert proc.returncode == 0
    rows = _check_outputs(work, work / "results")
    dice = [float(r["dice"]) for r in rows]
    print(f"demo: mean test Dice {np.mean(dice):.4f} over {len(rows)} case x class rows")
    assert np.mean(dice) >= 0.90
    _thin_slice_rescans_segment_as_well(work, rows)


def _thin_slice_rescans_segment_as_well(work: Path, rows: list[dict], n_cases: int = 2) -> None:
    """The same anatomy rescanned at 0.5 mm slices (thinner than its 0.6-1 mm pixels, so the old
    largest-spacing rule would have cut it coronally) is segmented by the model trained on 1.5-5 mm
    scans within a mean Dice of 0.03 of the original scan."""
    from unet_pipeline.cli import main as cli_main
    from unet_pipeline.demo import make_demo_case

    config = yaml.safe_load((REPO / "config/demo.yaml").read_text(encoding="utf-8"))
    cases = sorted({r["case"] for r in rows})[:n_cases]
    thin = work / "thin"
    for case in cases:
        image, label, affine = make_demo_case(int(case.split("_")[1]), config["cohort"]["demo"]["seed"], 0.5)
        for sub, array in (("images", image), ("labels", label)):
            (thin / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(thin / sub / f"{case}.nii.gz"))
    assert cli_main(["predict", "-m", str(work / "results" / "model"), "-i", str(thin / "images"),
                     "-o", str(thin / "seg")]) == 0
    for case in cases:
        ref = np.asarray(nib.load(str(thin / "labels" / f"{case}.nii.gz")).dataobj)
        seg = nib.load(str(thin / "seg" / f"{case}.nii.gz"))
        meta = json.loads((thin / "seg" / f"{case}.json").read_text(encoding="utf-8"))
        pred = np.asarray(seg.dataobj)
        s_axis = int(np.flatnonzero(nib.orientations.io_orientation(seg.affine)[:, 0] == 2)[0])
        assert seg.shape == ref.shape and pred.shape[s_axis] > 150  # 0.5 mm slices along the stored S axis
        thin_dice = [2 * np.count_nonzero((pred == v) & (ref == v)) / max(np.count_nonzero(pred == v) + np.count_nonzero(ref == v), 1)
                     for v in (1, 2, 3, 4)]
        orig_dice = [float(r["dice"]) for r in rows if r["case"] == case]
        print(f"{case}: mean Dice {np.mean(orig_dice):.4f} original, {np.mean(thin_dice):.4f} at 0.5 mm slices "
              f"(labels {meta['labels']})")
        assert np.mean(thin_dice) >= np.mean(orig_dice) - 0.03, (case, orig_dice, thin_dice)


def test_clashing_case_ids_are_left_out_and_the_run_fails_naming_them(tmp_path):
    """demo_001 and DEMO_001 would share files on a case-insensitive file system: both are left
    out, every other case is segmented, and the run (and every rerun) exits non-zero naming them."""
    from unet_pipeline.demo import write_demo_cohort

    cohort = tmp_path / "cohort"
    write_demo_cohort(cohort, n_cases=5, seed=3)
    for sub in ("images", "labels"):
        shutil.copy(cohort / sub / "demo_001.nii.gz", cohort / sub / "DEMO_001.nii.gz")
    config = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    config["cohort"] = {"demo": {"enabled": False}, "images": str(cohort / "images"), "labels": str(cohort / "labels"),
                        "label_names": {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}}
    config["training"] = {**config["training"], "epochs": 1, "iterations_per_epoch": 2}
    work = make_workdir(tmp_path / "work", config)
    proc = run_snakemake(work, "--cores", "2")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for cid in ("demo_001", "DEMO_001"):
        assert f"'{cid}': case id clashes with" in output
        assert not (work / "results" / "imported" / cid).exists()
    segmented = {p.name[:-7] for p in (work / "results" / "segmentations").glob("*.nii.gz")}
    assert len(segmented) == 2 and not segmented & {"demo_001", "DEMO_001"}  # the 2 test cases of the other 4
    assert (work / "results" / "report.html").exists() and (work / "results" / "metrics" / "metrics.csv").exists()
    assert "DEMO_001" in (work / "results" / "logs" / "rejected_cases.log").read_text(encoding="utf-8")
    proc = run_snakemake(work, "--cores", "2")  # nothing else to do, and still an error
    assert proc.returncode != 0 and "'DEMO_001'" in proc.stdout + proc.stderr
    assert "rule train" not in proc.stdout + proc.stderr


def _walk_config(tmp_path: Path, cohort: dict, **sections) -> Path:
    """The README's walk: the shipped template as the workflow's config, the user's cohort in
    my_cohort.yaml (with a tiny network and training, so that the walk runs in CI)."""
    tiny = yaml.safe_load((REPO / "tests/workflow/config_tiny.yaml").read_text(encoding="utf-8"))
    mine = {"cohort": cohort, "split": tiny["split"], "plan": tiny["plan"], "model": tiny["model"],
            "training": tiny["training"], **sections}
    work = make_workdir(tmp_path / "work", REPO / "config/config.yaml")
    (work / "my_cohort.yaml").write_text(yaml.safe_dump(mine), encoding="utf-8")
    return work


def test_bring_your_own_nifti_cohort_with_the_template(tmp_path):
    """A folder of NIfTI images and labels, named in the template: checked, trained, segmented,
    evaluated and reported, as the README walks through it."""
    from unet_pipeline.cli import main as cli_main
    from unet_pipeline.demo import write_demo_cohort

    write_demo_cohort(tmp_path / "ct", n_cases=5, seed=5)
    cohort = {"images": str(tmp_path / "ct" / "images"), "labels": str(tmp_path / "ct" / "labels"),
              "label_names": {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}}
    work = _walk_config(tmp_path, cohort)
    assert cli_main(["check-cohort", "-c", str(work / "my_cohort.yaml")]) == 0
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(work / "my_cohort.yaml"))
    assert proc.returncode == 0
    results = work / "results"
    assert not (results / "demo_cohort").exists()
    splits = json.loads((results / "splits.json").read_text(encoding="utf-8"))
    segs = sorted(p.name[:-7] for p in (results / "segmentations").glob("*.nii.gz"))
    assert segs == sorted(splits["test"]) and len(segs) == 2  # test_fraction 0.4 of 5 cases
    assert {r["case"] for r in csv.DictReader(open(results / "metrics" / "metrics.csv", encoding="utf-8"))} == set(segs)
    assert (results / "report.html").stat().st_size > 10_000


def test_bring_your_own_dicom_export_with_rtstruct_with_the_template(tmp_path):
    """A planning-system export (CT series + RTSTRUCT per patient folder) named in the template:
    trained on the RTSTRUCT contours, and each segmented case sent back as DICOM-SEG and RTSTRUCT."""
    import pydicom

    from tests.unit.test_cli import _dicom_cohort

    _dicom_cohort(tmp_path / "exports", {f"P{i:03d}": ["Leber"] for i in range(5)})
    work = _walk_config(tmp_path, {"images": str(tmp_path / "exports"), "label_names": {"liver": ["Liver", "Leber"]}},
                        output={"dicom_seg": True, "rtstruct": True})
    proc = run_snakemake(work, "--cores", "2", "--configfile", str(work / "my_cohort.yaml"))
    assert proc.returncode == 0
    results = work / "results"
    segs = sorted(p.name[:-7] for p in (results / "segmentations").glob("*.nii.gz"))
    assert len(segs) == 2  # test_fraction 0.4 of 5 patients
    for case in segs:
        seg = pydicom.dcmread(str(results / "segmentations" / f"{case}.dcm"))
        rt = pydicom.dcmread(str(results / "segmentations" / f"{case}_rtstruct.dcm"))
        assert seg.Modality == "SEG" and rt.Modality == "RTSTRUCT"
        assert rt.StructureSetROISequence[0].ROIName == "liver"
    rows = list(csv.DictReader(open(results / "metrics" / "metrics.csv", encoding="utf-8")))
    assert {r["label"] for r in rows} == {"liver"} and len(rows) == 2


def _planned_resources(output: str) -> list[tuple[str, str]]:
    """``(rule, resources line)`` of every job a dry run prints."""
    return re.findall(r"^ *(?:local)?rule (\w+):\n(?: +(?!resources:).*\n)*? +resources: (.*)$", output, re.M)


def test_a_site_profile_layers_under_the_slurm_workflow_profile(tmp_path):
    """Site settings (partition, account, a GPU partition for train) come from the user's own
    profile given with --profile: the shipped Slurm profile sets neither default-resources nor
    set-resources, so none of them is overwritten; train still asks for SIGUSR1 before its limit."""
    shipped = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text(encoding="utf-8"))
    assert "default-resources" not in shipped and "set-resources" not in shipped
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": {"slurm_partition": "site_cpu", "slurm_account": "my_lab"},
        "set-resources": {"train": {"slurm_partition": "site_gpu"}}}), encoding="utf-8")
    work = make_workdir(tmp_path / "work", REPO / "tests/workflow/config_tiny.yaml")
    proc = run_snakemake(work, "-n", "--profile", str(site), "--workflow-profile",
                         str(REPO / "workflow/profiles/slurm"), "--executor", "local")
    assert proc.returncode == 0
    jobs = [(rule, res) for rule, res in _planned_resources(proc.stdout) if rule != "all"]
    assert len(jobs) > 20
    for rule, res in jobs:
        if rule.startswith("training_cases_"):  # local rules: run by Snakemake itself, not submitted
            continue
        partition = "site_gpu" if rule == "train" else "site_cpu"
        assert f"slurm_partition={partition}" in res and "slurm_account=my_lab" in res, (rule, res)
        assert "runtime=" in res and "mem_mb=" in res, (rule, res)
    train = [res for rule, res in jobs if rule == "train"]
    assert train and "slurm_extra='--signal=USR1@300'" in train[0]
