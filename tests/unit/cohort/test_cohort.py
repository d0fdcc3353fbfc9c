"""Cohort discovery, case checks and the import stage on bad input."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from unet_pipeline.cohort.discovery import CaseSpec, cohort_from_dataset_json, cohort_from_folders, cohort_from_manifest
from unet_pipeline.cohort.validation import check_case, rejection_message, screen_cases
from unet_pipeline.cohort.splits import split_cases
from unet_pipeline.cohort.workflow_cases import workflow_cases
from unet_pipeline.errors import CaseError, ConfigError
from unet_pipeline.cohort.naming import case_id_from_path, case_id_problems
from unet_pipeline.stages import import_case, import_label

from ...conftest import make_ct, save_nifti

LABELS = {1: "organ_a", 2: "organ_b"}


def _import_fails(tmp_path, image, label, match):
    out = tmp_path / "out"
    with pytest.raises(CaseError, match=match) as info:
        import_case("c", image, label, out, labels=LABELS)
    assert not out.exists() or not any(out.iterdir()), "a failed import left files behind"
    return str(info.value)


def test_good_case_imports_with_exact_bytes_and_label(tmp_path, ct_case):
    ip, lp, image, label, affine = ct_case
    record = import_case("case_a", ip, lp, tmp_path / "imp", labels=LABELS)
    assert record["shape"] == [24, 20, 6] and record["label_values"] == [0, 1, 2]
    assert (tmp_path / "imp" / "image.nii.gz").read_bytes() == ip.read_bytes()
    import_label(lp, tmp_path / "imp" / "image.nii.gz", tmp_path / "imp" / "label.nii.gz", labels=LABELS)
    out = nib.load(str(tmp_path / "imp" / "label.nii.gz"))
    np.testing.assert_array_equal(np.asarray(out.dataobj), label)
    assert out.get_data_dtype() == np.uint8


def test_truncated_gzip_names_file(tmp_path, ct_case):
    ip, lp, *_ = ct_case
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(ip.read_bytes()[: len(ip.read_bytes()) // 2])
    msg = _import_fails(tmp_path, bad, None, "truncated or corrupt|cannot read")
    assert str(bad) in msg


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a NIfTI file at all" * 20))
    msg = _import_fails(tmp_path, bad, None, "cannot read as an image")
    assert str(bad) in msg


def test_label_shape_mismatch(tmp_path, ct_case):
    ip, _, _, label, affine = ct_case
    lp = save_nifti(tmp_path / "l.nii.gz", label[:-1], affine)
    _import_fails(tmp_path, ip, lp, r"label shape \(23, 20, 6\) differs from image shape \(24, 20, 6\)")


def test_label_geometry_mismatch(tmp_path, ct_case):
    ip, _, _, label, affine = ct_case
    moved = affine.copy()
    moved[:3, 3] += [0, 0, 5.0]
    lp = save_nifti(tmp_path / "l.nii.gz", label, moved)
    msg = _import_fails(tmp_path, ip, lp, "origin differs")
    assert str(lp) in msg
    scaled = affine @ np.diag([1.1, 1, 1, 1])
    lp2 = save_nifti(tmp_path / "l2.nii.gz", label, scaled)
    _import_fails(tmp_path, ip, lp2, "spacing differs")


def test_nan_voxels(tmp_path, ct_case):
    _, _, image, _, affine = ct_case
    data = image.astype(np.float32)
    data[3, 3, 3] = np.nan
    data[4, 4, 4] = np.inf
    ip = save_nifti(tmp_path / "nan.nii.gz", data, affine)
    _import_fails(tmp_path, ip, None, "2 NaN/Inf voxels")


def test_4d_image_refused_but_single_volume_accepted(tmp_path, ct_case):
    _, _, image, _, affine = ct_case
    ip = save_nifti(tmp_path / "four.nii.gz", np.stack([image, image], -1), affine)
    _import_fails(tmp_path, ip, None, r"expected a 3-D volume, got shape \(24, 20, 6, 2\)")
    one = save_nifti(tmp_path / "one.nii.gz", image[..., None], affine)
    record = import_case("one", one, None, tmp_path / "ok", labels=LABELS)
    assert record["shape"] == [24, 20, 6]


def test_constant_image(tmp_path, ct_case):
    _, _, image, _, affine = ct_case
    ip = save_nifti(tmp_path / "const.nii.gz", np.zeros_like(image), affine)
    _import_fails(tmp_path, ip, None, "image is constant")


def test_label_not_integer_and_outside_classes(tmp_path, ct_case):
    ip, _, _, label, affine = ct_case
    lp = save_nifti(tmp_path / "f.nii.gz", label.astype(np.float32) * 0.5, affine)
    _import_fails(tmp_path, ip, lp, "label values are not integers")
    bad = label.copy()
    bad[0, 0, 0] = 7
    lp2 = save_nifti(tmp_path / "v.nii.gz", bad, affine)
    _import_fails(tmp_path, ip, lp2, r"label values \[7\] are not declared classes")


def test_too_few_slices(tmp_path, ct_case):
    ip, *_ = ct_case
    with pytest.raises(CaseError, match="6 slice\\(s\\), the model needs at least 7"):
        import_case("c", ip, None, tmp_path / "o", labels=LABELS, min_slices=7)


def test_warnings_for_suspicious_but_usable_input(tmp_path, ct_case):
    _, _, image, label, affine = ct_case
    ip = save_nifti(tmp_path / "mr.nii.gz", (image.astype(np.int32) + 1000).astype(np.int16), affine)
    lp = save_nifti(tmp_path / "empty.nii.gz", np.zeros_like(label), affine)
    check = check_case(CaseSpec("c", str(ip), str(lp)), LABELS)
    assert check.ok
    assert any("do not look like CT in HU" in w for w in check.warnings)
    assert any("label volume is empty" in w for w in check.warnings)
    big = save_nifti(tmp_path / "big.nii.gz", image, np.diag([1, 1, 12.0, 1]))
    assert any("unusually large voxel spacing" in w for w in check_case(CaseSpec("b", str(big)), LABELS).warnings)


def test_every_problem_listed_at_once(tmp_path, ct_case):
    _, _, image, label, affine = ct_case
    data = image.astype(np.float32)
    data[0, 0, 0] = np.nan
    ip = save_nifti(tmp_path / "img.nii.gz", data, affine)
    bad = label[:, :, :-1].astype(np.float32) + 0.25
    lp = save_nifti(tmp_path / "lab.nii.gz", bad, affine)
    check = check_case(CaseSpec("c", str(ip), str(lp)), LABELS)
    assert len(check.errors) >= 3
    assert any("NaN" in e for e in check.errors) and any("label shape" in e for e in check.errors)


def test_case_ids(tmp_path):
    assert case_id_from_path("a/b/liver_01.nii.gz") == "liver_01"
    assert case_id_from_path("x/liver_01_0000.nii.gz", channel_suffix=True) == "liver_01"
    problems = case_id_problems(["ok_1", "../etc", "Case", "case", "ok_1", ".hidden", "a b"])
    assert set(problems) == {"../etc", "case", "ok_1", ".hidden", "a b"}
    assert "case-insensitive" in problems["case"][0]
    assert "duplicate" in problems["ok_1"][0]


def test_discovery_layouts(tmp_path):
    image, label, affine = make_ct()
    root = tmp_path / "ds"
    for cid in ("a", "b"):
        save_nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{cid}.nii.gz", label, affine)
    save_nifti(root / "imagesTs" / "t_0000.nii.gz", image, affine)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 1, "y": 2}, "file_ending": ".nii.gz"}), encoding="utf-8")
    cohort = cohort_from_dataset_json(root / "dataset.json")
    assert cohort.case_ids == ["a", "b", "t"] and cohort.labels == {1: "x", 2: "y"}
    assert cohort.by_id()["t"].label is None and cohort.by_id()["a"].label.endswith("labelsTr/a.nii.gz")
    folders = cohort_from_folders(root / "labelsTr", root / "labelsTr")
    assert folders.case_ids == ["a", "b"]
    (tmp_path / "m.csv").write_text("case_id,image,label\nq,ds/imagesTr/a_0000.nii.gz,ds/labelsTr/a.nii.gz\nr,ds/imagesTs/t_0000.nii.gz,\n", encoding="utf-8")
    manifest = cohort_from_manifest(tmp_path / "m.csv")
    assert manifest.case_ids == ["q", "r"] and manifest.by_id()["r"].label is None
    assert manifest.by_id()["q"].image == str(tmp_path / "ds/imagesTr/a_0000.nii.gz")


def test_split_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    tr, te = split_cases(ids, 0.3, seed=4)
    assert len(te) == 3 and not set(tr) & set(te) and sorted(tr + te) == sorted(ids)
    assert split_cases(ids, 0.3, seed=4) == (tr, te)
    assert split_cases(ids, 0.3, seed=5) != (tr, te)
    assert split_cases(["a", "b"], 0.1, 0) == (["b"], ["a"]) or len(split_cases(["a", "b"], 0.1, 0)[1]) == 1


def test_workflow_cases_leaves_out_hostile_ids_and_keeps_the_others(tmp_path):
    image, label, affine = make_ct()
    save_nifti(tmp_path / "img" / "ok.nii.gz", image, affine)
    (tmp_path / "m.csv").write_text("case_id,image\n../../etc/passwd,img/ok.nii.gz\nfine,img/ok.nii.gz\n", encoding="utf-8")
    cases = workflow_cases({"cohort": {"manifest": str(tmp_path / "m.csv")}, "predict": {"model": "m"}}, tmp_path)
    assert sorted(cases.cases) == ["fine"] and cases.to_segment == ["fine"]
    assert list(cases.rejected) == ["../../etc/passwd"] and "not safe as a file name" in cases.rejected["../../etc/passwd"][0]
    message = rejection_message(cases.rejected)
    assert "1 case(s) left out" in message and "'../../etc/passwd'" in message
    (tmp_path / "bad.csv").write_text("case_id,image\n../x,img/ok.nii.gz\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"(?s)no usable cases.*'\.\./x': case id '\.\./x' is not safe"):
        workflow_cases({"cohort": {"manifest": str(tmp_path / "bad.csv")}, "predict": {"model": "m"}}, tmp_path)


def test_screen_cases_rejects_every_copy_of_a_duplicate_and_both_sides_of_a_case_clash():
    a1, a2 = CaseSpec("a", "/x/a.nii.gz", "/l/a.nii.gz"), CaseSpec("a", "/x/a.nii", "/l/a.nii.gz")
    same = CaseSpec("s", "/x/s.nii.gz")
    cases = [a1, CaseSpec("Case", "/x/Case.nii.gz"), CaseSpec("case", "/y/case.nii.gz"), a2, same, same,
             CaseSpec("ok", "/x/ok.nii.gz"), CaseSpec("lab", "/x/lab.nii.gz"), CaseSpec("a b", "/x/a b.nii.gz")]
    usable, rejected = screen_cases(cases, {"lab": ["several label files match this case: /l/lab.nii, /l/lab.nrrd"]})
    assert [c.case_id for c in usable] == ["s", "ok"]  # the same files listed twice: kept once
    assert set(rejected) == {"a", "Case", "case", "lab", "a b"}
    assert rejected["a"] == ["duplicate case id: 2 different sources (/x/a.nii.gz; /x/a.nii)"]
    assert rejected["Case"] == ["case id clashes with 'case' on case-insensitive file systems"]
    assert rejected["case"] == ["case id clashes with 'Case' on case-insensitive file systems"]
    assert "not safe as a file name" in rejected["a b"][0] and "several label files" in rejected["lab"][0]


def test_several_label_files_for_one_case_reject_it_and_orphan_labels_are_noted(tmp_path):
    image, label, affine = make_ct()
    for cid in ("a", "b"):
        save_nifti(tmp_path / "images" / f"{cid}.nii.gz", image, affine)
    save_nifti(tmp_path / "labels" / "a.nii.gz", label, affine)
    save_nifti(tmp_path / "labels" / "a.nii", label, affine)
    save_nifti(tmp_path / "labels" / "b.nii.gz", label, affine)
    save_nifti(tmp_path / "labels" / "zz.nii.gz", label, affine)
    cohort = cohort_from_folders(tmp_path / "images", tmp_path / "labels")
    assert cohort.by_id()["a"].label is None and cohort.by_id()["b"].label.endswith("b.nii.gz")
    assert "several label files" in cohort.problems["a"][0]
    assert any(n.startswith(str(tmp_path / "labels" / "zz.nii.gz")) and "without an image" in n for n in cohort.notes)
    assert screen_cases(cohort.cases, cohort.problems)[1].keys() == {"a"}


def test_an_unexpected_error_is_reported_as_the_case_problem(tmp_path, ct_case, monkeypatch):
    import unet_pipeline.io.images as io

    ip, lp, *_ = ct_case
    real = io.read_voxels

    def explode(img, path):
        if str(path) == str(ip):
            raise RuntimeError("decoder crashed")
        return real(img, path)

    monkeypatch.setattr(io, "read_voxels", explode)
    check = check_case(CaseSpec("c", str(ip), str(lp)), LABELS)
    assert check.errors == [f"{ip}: unexpected error while checking it (RuntimeError: decoder crashed)"]
    assert check.info["label_values"] == [0, 1, 2]  # the label was still checked


def test_label_is_checked_on_its_own_when_the_image_is_unreadable(tmp_path, ct_case):
    ip, _, _, label, affine = ct_case
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(ip.read_bytes()[:200])
    odd = label.astype(np.float32) + 0.5
    odd[0, 0, 0] = np.nan
    lp = save_nifti(tmp_path / "odd.nii.gz", odd, affine)
    check = check_case(CaseSpec("c", str(bad), str(lp)), LABELS)
    assert any(e.startswith(f"{bad}: ") for e in check.errors)
    assert f"{lp}: label has 1 NaN/Inf voxels" in check.errors
    assert f"{lp}: label values are not integers (dtype float32)" in check.errors
    msg = _import_fails(tmp_path, bad, lp, "truncated or corrupt|cannot read")
    assert str(lp) in msg  # the import stage runs the same checks
    ok = save_nifti(tmp_path / "ok.nii.gz", label, affine)
    check = check_case(CaseSpec("c", str(bad), str(ok)), {1: "a"})
    assert f"{ok}: label values [2] are not declared classes [0, 1]" in check.errors


def test_folds_assign_whole_cases_once_and_split_train_val():
    from unet_pipeline.cohort.workflow_cases import WorkflowCases
    from unet_pipeline.cohort.splits import assign_folds

    ids = [f"c{i:02d}" for i in range(11)]
    folds = assign_folds(ids, 3, seed=4)
    assert sorted(c for f in folds for c in f) == ids  # every case in exactly one fold
    assert sorted(len(f) for f in folds) == [3, 4, 4]
    assert assign_folds(ids, 3, seed=4) == folds  # seeded
    cases = WorkflowCases({}, {}, sorted(ids), [], [], [], folds)
    for k in range(3):
        train, val = cases.fold_split(k)
        assert val == folds[k] and not set(train) & set(val) and sorted(train + val) == ids
    assert cases.fold_split(None) == (sorted(ids), [])
    with pytest.raises(ValueError, match="fold 3 does not exist"):
        cases.fold_split(3)
