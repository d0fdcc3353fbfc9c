"""Case ids of DICOM series: safe pieces of folder names, suffixes that tell series apart."""

from __future__ import annotations

import pytest

from unet_pipeline.cohort.naming import case_id_problems, safe_name_part, series_suffixes


@pytest.mark.parametrize("numbers, expected", [
    (["7", "3"], ["7", "3"]),
    (["003", " 12 "], ["3", "12"]),
    (["2", "2"], ["1", "2"]),  # repeated: by position
    (["2", None], ["1", "2"]),  # missing
    (["2", "x"], ["1", "2"]),  # not a number
    (["-1", "4"], ["1", "2"]),  # negative
    ([], []),
])
def test_series_suffixes(numbers, expected):
    assert series_suffixes(numbers) == expected


@pytest.mark.parametrize("text, expected", [
    ("SE000001", "SE000001"),
    ("CT Abdomen 5mm", "CT_Abdomen_5mm"),
    ("Müller^Hans", "M_ller_Hans"),
    ("../..", "x"),
    ("_study_", "study"),
])
def test_safe_name_part_gives_safe_id_pieces(text, expected):
    part = safe_name_part(text)
    assert part == expected
    assert case_id_problems([f"P001_{part}"]) == {}
