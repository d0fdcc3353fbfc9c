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
