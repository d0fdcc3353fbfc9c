"""The fingerprint (the training cases' statistics, read once), the planner and the typed plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_ct, save_nifti
from unet_pipeline import stages
from unet_pipeline.plan.fingerprint import BODY_HU, clipped_moments, fingerprint_cases
from unet_pipeline.plan.plan import IntensityNormalisation, Plan, load_plan
from unet_pipeline.plan.planner import PlanOptions, make_plan, plan_from_fingerprint

LABELS = {1: "a", 2: "b"}


def _cases(tmp_path, n=2):
    cases = []
    for i in range(n):
        image, label, affine = make_ct(shape=(24, 20, 6), spacing=(0.8 + 0.2 * i, 0.8 + 0.2 * i, 3.0), seed=i)
        cases.append((f"c{i}", save_nifti(tmp_path / f"i{i}.nii.gz", image, affine),
                      save_nifti(tmp_path / f"l{i}.nii.gz", label, affine), image, label))
    return cases


def test_the_fingerprint_holds_what_every_intensity_scheme_needs(tmp_path):
    cases = _cases(tmp_path)
    fp = fingerprint_cases([c[:3] for c in cases], LABELS)
    fg = np.concatenate([c[3][c[4] > 0].astype(np.float32) for c in cases])  # every voxel: < 20000 per case
    body = np.concatenate([c[3][c[3] > BODY_HU].astype(np.float32) for c in cases])
    stats = fp["intensity"]
    assert stats["foreground"]["samples"] == fg.size and stats["body"]["samples"] == body.size
    assert stats["foreground"]["p00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert stats["body"]["p99_5"] == pytest.approx(np.percentile(body, 99.5))
    assert stats["body"]["mean"] == pytest.approx(body.mean()) and stats["foreground"]["max"] == fg.max()
    lo, hi = stats["body"]["p00_5"], stats["body"]["p99_5"]
    assert stats["body"]["clipped_foreground"]["mean"] == pytest.approx(np.clip(fg, lo, hi).mean())
    hist = stats["foreground_histogram"]  # int16 HU: the histogram is the sample itself
    assert sum(hist["count"]) == fg.size and hist["hu"] == sorted(set(hist["hu"]))
    assert clipped_moments(hist["hu"], hist["count"], -150, 130) == pytest.approx(
        (np.clip(fg, -150, 130).mean(), np.clip(fg, -150, 130).std()), rel=1e-6)
    # per case: canonical (z, y, x) shape and spacing, voxels of every class
    assert fp["cases"]["c0"]["shape"] == [6, 20, 24] and fp["cases"]["c1"]["spacing_mm"] == pytest.approx([3.0, 1.0, 1.0])
    assert fp["cases"]["c0"]["class_voxels"] == {"1": int((cases[0][4] == 1).sum()), "2": int((cases[0][4] == 2).sum())}
    assert fp["cases"]["c0"]["foreground_voxels"] == int((cases[0][4] > 0).sum())
    assert fp["slice_axis"] == "axial" and fp["labels"] == {"1": "a", "2": "b"} and fp["training_cases"] == ["c0", "c1"]
    json.dumps(fp)  # JSON as it is


def test_a_planning_option_is_decided_without_reading_an_image(tmp_path, monkeypatch):
    """stages.plan reads fingerprint.json only: every scheme, window and patch option from one fingerprint."""
    import nibabel

    from unet_pipeline.io import images
    from unet_pipeline.plan import fingerprint

    cases = _cases(tmp_path)
    imported = []
    for cid, image, label, *_ in cases:
        (tmp_path / "imp" / cid).mkdir(parents=True)
        (tmp_path / "imp" / cid / "image.nii.gz").write_bytes(image.read_bytes())
        (tmp_path / "imp" / cid / "label.nii.gz").write_bytes(label.read_bytes())
        imported.append((cid, tmp_path / "imp" / cid))
    stages.fingerprint(imported, tmp_path / "fingerprint.json", labels=LABELS, seed=3)

    def no_image(*args, **kwargs):
        raise AssertionError("the plan stage read an image")

    def forbid_image_reads(mp):
        for module, name in ((nibabel, "load"), (images, "load_image"), (images, "read_voxels"),
                             (fingerprint, "load_image"), (fingerprint, "read_voxels"), (fingerprint, "orientation_of")):
            mp.setattr(module, name, no_image)

    triples = [c[:3] for c in cases]
    for options in ({}, {"intensity": "foreground"}, {"intensity": "window", "hu_window": [-150, 250]},
                    {"max_patch_mm": 10.0}, {"target_spacing_mm": [2.0, 2.0], "patch_size": [48, 32]}):
        with monkeypatch.context() as mp:
            forbid_image_reads(mp)
            with pytest.raises(AssertionError, match="read an image"):  # the guard holds
                stages.fingerprint(imported, tmp_path / "other.json", labels=LABELS)
            written = stages.plan(tmp_path / "fingerprint.json", tmp_path / "plan.json", **options)
        assert json.loads((tmp_path / "plan.json").read_text(encoding="utf-8")) == written
        assert written == make_plan(triples, LABELS, seed=3, **options), options  # images read again: the same plan


def test_plan_options_fail_before_any_image_is_read():
    with pytest.raises(ValueError, match="plan.hu_window"):
        PlanOptions(intensity="window")
    with pytest.raises(ValueError, match="plan.intensity must be one of"):
        make_plan([("c0", "/does/not/exist.nii.gz", "/nor/this.nii.gz")], LABELS, intensity="percentile")


def test_the_body_scheme_needs_voxels_above_minus_500_hu():
    fp = {"slice_axis": "axial", "labels": {"1": "a"}, "training_cases": ["c"],
          "cases": {"c": {"shape": [4, 32, 32], "spacing_mm": [3.0, 1.0, 1.0], "foreground_voxels": 9}},
          "intensity": {"body": None, "foreground": {"p00_5": -900.0, "p99_5": -600.0,
                                                     "clipped_foreground": {"mean": -700.0, "std": 50.0}}}}
    with pytest.raises(ValueError, match="plan.intensity: body"):
        plan_from_fingerprint(fp, PlanOptions())
    plan = plan_from_fingerprint(fp, PlanOptions(intensity="foreground"))
    assert plan.intensity == IntensityNormalisation(-900.0, -600.0, -700.0, 50.0, "foreground")
    assert plan.patch_size == (32, 32) and plan.num_classes == 2 and plan.median_slice_thickness_mm == 3.0


def test_plan_round_trips_its_json_and_reads_older_and_partial_plans(tmp_path):
    cases = _cases(tmp_path)
    content = make_plan([c[:3] for c in cases], {2: "b", 1: "a"})
    plan = Plan.from_dict(content)
    assert plan.to_dict() == content and list(plan.to_dict()) == list(content)  # the same JSON, key order too
    assert plan.labels == {1: "a", 2: "b"} and plan.label_values == [1, 2] and plan.label_names == ["a", "b"]
    assert plan.num_classes == 3 and plan.slice_axis == "axial" and plan.intensity.scheme == "body"
    (tmp_path / "plan.json").write_text(json.dumps(content), encoding="utf-8")
    assert load_plan(tmp_path / "plan.json") == plan
    assert plan.with_patch_size([44, 60]).patch_size == (44, 60) and plan.patch_size == tuple(content["patch_size"])
    older = {k: v for k, v in content.items() if k not in ("slice_axis", "format", "label_values")}
    older["intensity"] = {k: v for k, v in content["intensity"].items() if k != "scheme"}
    old = Plan.from_dict(older)
    assert old.slice_axis == "axial" and old.intensity.scheme is None and "scheme" not in old.to_dict()["intensity"]
    partial = Plan.from_dict({"target_spacing_mm": [1, 2], "num_classes": 2,
                              "intensity": {"p00_5": -1000, "p99_5": 500, "mean": 0, "std": 100}})
    assert partial.target_spacing_mm == (1.0, 2.0) and partial.labels == {} and partial.patch_size is None
    assert partial.num_classes == 2 and partial.label_values == []


@pytest.mark.parametrize("content,match", [
    ({"intensity": {}}, r"missing \['target_spacing_mm'\]"),
    ({"target_spacing_mm": [1.0, 1.0], "intensity": {"p00_5": 0}}, r"plan intensity: missing \['p99_5', 'mean', 'std'\]"),
    ({"target_spacing_mm": [1.0], "intensity": {"p00_5": 0, "p99_5": 1, "mean": 0, "std": 1}}, "target_spacing_mm must be"),
    ({"target_spacing_mm": [1, 1], "labels": {"0": "bg"}, "intensity": {"p00_5": 0, "p99_5": 1, "mean": 0, "std": 1}},
     "label values must be 1..65535"),
    ({"target_spacing_mm": [1, 1], "labels": {"1": "a"}, "num_classes": 3,
      "intensity": {"p00_5": 0, "p99_5": 1, "mean": 0, "std": 1}}, "num_classes 3 for 1 label"),
    ({"target_spacing_mm": [1, 1], "slice_axis": "oblique", "intensity": {"p00_5": 0, "p99_5": 1, "mean": 0, "std": 1}},
     "plan.slice_axis must be one of"),
])
def test_an_unusable_plan_names_the_key(content, match):
    with pytest.raises(ValueError, match=match):
        Plan.from_dict(content)
