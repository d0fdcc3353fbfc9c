"""Splits by patient, fixed once in splits.json and kept when the cohort grows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from unet_pipeline.cohort.discovery import CaseSpec, cohort_from_folders
from unet_pipeline.cohort.workflow_cases import workflow_cases
from unet_pipeline.errors import ConfigError
from unet_pipeline.cohort.splits import assign_folds, fixed_splits, patient_of_cases, split_cases

from ...conftest import make_ct, save_nifti

SPLIT = {"seed": 0, "test_fraction": 0.25, "val_fraction": 0.2, "folds": 1}


def _patients(n_patients: int, scans: int = 3) -> dict[str, str]:
    """``P<p>_s<k>`` -> ``P<p>``: several scans per patient."""
    return {f"P{p:02d}_s{k}": f"P{p:02d}" for p in range(n_patients) for k in range(scans)}


def test_singleton_patients_split_as_a_seeded_shuffle_of_the_case_ids():
    ids = [f"c{i}" for i in range(10)]
    order = list(range(10))
    random.Random(4).shuffle(order)
    expected_test = sorted(ids[i] for i in order[:3])
    assert split_cases(ids, 0.3, seed=4) == (sorted(set(ids) - set(expected_test)), expected_test)
    folds = assign_folds(ids, 3, seed=4)
    random.Random(4).shuffle(shuffled := sorted(ids))
    assert folds == [sorted(shuffled[f::3]) for f in range(3)]


def test_no_patient_on_two_sides_of_a_split_or_in_two_folds():
    patients = _patients(12)
    ids = sorted(patients)
    for seed in range(5):
        train, test = split_cases(ids, 0.25, seed, patients)
        assert {patients[c] for c in train}.isdisjoint({patients[c] for c in test})
        assert len(test) == 9 and sorted(train + test) == ids  # 3 whole patients of 12
        folds = assign_folds(train, 3, seed, patients)
        owners = [{patients[c] for c in f} for f in folds]
        assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1:])
        assert sorted(c for f in folds for c in f) == train and [len(f) for f in folds] == [9, 9, 9]
    with pytest.raises(ConfigError, match="3 folds need at least 3 patients"):
        assign_folds(["a_1", "a_2", "b_1", "b_2"], 3, 0, {"a_1": "a", "a_2": "a", "b_1": "b", "b_2": "b"})


def test_two_patients_keep_one_on_each_side():
    patients = {"a1": "a", "a2": "a", "a3": "a", "b1": "b"}
    train, test = split_cases(sorted(patients), 0.9, 0, patients)
    assert train and test and {patients[c] for c in train} != {patients[c] for c in test}


def test_patient_from_manifest_column_then_pattern_then_dicom_then_case_id():
    cases = [CaseSpec("P1_a", "x", "y", patient_id="alice"), CaseSpec("P1_b", "x", "y"),
             CaseSpec("Q9", "x", "y", dicom_patient_id="bob"), CaseSpec("lone", "x", "y")]
    assert patient_of_cases(cases, r"^(P\d+)_") == {"P1_a": "alice", "P1_b": "P1", "Q9": "bob", "lone": "lone"}
    assert patient_of_cases(cases, r"^P\d+") == {"P1_a": "alice", "P1_b": "P1", "Q9": "bob", "lone": "lone"}
    assert patient_of_cases(cases) == {"P1_a": "alice", "P1_b": "P1_b", "Q9": "bob", "lone": "lone"}
    with pytest.raises(ConfigError, match="group_pattern"):
        patient_of_cases(cases, "(unclosed")


def test_splits_are_written_once_and_do_not_move(tmp_path):
    path = tmp_path / "splits.json"
    patients = _patients(8, scans=2)
    ids = sorted(patients)
    first = fixed_splits(ids, patients, SPLIT, path)
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["test"] == first.test and record["patients"]["P03_s1"] == "P03"
    # Another seed or fraction in the config: the file wins (and a warning says so).
    again = fixed_splits(ids, patients, {**SPLIT, "seed": 7, "test_fraction": 0.5}, path)
    assert (again.train, again.val, again.test) == (first.train, first.val, first.test)
    # New labelled cases: a new patient goes to training; a new scan of a test patient to test.
    test_patient = patients[first.test[0]]
    grown = {**patients, "P99_s0": "P99", f"{test_patient}_s9": test_patient}
    later = fixed_splits(sorted(grown), grown, SPLIT, path)
    assert "P99_s0" in later.train and f"{test_patient}_s9" in later.test
    assert set(first.test) <= set(later.test) and set(first.val) <= set(later.val)
    # A case that left the cohort is dropped; nobody else moves.
    gone = first.train[0]
    fewer = fixed_splits([c for c in sorted(grown) if c != gone], grown, SPLIT, path)
    assert gone not in fewer.train and set(fewer.test) == set(later.test)
    # Deleting the file reshuffles.
    path.unlink()
    assert fixed_splits(ids, patients, {**SPLIT, "seed": 7}, path).test != first.test


def test_splits_file_with_other_folds_or_a_leaking_grouping_is_refused(tmp_path):
    path = tmp_path / "splits.json"
    ids = [f"c{i:02d}" for i in range(12)]
    split = fixed_splits(ids, {}, SPLIT, path)
    with pytest.raises(ConfigError, match="holds 1 fold"):
        fixed_splits(ids, {}, {**SPLIT, "folds": 3}, path)
    # Grouping added later puts a test case's patient in training too: refused, not leaked.
    leak = {split.test[0]: "same", split.train[0]: "same"}
    with pytest.raises(ConfigError, match="patient 'same' has cases on two sides"):
        fixed_splits(ids, leak, SPLIT, path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="delete it"):
        fixed_splits(ids, {}, SPLIT, path)


def test_folds_are_kept_and_new_patients_join_the_smallest_fold(tmp_path):
    path = tmp_path / "splits.json"
    patients = _patients(9, scans=1)
    cfg = {**SPLIT, "folds": 3, "test_fraction": 0.0}
    first = fixed_splits(sorted(patients), patients, cfg, path)
    assert [len(f) for f in first.folds] == [3, 3, 3] and not first.test
    grown = {**patients, "new_0": "new"}
    later = fixed_splits(sorted(grown), grown, cfg, path)
    assert later.folds[0] == sorted(first.folds[0] + ["new_0"]) and later.folds[1:] == first.folds[1:]
    assert "new_0" in later.train


def _labelled_folder(tmp_path, ids):
    image, label, affine = make_ct()
    for cid in ids:
        save_nifti(tmp_path / "images" / f"{cid}.nii.gz", image, affine)
        save_nifti(tmp_path / "labels" / f"{cid}.nii.gz", label, affine)


def test_workflow_cases_group_by_pattern_and_manifest_column_and_keep_splits_json(tmp_path):
    ids = [f"P{p}_{phase}" for p in range(6) for phase in ("art", "ven")]
    _labelled_folder(tmp_path, ids)
    config = {"cohort": {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"),
                         "label_names": {1: "a", 2: "b"}},
              "split": {**SPLIT, "test_fraction": 0.34, "group_pattern": r"^(P\d+)_"}}
    results = tmp_path / "results"
    cases = workflow_cases(config, results)
    sides = [cases.train, cases.val, cases.test]
    owners = [{c.split("_")[0] for c in side} for side in sides]
    assert all(side for side in sides) and all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1:])
    assert json.loads((results / "splits.json").read_text(encoding="utf-8"))["test"] == cases.test
    assert workflow_cases({**config, "split": {**config["split"], "seed": 3}}, results).test == cases.test
    # Manifest patient_id column: two case ids of one patient stay together.
    rows = ["case_id,image,label,patient_id"] + [
        f"{cid},images/{cid}.nii.gz,labels/{cid}.nii.gz,{'X' if cid.startswith(('P0', 'P1')) else cid}" for cid in ids]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    by_manifest = workflow_cases({"cohort": {"manifest": str(tmp_path / "m.csv"), "label_names": {1: "a", 2: "b"}},
                                  "split": {**SPLIT, "test_fraction": 0.34}}, tmp_path / "r2")
    x_cases = {c for c in ids if c.startswith(("P0", "P1"))}
    assert by_manifest.patients["P0_art"] == "X"
    assert sum(bool(x_cases & set(side)) for side in (by_manifest.train, by_manifest.val, by_manifest.test)) == 1


def test_dicom_patient_id_groups_series_of_one_patient(tmp_path):
    from ..io.test_dicom import write_series

    hu = np.full((3, 4, 5), 40, np.int16)
    positions = [(0.0, 0.0, 2.0 * s) for s in range(3)]
    for i, patient in enumerate(["PAT-A", "PAT-A", "PAT-B"]):
        write_series(tmp_path / "images" / f"s{i}", hu, positions, uid=f"1.2.826.0.1.3680043.8.498.7.{i}",
                     patient_id=patient)
    cohort = cohort_from_folders(tmp_path / "images")
    assert {c.case_id: c.dicom_patient_id for c in cohort.cases} == {"s0": "PAT-A", "s1": "PAT-A", "s2": "PAT-B"}
    assert patient_of_cases(cohort.cases) == {"s0": "PAT-A", "s1": "PAT-A", "s2": "PAT-B"}


def test_no_labelled_cases_write_no_splits_and_a_file_of_other_cases_does_not_bind(tmp_path):
    """An unlabelled first run must not fix an empty split (every later case would train); a file
    none of whose cases is in the cohort any more is a new cohort's: split afresh."""
    path = tmp_path / "splits.json"
    empty = fixed_splits([], {}, SPLIT, path)
    assert not path.exists() and not (empty.train or empty.val or empty.test)
    ids = [f"c{i:02d}" for i in range(12)]
    first = fixed_splits(ids, {}, SPLIT, path)
    others = [f"n{i:02d}" for i in range(12)]
    fresh = fixed_splits(others, {}, SPLIT, path)
    assert fresh.test and fresh.val and set(fresh.train + fresh.val + fresh.test) == set(others)
    assert json.loads(path.read_text(encoding="utf-8"))["test"] == fresh.test != first.test
