"""cohort.label_names in its three forms, and ROI (segment) names matched to classes."""

from __future__ import annotations

import pytest

from unet_pipeline.errors import ConfigError
from unet_pipeline.io.roi_names import label_names, match_rois, parse_label_names, roi_matches


def test_value_to_name_form_matches_rois_by_the_class_name():
    names, patterns = parse_label_names({1: "liver", "5": "spleen"})
    assert names == {1: "liver", 5: "spleen"} and patterns == {}
    assert roi_matches(" LIVER ", "liver", None) and not roi_matches("Liver_2", "liver", None)


def test_name_to_rois_form_numbers_the_classes_in_order():
    raw = {"liver": ["Liver", "LIVER", "Leber"], "lung_left": r"(?i)lung[ _-]?(l|left)"}
    names, patterns = parse_label_names(raw)
    assert names == {1: "liver", 2: "lung_left"}
    assert patterns == {1: ["Liver", "LIVER", "Leber"], 2: r"(?i)lung[ _-]?(l|left)"}
    assert label_names(raw) == names


def test_value_to_name_and_rois_form():
    names, patterns = parse_label_names({2: {"name": "liver", "roi": ["Leber"]}, 7: {"name": "gtv"}})
    assert names == {2: "liver", 7: "gtv"} and patterns == {2: ["Leber"]}


@pytest.mark.parametrize("roi, pattern, expected", [
    ("Leber", ["Liver", "Leber"], True),
    ("leber", ["Liver", "Leber"], True),  # lists ignore letter case
    ("Leber_1", ["Liver", "Leber"], False),
    ("Lung_L", r"(?i)lung[ _-]?(l|left)", True),
    ("lung left", r"(?i)lung[ _-]?(l|left)", True),
    ("Lung_Left_Lobe", r"(?i)lung[ _-]?(l|left)", False),  # the regex must match the whole name
    ("LungR", r"(?i)lung[ _-]?(l|left)", False),
])
def test_roi_matching_table(roi, pattern, expected):
    assert roi_matches(roi, "whatever", pattern) is expected


@pytest.mark.parametrize("raw, message", [
    ({1: "liver", "spleen": ["Spleen"]}, "use one form"),
    ({"liver": "(unclosed"}, "not a valid regular expression"),
    ({"liver": 3}, "expected a list of ROI names or a regular expression"),
    ({1: "liver", 2: "Liver"}, "class name 'Liver' given to label values 1 and 2"),
    ({1: {"name": "liver", "rois": ["x"]}}, "expected {name"),
])
def test_bad_label_names_are_refused_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match="cohort.label_names") as err:
        parse_label_names(raw)
    assert message in str(err.value)


def test_match_assigns_each_class_its_roi_and_leaves_others_out():
    names, patterns = parse_label_names({"liver": ["Liver", "Leber"], "lung_left": r"(?i)lung[ _-]?l"})
    match = match_rois(["BODY", "Leber", "Lung_L", "Couch"], names, patterns)
    assert match.ok and match.classes == {1: [1], 2: [2]}
    assert match.assignment() == {1: 1, 2: 2}
    assert match.unmatched == ["BODY", "Couch"] and match.missing == []


def test_a_class_without_roi_is_missing_not_a_problem():
    match = match_rois(["Liver"], {1: "liver", 2: "spleen"})
    assert match.ok and match.missing == [2] and match.assignment() == {0: 1}


def test_no_roi_matching_any_class_is_a_problem_naming_the_rois():
    match = match_rois(["BODY", "GTV"], {1: "liver"})
    assert not match.ok
    (problem,) = match.problems
    assert "no ROI matches a class" in problem and "'BODY'" in problem and "'GTV'" in problem


def test_one_class_matched_twice_is_a_problem_naming_both_rois():
    names, patterns = parse_label_names({"liver": ["Liver", "Leber"]})
    match = match_rois(["Liver", "Leber", "BODY"], names, patterns, what="segment")
    (problem,) = match.problems
    assert "class 'liver' is matched by 2 segments ('Liver', 'Leber'" in problem and "'BODY'" in problem
    assert match.assignment() == {}


def test_one_roi_matching_two_classes_is_a_problem():
    names, patterns = parse_label_names({"lung_left": "(?i)lung.*", "lung_any": "(?i)lung"})
    match = match_rois(["Lung"], names, patterns)
    assert any("ROI 'Lung' matches several classes (lung_left, lung_any)" in p for p in match.problems)
    assert match.assignment() == {}
