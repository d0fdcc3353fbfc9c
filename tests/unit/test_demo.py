"""The synthetic demo cohort: reproducible, varied geometry, plausible HU, consistent labels."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from unet_pipeline.cohort.discovery import cohort_from_dataset_json, cohort_from_folders
from unet_pipeline.demo import make_demo_case, write_demo_cohort
from unet_pipeline.cohort.naming import DEMO_LABELS


def test_cases_are_reproducible_and_differ():
    a_img, a_lab, a_aff = make_demo_case(3, seed=1)
    b_img, b_lab, b_aff = make_demo_case(3, seed=1)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab) and np.array_equal(a_aff, b_aff)
    c_img, _, _ = make_demo_case(4, seed=1)
    assert c_img.shape != a_img.shape or not np.array_equal(c_img, a_img)


def test_geometry_varies_like_a_real_cohort():
    codes, inplane, thick = set(), [], []
    for i in range(10):
        image, label, affine = make_demo_case(i, seed=0)
        assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape
        codes.add("".join(nib.aff2axcodes(affine)))
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        s_axis = [i for i, c in enumerate(nib.aff2axcodes(affine)) if c in "SI"][0]
        thick.append(zooms[s_axis])
        inplane.extend(np.delete(zooms, s_axis))
    assert {"RAS", "LPS", "LAS"} <= codes and len(codes) >= 6
    assert 0.6 <= min(inplane) and max(inplane) <= 1.0
    assert 1.5 <= min(thick) and max(thick) <= 5.0


def test_intensities_and_anatomy_are_plausible():
    image, label, affine = make_demo_case(0, seed=0)
    assert set(np.unique(label)) == {0, *DEMO_LABELS}
    assert image[0, 0, 0] < -900 and (image < -900).mean() > 0.1  # air around the body
    # Portal-venous phase HU of adult organs (literature ranges, independent of ORGAN_HU, which
    # generated the image): liver 80-140, spleen 100-160, kidney (cortex + medulla) 130-250.
    plausible = {1: (80, 140), 2: (100, 160), 3: (130, 250), 4: (130, 250)}
    median = {value: float(np.median(image[label == value])) for value in plausible}
    for value, (low, high) in plausible.items():
        assert low <= median[value] <= high, (value, median[value], (low, high))
    # Each organ stands out from the soft tissue around it (about 40 HU), as a model must see it.
    body = (label == 0) & (image > -50) & (image < 150)
    assert min(median.values()) - np.median(image[body]) > 30
    assert (image > 500).sum() > 0  # bone
    # Liver on the patient's right (RAS x > 0), spleen on the left.
    ijk = {v: np.argwhere(label == v).mean(axis=0) for v in (1, 2)}
    world = {v: affine[:3, :3] @ c + affine[:3, 3] for v, c in ijk.items()}
    assert world[1][0] > world[2][0]


def test_write_cohort_layout_and_dataset_json(tmp_path):
    ids = write_demo_cohort(tmp_path, n_cases=3, seed=2)
    assert ids == ["demo_000", "demo_001", "demo_002"]
    meta = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"]["liver"] == 1 and meta["numTraining"] == 3
    for cohort in (cohort_from_folders(tmp_path / "images", tmp_path / "labels"),
                   cohort_from_dataset_json(tmp_path / "dataset.json")):
        assert [c.case_id for c in cohort.cases] == ids and all(c.label for c in cohort.cases)
    img = nib.load(str(tmp_path / "images" / "demo_001.nii.gz"))
    lab = nib.load(str(tmp_path / "labels" / "demo_001.nii.gz"))
    assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
    assert int(img.header["sform_code"]) == 1 and img.get_data_dtype() == np.int16
    assert not list(tmp_path.rglob(".tmp-*"))
