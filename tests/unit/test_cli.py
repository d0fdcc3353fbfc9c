"""The ``unet-pipeline`` command: help texts, check-cohort on bad input, demo-cohort, evaluate, and real
``train`` and ``predict`` runs on a tiny demo cohort."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tests.conftest import make_ct, save_nifti
from unet_pipeline import chain
from unet_pipeline.cli import main
from unet_pipeline.stages import SIDECAR_KEYS

SUBCOMMANDS = {"demo-cohort": "--n-cases", "check-cohort": "--images", "train": "--config", "predict": "--model",
               "evaluate": "--nsd-tolerance"}


@pytest.mark.parametrize("command,option", SUBCOMMANDS.items())
def test_help_of_each_subcommand(command, option, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert option in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "unet_pipeline.cli", "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    if out.returncode != 0:  # no __main__ guard: use the entry point function instead
        out = subprocess.run([sys.executable, "-c", "import sys; from unet_pipeline.cli import main; sys.exit(main())",
                              "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert out.returncode == 0 and "check-cohort" in out.stdout


def test_check_cohort_lists_every_problem_and_fails(tmp_path, capsys):
    image, label, affine = make_ct()
    save_nifti(tmp_path / "images" / "good.nii.gz", image, affine)
    save_nifti(tmp_path / "labels" / "good.nii.gz", label, affine)
    bad = image.astype(np.float32)
    bad[0, 0, 0] = np.nan
    save_nifti(tmp_path / "images" / "bad.nii.gz", bad, affine)
    save_nifti(tmp_path / "labels" / "bad.nii.gz", label[:, :, :-1], affine)  # one slice short
    code = main(["check-cohort", "-i", str(tmp_path / "images"), "-l", str(tmp_path / "labels"),
                 "--label-names", str(_names(tmp_path))])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code != 0
    assert "bad.nii.gz" in text and "NaN" in text and "shape" in text
    assert "good" in text


def _names(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {"background": 0, "a": 1, "b": 2}}', encoding="utf-8")
    return path


def test_check_cohort_passes_a_good_cohort(tmp_path, capsys):
    image, label, affine = make_ct()
    save_nifti(tmp_path / "images" / "good.nii.gz", image, affine)
    save_nifti(tmp_path / "labels" / "good.nii.gz", label, affine)
    code = main(["check-cohort", "-i", str(tmp_path / "images"), "-l", str(tmp_path / "labels"),
                 "--label-names", str(_names(tmp_path))])
    assert code == 0, capsys.readouterr()


def test_demo_cohort_and_evaluate_identity(tmp_path, capsys):
    assert main(["demo-cohort", str(tmp_path / "demo"), "--n-cases", "2", "--seed", "5"]) == 0
    assert sorted(p.name for p in (tmp_path / "demo" / "images").iterdir()) == ["demo_000.nii.gz", "demo_001.nii.gz"]
    labels = tmp_path / "demo" / "labels"
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(labels), "--ref", str(labels), "-o", str(out),
                 "--labels", str(tmp_path / "demo" / "dataset.json")]) == 0
    with open(out, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and all(float(r["dice"]) == 1.0 for r in rows)


def test_check_cohort_goes_on_after_an_unexpected_error(tmp_path, capsys, monkeypatch):
    import unet_pipeline.cohort.validation as cohort

    image, label, affine = make_ct()
    for cid in ("a_boom", "b_good"):
        save_nifti(tmp_path / "images" / f"{cid}.nii.gz", image, affine)
    real = cohort.check_case

    def flaky(spec, *args, **kwargs):
        if spec.case_id == "a_boom":
            raise MemoryError("out of memory")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(cohort, "check_case", flaky)
    code = main(["check-cohort", "-i", str(tmp_path / "images")])
    out = capsys.readouterr().out
    assert code == 1
    assert "unexpected error while checking it (MemoryError: out of memory)" in out
    assert "b_good" in out and "1 usable, 1 unusable" in out


def test_check_cohort_reports_the_label_of_an_unreadable_image(tmp_path, capsys):
    image, label, affine = make_ct()
    save_nifti(tmp_path / "images" / "c.nii.gz", image, affine)
    (tmp_path / "images" / "c.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    bad = label.copy()
    bad[0, 0, 0] = 9
    save_nifti(tmp_path / "labels" / "c.nii.gz", bad, affine)
    code = main(["check-cohort", "-i", str(tmp_path / "images"), "-l", str(tmp_path / "labels"),
                 "--label-names", str(_names(tmp_path))])
    out = capsys.readouterr().out
    assert code == 1
    assert f"error: {tmp_path / 'images' / 'c.nii.gz'}: " in out
    assert f"error: {tmp_path / 'labels' / 'c.nii.gz'}: label values [9] are not declared classes [0, 1, 2]" in out


def _workflow_config(tmp_path, cohort: dict, **sections) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"cohort": {"demo": {"enabled": False}, **cohort}, **sections}), encoding="utf-8")
    return str(path)


def test_check_cohort_takes_the_workflow_config(tmp_path, capsys):
    image, label, affine = make_ct()  # 6 slices, label values 0, 1, 2
    save_nifti(tmp_path / "images" / "c.nii.gz", image, affine)
    shifted = affine.copy()
    shifted[:3, 3] += 0.05
    save_nifti(tmp_path / "labels" / "c.nii.gz", label, shifted)
    folders = {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels")}
    # The config's label names, model.in_channels and tolerance are the workflow's: one class only,
    # 7 slices needed, 0.1 mm tolerated.
    cfg = _workflow_config(tmp_path, {**folders, "label_names": {1: "liver"}, "geometry_tolerance_mm": 0.1},
                           model={"in_channels": 7})
    assert main(["check-cohort", "-c", cfg]) == 1
    out = capsys.readouterr().out
    assert "label values [2] are not declared classes [0, 1]" in out
    assert "6 slice(s), the model needs at least 7" in out
    assert "origin differs" not in out
    # Without the config: the defaults (1 slice, 0.01 mm) and the names given on the command line.
    assert main(["check-cohort", *sum((["-" + k[0], v] for k, v in folders.items()), []),
                 "--label-names", str(_names(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "origin differs" in out and "needs at least" not in out and "not declared" not in out
    # Options override the config.
    assert main(["check-cohort", "-c", cfg, "--min-slices", "1", "--label-names", str(_names(tmp_path))]) == 0
    capsys.readouterr()


def test_check_cohort_config_with_a_manifest_or_dataset_json_or_the_demo(tmp_path, capsys):
    image, label, affine = make_ct()
    save_nifti(tmp_path / "ds" / "imagesTr" / "a_0000.nii.gz", image, affine)
    save_nifti(tmp_path / "ds" / "labelsTr" / "a.nii.gz", label, affine)
    (tmp_path / "ds" / "dataset.json").write_text('{"labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}',
                                                  encoding="utf-8")
    assert main(["check-cohort", "-c", _workflow_config(tmp_path, {"dataset_json": str(tmp_path / "ds" / "dataset.json")})]) == 1
    assert "label values [2] are not declared classes [0, 1]" in capsys.readouterr().out  # names of dataset.json
    (tmp_path / "m.csv").write_text("case_id,image,label\nq,ds/imagesTr/a_0000.nii.gz,ds/labelsTr/a.nii.gz\n", encoding="utf-8")
    cfg = _workflow_config(tmp_path, {"manifest": str(tmp_path / "m.csv"), "label_names": {1: "x", 2: "y"}})
    assert main(["check-cohort", "-c", cfg]) == 0
    assert "1 case(s): 1 usable" in capsys.readouterr().out
    demo = tmp_path / "demo.yaml"
    demo.write_text("cohort: {demo: {enabled: true}}\n", encoding="utf-8")
    assert main(["check-cohort", "-c", str(demo)]) == 1
    assert "cohort.demo.enabled" in capsys.readouterr().err


def test_check_cohort_names_rejected_ids_and_skipped_files(tmp_path, capsys):
    image, label, affine = make_ct()
    for name in ("demo_001", "DEMO_001", "fine"):
        save_nifti(tmp_path / "images" / f"{name}.nii.gz", image, affine)
    (tmp_path / "images" / "notes.txt").write_text("not an image", encoding="utf-8")
    code = main(["check-cohort", "-i", str(tmp_path / "images")])
    out = capsys.readouterr().out
    assert code == 1
    assert "error: case id: case id clashes with 'demo_001' on case-insensitive file systems" in out
    assert "error: case id: case id clashes with 'DEMO_001' on case-insensitive file systems" in out
    assert f"note: {tmp_path / 'images' / 'notes.txt'}: not an image or DICOM file, skipped" in out
    assert "3 case(s): 1 usable, 2 unusable" in out


# --- train and predict on a tiny demo cohort, as the workflow would -------------------------------------------------

TINY_CONFIG = Path(__file__).resolve().parents[1] / "workflow" / "config_tiny.yaml"


def _run(argv) -> tuple[int, str]:
    """``main(argv)`` with its standard output captured (for module-scoped fixtures, which have no capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def cli_train(tmp_path_factory):
    """A 4-case demo cohort trained on with ``unet-pipeline train`` and the tiny workflow config (1 epoch);
    the keyword arguments of the stage calls are recorded."""
    from unet_pipeline import stages
    from unet_pipeline.demo import write_demo_cohort

    root = tmp_path_factory.mktemp("cli")
    write_demo_cohort(root / "demo", n_cases=4, seed=3)
    config = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    config["training"].update(epochs=1, iterations_per_epoch=2)
    config["cohort"]["geometry_tolerance_mm"] = 0.05  # not the defaults: they must reach the stages
    config["loss"] = {"w0": 7.0, "sigma_px": 3.0}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    calls: dict[str, list[dict]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("import_case", "fingerprint", "plan", "slice_case", "train"):
            def record(*args, _real=getattr(stages, name), _name=name, **kwargs):
                calls.setdefault(_name, []).append(kwargs)
                return _real(*args, **kwargs)

            mp.setattr(stages, name, record)
        code, out = _run(["train", "-i", str(root / "demo" / "images"), "-l", str(root / "demo" / "labels"),
                          "--label-names", str(root / "demo" / "dataset.json"), "-c", str(path),
                          "-o", str(root / "model"), "--work-dir", str(root / "work")])
    return SimpleNamespace(root=root, config=path, config_dict=config, model=root / "model", code=code, out=out,
                           calls=calls)


@pytest.mark.slow  # trains (the module's cli_train)
def test_train_runs_the_workflows_chain_with_its_split_and_settings(cli_train, tmp_path):
    from unet_pipeline.cohort.workflow_cases import workflow_cases
    from unet_pipeline.config import load_config

    assert cli_train.code == 0, cli_train.out
    demo = cli_train.root / "demo"
    names = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}
    config = load_config({**cli_train.config_dict, "cohort": {"images": str(demo / "images"),
                                                               "labels": str(demo / "labels"), "label_names": names}})
    cases = workflow_cases(config, tmp_path)  # the workflow's split of this cohort
    meta = json.loads((cli_train.model / "model.json").read_text(encoding="utf-8"))
    assert (meta["train_cases"], meta["val_cases"]) == (cases.train, cases.val) and len(cases.test) == 2
    assert f"held out for testing, not trained on (2): {', '.join(cases.test)}" in cli_train.out
    assert not any((cli_train.root / "work" / "imported" / cid).exists() for cid in cases.test)
    # The stages get the config's values, as the rules pass them.
    calls = cli_train.calls
    assert {c["geometry_tolerance_mm"] for c in calls["import_case"]} == {0.05}
    assert {c["min_slices"] for c in calls["import_case"]} == {1}
    (fingerprint,) = calls["fingerprint"]
    assert fingerprint["seed"] == 0 and fingerprint["slice_axis"] == "axial"
    (plan,) = calls["plan"]
    assert plan["target_spacing_mm"] == [4.0, 4.0] and plan["patch_size"] == [32, 32]
    assert all(c == {"weight_map": False, "w0": 7.0, "sigma_px": 3.0} for c in calls["slice_case"])
    (train,) = calls["train"]
    assert train["training"]["epochs"] == 1 and train["model"]["base_channels"] == 4
    # The config's postprocessing is recorded with the model.
    assert meta["postprocess"] == cli_train.config_dict["postprocess"] == train["postprocess"]


def _inputs(cli_train, tmp_path, ids=("demo_000", "demo_001")) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for cid in ids:
        shutil.copy(cli_train.root / "demo" / "images" / f"{cid}.nii.gz", folder)
    return folder


@pytest.mark.slow  # trains (the module's cli_train)
def test_predict_writes_the_inputs_geometry_skips_complete_cases_and_overwrites(cli_train, tmp_path, capsys):
    import nibabel as nib

    inputs, out = _inputs(cli_train, tmp_path), tmp_path / "out"
    argv = ["predict", "-m", str(cli_train.model), "-i", str(inputs), "-o", str(out), "-c", str(cli_train.config)]
    assert main(argv) == 0
    capsys.readouterr()
    for cid in ("demo_000", "demo_001"):
        source, seg = nib.load(str(inputs / f"{cid}.nii.gz")), nib.load(str(out / f"{cid}.nii.gz"))
        assert seg.shape == source.shape and seg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-6)
        assert int(seg.header["qform_code"]) == int(source.header["qform_code"])
        assert int(seg.header["sform_code"]) == int(source.header["sform_code"])
        sidecar = json.loads((out / f"{cid}.json").read_text(encoding="utf-8"))
        assert sidecar["postprocess"] == {"*": {"min_volume_ml": 0.1}} and sidecar["labels"]["1"] == "liver"
        assert sidecar["inference"]["settings"]["batch_size"] == 4  # the config's inference section
    with open(out / "volumes.csv", encoding="utf-8") as fh:
        assert sorted({r["case"] for r in csv.DictReader(fh)}) == ["demo_000", "demo_001"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # Rerun: both complete, skipped; volumes.csv still lists both.
    assert main(argv) == 0
    assert "2 case(s) skipped" in capsys.readouterr().out
    assert all(stamps[p.name] == p.stat().st_mtime_ns for p in out.glob("demo_*"))
    with open(out / "volumes.csv", encoding="utf-8") as fh:
        assert sorted({r["case"] for r in csv.DictReader(fh)}) == ["demo_000", "demo_001"]
    # Incomplete outputs are redone: a missing sidecar, an unreadable segmentation.
    (out / "demo_000.json").unlink()
    seg = out / "demo_001.nii.gz"
    seg.write_bytes(seg.read_bytes()[:200])
    assert main(argv) == 0
    assert "2 of 2 case(s) segmented" in capsys.readouterr().out
    assert (out / "demo_000.json").exists()
    assert nib.load(str(seg)).get_fdata().shape == nib.load(str(inputs / "demo_001.nii.gz")).shape
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("demo_*")}
    assert main([*argv, "--overwrite"]) == 0
    assert "2 of 2 case(s) segmented" in capsys.readouterr().out
    assert all(stamps[p.name] != p.stat().st_mtime_ns for p in out.glob("demo_*"))


@pytest.mark.slow  # trains (the module's cli_train)
def test_predict_writes_the_review_list_with_the_models_calibration(cli_train, tmp_path):
    """model.json records the training distribution and the calibration (how, on how many cases);
    predict writes review.csv: one row per case and class, ranks 1..n, predicted Dice in 0..1."""
    meta = json.loads((cli_train.model / "model.json").read_text(encoding="utf-8"))
    review = meta["review"]
    assert set(review["reference"]["classes"]) == set(meta["labels"].values())
    assert review["reference"]["n_cases"] == len(meta["train_cases"])
    calibration = review["calibration"]
    if calibration is not None:  # None only when the briefly trained model segments almost nothing
        assert calibration["method"] and calibration["fitted_on"] == "validation cases"
        assert calibration["n_cases"] == len(meta["val_cases"]) and calibration["n_rows"] >= 3
    context = review["context"]  # the reference of the context signals, its arrays beside the weights
    assert (cli_train.model / context["file"]).is_file() and set(context["classes"]) <= set(meta["labels"].values())
    assert all(c["threshold"] > 0 and c["n_cases"] == len(meta["train_cases"]) for c in context["classes"].values())
    inputs, out = _inputs(cli_train, tmp_path), tmp_path / "out"
    assert main(["predict", "-m", str(cli_train.model), "-i", str(inputs), "-o", str(out)]) == 0
    with open(out / "review.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert {"case", "class", "predicted_dice", "review_rank", "reason"} <= set(reader.fieldnames)
        rows = list(reader)
    assert {(r["case"], r["class"]) for r in rows} == {(c, n) for c in ("demo_000", "demo_001")
                                                        for n in meta["labels"].values()}
    assert [int(r["review_rank"]) for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert r["reason"]
        if r["predicted_dice"] == "":  # undefined only where nothing was segmented
            assert r["volume_ml"] in ("", "0", "0.0")
        else:
            assert 0.0 <= float(r["predicted_dice"]) <= 1.0
    sidecar = json.loads((out / "demo_000.json").read_text(encoding="utf-8"))
    assert {r["class"] for r in sidecar["review"]["rows"]} == set(meta["labels"].values())
    assert set(sidecar["review"]["signals"]) == {"scan", "classes"}
    for name, cls in sidecar["review"]["signals"]["classes"].items():  # context where the model has a reference
        if cls["volume_ml"] and name in context["classes"]:
            assert 0.0 <= cls["unfamiliar_share"] <= 1.0 and cls["context_distance"] >= 0.0


@pytest.mark.slow  # trains (the module's cli_train)
def test_a_model_folder_copied_without_its_context_file_still_segments_and_says_so(cli_train, tmp_path, caplog):
    """Only model.json and model.safetensors copied: the segmentation is written, the review rows
    too, and the sidecar and the log say that the context check could not run, naming the file."""
    import logging

    partial = tmp_path / "model"
    partial.mkdir()
    for name in ("model.json", "model.safetensors"):
        shutil.copy(cli_train.model / name, partial / name)
    inputs, out = _inputs(cli_train, tmp_path, ids=("demo_000",)), tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "-m", str(partial), "-i", str(inputs), "-o", str(out)]) == 0
    sidecar = json.loads((out / "demo_000.json").read_text(encoding="utf-8"))
    assert "review_context.safetensors missing" in sidecar["review"]["context_skipped"]
    assert sidecar["review"]["rows"] and (out / "review.csv").is_file() and (out / "demo_000.nii.gz").is_file()
    assert "review_context.safetensors missing" in caplog.text


@pytest.mark.slow  # trains (the module's cli_train)
def test_predict_goes_on_past_failing_cases_and_names_them(cli_train, tmp_path, capsys, monkeypatch):
    from unet_pipeline.infer.predictor import Predictor

    inputs, out = _inputs(cli_train, tmp_path, ("demo_000", "demo_001", "demo_002")), tmp_path / "out"
    broken = inputs / "demo_002.nii.gz"
    broken.write_bytes(broken.read_bytes()[:3000])  # truncated gzip
    real = Predictor.predict

    def flaky(self, pre_dir, *args, **kwargs):
        if "demo_000" in str(pre_dir):
            raise RuntimeError("boom")
        return real(self, pre_dir, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", flaky)
    assert main(["predict", "-m", str(cli_train.model), "-i", str(inputs), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "FAILED demo_000: RuntimeError: boom" in err
    assert f"FAILED demo_002: {broken}" in err and "not segmented: demo_000, demo_002" in err
    assert sorted(p.name for p in out.iterdir()) == ["demo_001.json", "demo_001.nii.gz", "review.csv", "volumes.csv"]

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):  # an interrupt stops the run, leaving nothing half-written
        main(["predict", "-m", str(cli_train.model), "-i", str(inputs), "-o", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["demo_001.json", "demo_001.nii.gz", "review.csv", "volumes.csv"]


@pytest.mark.slow  # trains (the module's cli_train)
def test_overlapped_stages_write_what_one_case_at_a_time_writes(cli_train, tmp_path, monkeypatch):
    """``predict_cohort`` prepares the next case and finishes the previous one in background threads:
    the same segmentations byte for byte as one case after the other, the status in the inputs'
    order, a failure while finishing (in the background) charged to its case only, no work left."""
    import nibabel as nib

    from unet_pipeline import stages

    ids = ("demo_000", "demo_001", "demo_002", "demo_003")
    inputs = _inputs(cli_train, tmp_path, ids)
    cases = [(cid, inputs / f"{cid}.nii.gz") for cid in ids]
    in_turn = chain.predict_cohort([cli_train.model], cases, tmp_path / "a", work_dir=tmp_path / "wa",
                                    overlap_stages=False)
    from unet_pipeline.evaluate import volumes

    def failing(case_id, *args, **kwargs):
        if case_id == "demo_001":
            raise RuntimeError("volumes failed")
        return original(case_id, *args, **kwargs)

    original = volumes.volume_rows
    monkeypatch.setattr(volumes, "volume_rows", failing)
    overlapped = chain.predict_cohort([cli_train.model], cases, tmp_path / "b", work_dir=tmp_path / "wb",
                                       overlap_stages=True)  # the default on a GPU
    assert in_turn == {cid: "ok" for cid in ids}
    assert list(overlapped) == list(ids) and overlapped["demo_001"] == "RuntimeError: volumes failed"
    assert all(overlapped[cid] == "ok" for cid in ids if cid != "demo_001")
    for cid in ids:
        if cid != "demo_001":
            a, b = nib.load(str(tmp_path / "a" / f"{cid}.nii.gz")), nib.load(str(tmp_path / "b" / f"{cid}.nii.gz"))
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            assert a.header.binaryblock == b.header.binaryblock
    assert not (tmp_path / "b" / "demo_001.json").exists()  # not complete: redone by the next run
    assert not any((tmp_path / "wb").iterdir())


@pytest.mark.slow  # trains (the module's cli_train)
def test_predict_refuses_a_cohort_naming_other_classes(cli_train, tmp_path, capsys):
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"background": 0, "spleen": 1, "liver": 2}}), encoding="utf-8")
    inputs = _inputs(cli_train, tmp_path, ("demo_000",))
    assert main(["predict", "-m", str(cli_train.model), "-i", str(inputs), "-o", str(tmp_path / "out"),
                 "--label-names", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert f"--label-names {dataset} {{1: 'spleen', 2: 'liver'}} differ" in err
    assert "{1: 'liver', 2: 'spleen', 3: 'kidney_left', 4: 'kidney_right'}" in err
    assert not (tmp_path / "out").exists()


def test_evaluate_without_label_names_names_classes_by_value(tmp_path, capsys):
    image, label, affine = make_ct()
    for cid in ("a", "b"):
        save_nifti(tmp_path / "ref" / f"{cid}.nii.gz", label, affine)
    pred = label.copy()
    pred[pred == 2] = 0
    pred[0, 0, 0] = 5  # a value only the prediction has
    save_nifti(tmp_path / "pred" / "a.nii.gz", pred, affine)
    save_nifti(tmp_path / "pred" / "b.nii.gz", label, affine)
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(out)]) == 0
    assert "classes named by their values (label_1, label_2, label_5)" in capsys.readouterr().out
    with open(out, encoding="utf-8") as fh:
        rows = {(r["case"], r["label"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == [(c, f"label_{v}") for c in "ab" for v in (1, 2, 5)]
    assert float(rows[("b", "label_2")]["dice"]) == 1.0 and float(rows[("a", "label_2")]["dice"]) == 0.0
    # The stage alone, without label names: the values of this case's two files.
    from unet_pipeline.stages import evaluate

    rows = evaluate("a", tmp_path / "pred" / "a.nii.gz", tmp_path / "ref" / "a.nii.gz", tmp_path / "a.csv", labels=None)
    assert [(r["label"], r["label_id"]) for r in rows] == [("label_1", 1), ("label_2", 2), ("label_5", 5)]


# ---------------------------------------------------------------------------------------------
# A DICOM cohort with RTSTRUCT labels, as planning systems export it


def _dicom_cohort(root: Path, rois_of_case: dict[str, list[str]]) -> dict[str, dict]:
    """Per case a 6-slice CT series (48 x 48 px, 2 mm) with a bright box and an RTSTRUCT beside it
    whose ROIs (names as given) all outline that box."""
    from tests.dicom_helpers import square, write_ct_series, write_rtstruct

    origin, spacing = (-48.0, -48.0, 0.0), (2.0, 2.0, 4.0)
    cases = {}
    for n, (cid, names) in enumerate(rois_of_case.items()):
        hu = np.full((6, 48, 48), -900, np.int16)
        hu[:, 6:42, 6:42] = 30
        r0, c0 = 12 + 2 * n, 14 + n
        hu[1:5, r0:r0 + 12, c0:c0 + 14] = 160  # (slice, row, column)
        ct = write_ct_series(root / cid, hu, spacing=spacing, origin=origin, patient_id=f"P{n}")
        box = [square(origin[0] + (c0 - 0.5) * 2, origin[1] + (r0 - 0.5) * 2, origin[0] + (c0 + 13.5) * 2,
                      origin[1] + (r0 + 11.5) * 2, origin[2] + k * 4) for k in range(1, 5)]
        write_rtstruct(root / cid / "RS.dcm", ct, {name: box for name in names})
        cases[cid] = ct
    return cases


def test_check_cohort_names_cases_whose_rois_match_no_class_or_one_twice(tmp_path, capsys):
    _dicom_cohort(tmp_path / "images", {"none": ["BODY", "GTV"], "twice": ["Liver", "LEBER"], "good": ["Leber"]})
    cfg = _workflow_config(tmp_path, {"images": str(tmp_path / "images"), "label_names": {"liver": ["Liver", "Leber"]}})
    assert main(["check-cohort", "-c", cfg]) == 1
    out = capsys.readouterr().out
    assert "no ROI matches a class (classes: liver; ROIs: 'BODY', 'GTV')" in out
    assert "class 'liver' is matched by 2 ROIs ('Liver', 'LEBER'" in out
    assert "3 case(s): 1 usable, 2 unusable" in out


def test_train_on_rtstruct_labels_and_predict_dicom_seg_and_rtstruct(tmp_path, capsys):
    """A folder of CT series with RTSTRUCTs trains (labels made from the contours) and predict
    writes a DICOM-SEG and an RTSTRUCT referencing the input series."""
    import highdicom as hd
    import nibabel as nib
    import pydicom

    names = {f"case_{i}": [["Liver", "BODY"], ["LEBER"], ["liver"], ["Leber", "Couch"]][i] for i in range(4)}
    cases = _dicom_cohort(tmp_path / "images", names)
    config = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    config["cohort"] = {"images": str(tmp_path / "images"), "label_names": {"liver": ["Liver", "Leber"]}}
    config["split"] = {"test_fraction": 0.25, "val_fraction": 0.34, "seed": 0}
    config["training"].update(epochs=1, iterations_per_epoch=2)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    work, model = tmp_path / "work", tmp_path / "model"
    assert main(["train", "-c", str(cfg), "-o", str(model), "--work-dir", str(work)]) == 0, capsys.readouterr()
    imported = sorted(p.parent.name for p in work.glob("imported/*/label.nii.gz"))
    assert len(imported) == 3
    for cid in imported:  # the box of 14 x 12 pixels on 4 slices, from the contours
        label = nib.load(str(work / "imported" / cid / "label.nii.gz"))
        assert label.get_data_dtype() == np.uint8 and int(np.asanyarray(label.dataobj).sum()) == 14 * 12 * 4
    assert json.loads((model / "model.json").read_text(encoding="utf-8"))["labels"] == {"1": "liver"}

    out = tmp_path / "out"
    code = main(["predict", "-m", str(model), "-i", str(tmp_path / "images" / "case_3"), "-o", str(out),
                 "--dicom-seg", "--rtstruct", "-c", str(cfg)])
    assert code == 0, capsys.readouterr()
    assert (out / "case_3.nii.gz").exists() and (out / "case_3.json").exists()
    ct = cases["case_3"]
    seg = hd.seg.segread(str(out / "case_3.dcm"))
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == ct["series"]
    assert str(seg.FrameOfReferenceUID) == ct["frame"] and seg.get_segment_description(1).segment_label == "liver"
    pixels = seg.get_pixels_by_source_instance(ct["instances"], assert_missing_frames_are_empty=True)[..., 0]
    predicted = np.asanyarray(nib.load(str(out / "case_3.nii.gz")).dataobj)  # (column, row, slice)
    np.testing.assert_array_equal(pixels, (predicted == 1).transpose(2, 1, 0))
    rt = pydicom.dcmread(str(out / "case_3_rtstruct.dcm"))
    assert rt.Modality == "RTSTRUCT" and rt.StructureSetROISequence[0].ROIName == "liver"
    sidecar = json.loads((out / "case_3.json").read_text(encoding="utf-8"))
    assert tuple(sidecar) == SIDECAR_KEYS and sidecar["source"] == str(tmp_path / "images" / "case_3")
    # Complete, DICOM outputs included: a rerun skips the case; without the SEG it is redone.
    assert main(["predict", "-m", str(model), "-i", str(tmp_path / "images" / "case_3"), "-o", str(out),
                 "--dicom-seg", "--rtstruct", "-c", str(cfg)]) == 0
    assert "1 case(s) skipped" in capsys.readouterr().out
    (out / "case_3.dcm").unlink()
    assert main(["predict", "-m", str(model), "-i", str(tmp_path / "images" / "case_3"), "-o", str(out),
                 "--dicom-seg", "-c", str(cfg)]) == 0
    assert (out / "case_3.dcm").exists()
