"""Rule logging: a bad case gives one readable ERROR line naming the file, exit status 1."""

from __future__ import annotations

import logging

import pytest

from unet_pipeline.errors import CaseError
from unet_pipeline.runlog import rule_logging


def test_case_error_becomes_one_line_and_exit_1(tmp_path, capsys):
    log = tmp_path / "logs" / "case.log"
    with pytest.raises(SystemExit) as info:
        with rule_logging(log):
            logging.getLogger("unet_pipeline.test").info("working on it")
            raise CaseError(tmp_path / "bad.nii.gz", ["NaN voxels", "label shape differs"])
    assert info.value.code == 1
    text = log.read_text(encoding="utf-8")
    assert "working on it" in text and "bad.nii.gz" in text and "NaN voxels" in text
    assert "Traceback" not in text
    assert "ERROR" in capsys.readouterr().err


def test_other_errors_keep_their_traceback(tmp_path):
    log = tmp_path / "x.log"
    with pytest.raises(ZeroDivisionError):
        with rule_logging(log):
            1 / 0  # noqa: B018
    assert "Traceback" in log.read_text(encoding="utf-8")


def test_handlers_are_removed_afterwards(tmp_path):
    before = list(logging.getLogger().handlers)
    with rule_logging(tmp_path / "ok.log"):
        pass
    assert logging.getLogger().handlers == before
