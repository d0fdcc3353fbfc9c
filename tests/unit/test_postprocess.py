"""Per-class postprocessing with hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from unet_pipeline.postprocess import postprocess_labels

NAMES = {1: "liver", 2: "spleen"}


def _two_blobs():
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:8, 2:12, 2:12] = 1  # 600 voxels
    labels[2:4, 15:17, 15:17] = 1  # 8 voxels, a separate component
    labels[5:7, 15:18, 15:18] = 2  # 18 voxels of another class
    return labels


def test_largest_component_keeps_only_the_biggest_piece():
    out = postprocess_labels(_two_blobs(), (1, 1, 1), {"liver": {"largest_component": True}}, NAMES)
    assert (out == 1).sum() == 600 and (out == 2).sum() == 18  # other classes untouched
    assert out.dtype == np.uint8


def test_min_volume_removes_small_components_in_ml():
    labels = _two_blobs()
    # 8 voxels of 2 x 2 x 2 mm = 0.064 mL < 0.1 mL; spleen (18 x 8 mm^3 = 0.144 mL) stays
    out = postprocess_labels(labels, (2, 2, 2), {"*": {"min_volume_ml": 0.1}}, NAMES)
    assert (out == 1).sum() == 600 and (out == 2).sum() == 18
    out = postprocess_labels(labels, (2, 2, 2), {"*": {"min_volume_ml": 0.2}}, NAMES)
    assert (out == 2).sum() == 0


def test_fill_holes():
    labels = np.zeros((7, 7, 7), np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[3, 3, 3] = 0
    out = postprocess_labels(labels, (1, 1, 1), {"liver": {"fill_holes": True}}, NAMES)
    assert out[3, 3, 3] == 1 and (out == 1).sum() == 125


def test_nothing_configured_changes_nothing_and_input_is_not_modified():
    labels = _two_blobs()
    before = labels.copy()
    out = postprocess_labels(labels, (1, 1, 1), {}, NAMES)
    assert np.array_equal(out, before) and np.array_equal(labels, before)


def test_unknown_option_names_the_class():
    with pytest.raises(ValueError, match="postprocess.liver: unknown option"):
        postprocess_labels(_two_blobs(), (1, 1, 1), {"liver": {"keep_largest": True}}, NAMES)


def test_postprocessing_is_chosen_per_class_by_the_held_out_dice():
    from unet_pipeline.postprocess import choose_postprocessing

    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 1:5, 1:5] = 1  # organ a: one blob
    ref[1:3, 6:9, 1:3] = 2  # organ b: two blobs, both real
    ref[1:3, 6:9, 6:9] = 2
    pred = ref.copy()
    pred[3, 8, 8] = 1  # a stray island of a: removing it helps
    names = {1: "a", 2: "b", 3: "c"}
    config, table = choose_postprocessing([pred], [ref], names)
    assert config == {"a": {"largest_component": True}}  # b would lose a real blob; c occurs nowhere
    assert table["a"]["after"] == 1.0 and table["a"]["before"] < 1.0 and table["a"]["adopted"]
    assert table["b"]["after"] < table["b"]["before"] and not table["b"]["adopted"]
    assert table["c"] == {"before": None, "after": None, "adopted": False, "cases": 0}
    # A class that is already one component everywhere: adopting it changes nothing, so it is kept.
    config, _ = choose_postprocessing([ref], [ref], {1: "a"})
    assert config == {"a": {"largest_component": True}}
    with pytest.raises(ValueError, match="references"):
        choose_postprocessing([pred], [], names)


def _random_mask(shape, seed, density=0.55):
    return np.random.default_rng(seed).random(shape) < density  # islands, holes, diagonal touches


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_equals_monai_fill_holes_through_faces(seed):
    from monai.transforms.utils import fill_holes

    labels = _random_mask((9, 11, 7), seed, density=0.8).astype(np.uint8)
    ours = postprocess_labels(labels, (1, 1, 1), {"liver": {"fill_holes": True}}, NAMES)
    theirs = fill_holes(labels[None].copy(), applied_labels=[1], connectivity=1)[0]
    assert (ours == 1).sum() > (labels == 1).sum() and np.array_equal(ours, theirs)


def test_a_diagonal_gap_does_not_open_a_hole():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[2, 2, 2] = 0  # the hole
    labels[1, 1, 1] = 0  # a corner gap: the hole touches the outside only diagonally
    out = postprocess_labels(labels, (1, 1, 1), {"liver": {"fill_holes": True}}, NAMES)
    assert out[2, 2, 2] == 1 and out[1, 1, 1] == 0


def test_components_are_connected_through_faces_edges_and_corners():
    from unet_pipeline.evaluate.volumes import case_volumes
    from unet_pipeline.postprocess import label_components

    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 1
    labels[2, 2, 2] = 1  # touches the cube by a corner only
    labels[4:6, 4:6, 4:6] = 1  # apart
    assert label_components(labels == 1)[1] == 2
    out = postprocess_labels(labels, (1, 1, 1), {"liver": {"largest_component": True}}, NAMES)
    assert (out == 1).sum() == 9  # the cube and its corner voxel stay together
    (row, _) = case_volumes(out, np.zeros(out.shape), (1, 1, 1), NAMES)
    assert row["n_components"] == 1  # the volumes table counts as postprocessing does


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_equal_monai(seed):
    """MONAI's component transforms need scikit-image, a test dependency (pyproject's ``test`` extra)."""
    from monai.transforms.utils import get_largest_connected_component_mask, remove_small_objects

    from unet_pipeline.postprocess import CONNECTIVITY, _kept_components, label_components

    mask = _random_mask((12, 14, 10), seed, density=0.2)
    theirs = get_largest_connected_component_mask(mask, connectivity=CONNECTIVITY)
    assert np.array_equal(_kept_components(mask, largest=True), theirs)
    # scikit-image 0.26 also removes components of exactly min_size voxels (older ones kept them),
    # so the threshold is a size no component has.
    sizes = set(np.bincount(label_components(mask)[0].ravel()).tolist())
    threshold = min(set(range(2, 50)) - sizes)
    theirs = remove_small_objects(mask[None], threshold, CONNECTIVITY)[0]
    assert np.array_equal(_kept_components(mask, largest=False, min_volume_ml=float(threshold)), theirs)


def test_class_volumes_are_voxel_counts_times_the_voxel_volume():
    from unet_pipeline.postprocess import class_volumes_ml

    # liver 600 voxels + 8, spleen 18; voxels of 2 x 2 x 2 mm = 0.008 mL
    assert class_volumes_ml(_two_blobs(), (2, 2, 2), {**NAMES, 3: "absent"}) == pytest.approx(
        {"liver": 608 * 0.008, "spleen": 18 * 0.008, "absent": 0.0})


def test_min_volume_is_a_fraction_of_the_smallest_labelled_volume():
    from unet_pipeline.postprocess import learn_min_volumes

    small, big = np.zeros((4, 10, 10), np.uint8), np.zeros((4, 10, 10), np.uint8)
    small[0:2, 0:5, 0:5] = 1  # liver 50 voxels
    big[0:4, 0:10, 0:5] = 1  # liver 200 voxels
    big[0:2, 0:2, 6:8] = 2  # spleen 8 voxels, only here
    record = learn_min_volumes([(small, (1, 1, 1)), (big, (2, 1, 1))], {**NAMES, 3: "absent"}, fraction=0.25)
    assert record["fraction"] == 0.25 and "labelled" in record["source"]
    # liver: smallest of 50 x 1 uL and 200 x 2 uL = 0.05 mL; a quarter of it
    # and its length along z in that case (2 slices of 1 mm), over which the minimum applies in full
    assert record["classes"]["liver"] == {"smallest_labelled_ml": 0.05, "cases": 2, "extent_mm": 2.0,
                                          "min_volume_ml": 0.0125}
    assert record["classes"]["spleen"] == {"smallest_labelled_ml": 0.016, "cases": 1, "extent_mm": 4.0,
                                           "min_volume_ml": 0.004}
    # A class no labelled case holds: nothing to learn, no minimum
    assert record["classes"]["absent"] == {"smallest_labelled_ml": None, "cases": 0, "extent_mm": None,
                                           "min_volume_ml": None}
    assert learn_min_volumes([(small, (1, 1, 1))], NAMES, fraction=0)["classes"]["liver"]["min_volume_ml"] is None
    with pytest.raises(ValueError, match="fraction: 1.5 is not in"):
        learn_min_volumes([(small, (1, 1, 1))], NAMES, fraction=1.5)


def test_learned_min_volume_removes_a_small_island_and_keeps_the_organ():
    """A 8-voxel island below the learned minimum is removed; the 600-voxel organ (and every class
    without a learned minimum) stays; the largest-component choice is kept beside it."""
    from unet_pipeline.postprocess import learn_min_volumes, with_min_volumes

    ref = np.zeros((10, 20, 20), np.uint8)
    ref[2:8, 2:12, 2:12] = 1  # the labelled liver: 600 voxels = 0.6 mL at 1 mm
    record = learn_min_volumes([(ref, (1, 1, 1))], NAMES, fraction=0.1)  # liver >= 0.06 mL; spleen unlabelled
    config = with_min_volumes({"liver": {"largest_component": False}}, record)
    assert config == {"liver": {"largest_component": False, "min_volume_ml": 0.06, "min_volume_extent_mm": 6.0}}
    out = postprocess_labels(_two_blobs(), (1, 1, 1), config, NAMES)
    assert (out == 1).sum() == 600 and (out == 2).sum() == 18
    # An absent organ painted as one island only: largest_component alone keeps it, the minimum removes it.
    island = np.zeros((10, 20, 20), np.uint8)
    island[2:4, 15:17, 15:17] = 1
    assert (postprocess_labels(island, (1, 1, 1), {"liver": {"largest_component": True}}, NAMES) == 1).sum() == 8
    both = with_min_volumes({"liver": {"largest_component": True}}, record)
    assert not postprocess_labels(island, (1, 1, 1), both, NAMES).any()


def test_a_configured_min_volume_is_not_replaced_by_the_learned_one():
    from unet_pipeline.postprocess import with_min_volumes

    record = {"classes": {"liver": {"min_volume_ml": 5.0}, "spleen": {"min_volume_ml": None}}}
    config = {"liver": {"min_volume_ml": 0.5}}
    assert with_min_volumes(config, record) == {"liver": {"min_volume_ml": 0.5}}
    assert config == {"liver": {"min_volume_ml": 0.5}}  # not modified
    assert with_min_volumes({}, record) == {"liver": {"min_volume_ml": 5.0}}


def test_learned_postprocessing_round_trips_through_model_json_and_a_config_overrides_it(tmp_path):
    """The record in ``model.json`` is what predictions apply; a config's explicit section wins."""
    from unet_pipeline.config import effective_postprocess
    from unet_pipeline.model.card import read_model_card, write_model_card
    from unet_pipeline.postprocess import learn_min_volumes, with_min_volumes

    ref = np.zeros((10, 20, 20), np.uint8)
    ref[2:8, 2:12, 2:12] = 1
    record = learn_min_volumes([(ref, (1, 1, 1))], NAMES, fraction=0.1)
    chosen = with_min_volumes({}, record)
    write_model_card(tmp_path, {"architecture": {}, "plan": {}, "labels": {"1": "liver", "2": "spleen"},
                                "postprocess": chosen, "postprocess_source": "postprocess_choice",
                                "postprocess_choice": {"config": chosen, "min_volume": record}})
    card = read_model_card(tmp_path)
    assert card.postprocess == {"liver": {"min_volume_ml": 0.06, "min_volume_extent_mm": 6.0}}
    assert card.meta["postprocess_choice"]["min_volume"] == record
    assert effective_postprocess(None, card.meta) == card.postprocess
    assert effective_postprocess({}, card.meta) == {}
    island = np.zeros((10, 20, 20), np.uint8)
    island[2:4, 15:17, 15:17] = 1
    assert not postprocess_labels(island, (1, 1, 1), effective_postprocess(None, card.meta), NAMES).any()
    kept = postprocess_labels(island, (1, 1, 1), effective_postprocess({"liver": {"fill_holes": True}}, card.meta), NAMES)
    assert (kept == 1).sum() == 8


def test_a_scan_thinner_than_the_organ_gets_a_proportionally_smaller_minimum():
    """``min_volume_extent_mm``: the organ was 6 mm long when labelled with 0.06 mL at least; a scan of
    2 slices of 1 mm can hold a third of it, so its minimum is 0.02 mL: a 0.04 mL piece stays there,
    and goes in a scan of 10 slices (the full minimum)."""
    config = {"liver": {"min_volume_ml": 0.06, "min_volume_extent_mm": 6.0}}
    slab = np.zeros((2, 20, 20), np.uint8)
    slab[:, 0:4, 0:5] = 1  # 40 voxels = 0.04 mL
    assert (postprocess_labels(slab, (1, 1, 1), config, NAMES) == 1).sum() == 40
    tall = np.zeros((10, 20, 20), np.uint8)
    tall[0:2, 0:4, 0:5] = 1
    assert not postprocess_labels(tall, (1, 1, 1), config, NAMES).any()
    # Without the extent the minimum is the same on every scan.
    assert not postprocess_labels(slab, (1, 1, 1), {"liver": {"min_volume_ml": 0.06}}, NAMES).any()
    # A 2-slice scan of 3 mm slices is as long as the organ: the full minimum.
    assert not postprocess_labels(slab, (3, 1, 1), {"liver": {"min_volume_ml": 0.24, "min_volume_extent_mm": 6.0}},
                                  NAMES).any()


def test_mean_class_dice_skips_cases_without_the_class():
    from unet_pipeline.postprocess import mean_class_dice

    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, 0:2, 0:2] = 1  # 4 voxels of liver
    pred = ref.copy()
    pred[1, 0:2, 0:2] = 1  # 4 more: Dice 2 * 4 / (8 + 4)
    empty = np.zeros_like(ref)
    assert mean_class_dice([pred, empty], [ref, empty], NAMES) == {"liver": round(8 / 12, 6), "spleen": None}
    assert mean_class_dice([empty, ref], [ref, ref], NAMES)["liver"] == 0.5  # 0 where missed, 1 where found
