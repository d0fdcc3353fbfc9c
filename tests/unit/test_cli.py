"""The ``unet-pipeline`` command: help texts, check-cohort on bad input, demo-cohort, evaluate."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import make_ct, save_nifti
from unet_pipeline.cli import main

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
    import unet_pipeline.cohort as cohort

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
