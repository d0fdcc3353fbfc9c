"""The slice index (classes per slice, foreground boxes) and the stored weight maps."""

from __future__ import annotations

import numpy as np

from unet_pipeline.io.files import save_json
from unet_pipeline.preprocess.slice_index import build_slice_index as slice_case
from unet_pipeline.preprocess.slice_index import load_slice_index


def _preprocessed(tmp_path, label):
    pre = tmp_path / "pre"
    pre.mkdir()
    np.save(pre / "label.npy", label)
    save_json({"case_id": "c1"}, pre / "meta.json")
    return pre


def test_index_lists_classes_and_boxes_per_slice(tmp_path):
    label = np.zeros((3, 10, 12), np.uint8)
    label[0, 2:4, 3:6] = 1
    label[0, 7, 9] = 3
    label[2, 5:9, 0:2] = 2
    index = slice_case(_preprocessed(tmp_path, label), tmp_path / "slices", num_classes=4)
    assert index["classes_present"] == [[1, 3], [], [2]]
    assert index["foreground_box"] == [[2, 3, 8, 10], None, [5, 0, 9, 2]]
    assert index["shape"] == [3, 10, 12] and not index["weight_map"]
    assert load_slice_index(tmp_path / "slices") == index


def test_weight_map_is_stored_and_peaks_between_close_objects(tmp_path):
    label = np.zeros((1, 20, 30), np.uint8)
    label[0, 5:15, 3:12] = 1
    label[0, 5:15, 14:25] = 1  # two cells 2 px apart
    slice_case(_preprocessed(tmp_path, label), tmp_path / "slices", num_classes=2, weight_map=True, w0=10, sigma_px=5)
    w = np.load(tmp_path / "slices" / "weightmap.npy")
    assert w.dtype == np.float16 and w.shape == label.shape
    assert float(w.min()) > 0
    gap = float(w[0, 10, 12:14].max())
    far = float(w[0, 0, 0])
    assert gap > far + 5  # the border term w0 * exp(-(d1 + d2)^2 / 2 sigma^2) is large in the gap
