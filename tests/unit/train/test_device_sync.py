"""GPU-ready training on the CPU: no device-to-host reads in the loss, labels checked at data
loading, and the flips of training recorded for test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_pipeline.train.losses import make_loss
from unet_pipeline.train.sampler import PatchSampler, TrainingCase


@pytest.mark.parametrize("name", ["dice_ce", "dice", "ce", "weighted_ce"])
def test_losses_read_no_values_off_the_device(name):
    """On the ``meta`` device a tensor has no values: any ``int(t)``/``.item()`` (on a GPU, a
    device-to-host synchronisation) raises, so running there shows the loss reads none."""
    logits = torch.randn(2, 3, 8, 8, device="meta")
    target = torch.zeros(2, 8, 8, dtype=torch.long, device="meta")
    weight = torch.ones(2, 8, 8, device="meta")
    valid = torch.ones(2, 8, 8, dtype=torch.bool, device="meta")
    loss = make_loss(name)(logits, target, weight_map=weight, valid_mask=valid)
    assert loss.device.type == "meta" and loss.shape == ()
    with pytest.raises(Exception):
        int(target.max())  # the check this test relies on


def test_losses_still_check_the_class_range_of_cpu_targets():
    logits, target = torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"in \[0, 2\].*got values in \[3, 3\]"):
        make_loss("dice_ce")(logits, target)


def _case(label: np.ndarray) -> TrainingCase:
    image = np.zeros(label.shape, np.float32)
    present = [sorted(int(v) for v in np.unique(s) if v) for s in label]
    return TrainingCase("case_x", image, label, None, present, 0.0)


def test_the_sampler_checks_every_label_patch_on_the_host():
    label = np.zeros((3, 12, 12), np.uint8)
    label[1, 4:8, 4:8] = 1
    label[2, 2:5, 2:5] = 5  # a class the plan does not have
    rng = np.random.default_rng(0)
    ok = PatchSampler([_case(label[:2])], (8, 8), rng=rng, num_classes=2)
    assert ok.sample(6)[1].max() <= 1
    bad = PatchSampler([_case(label)], (8, 8), rng=rng, num_classes=2, foreground_fraction=1.0)
    with pytest.raises(ValueError, match=r"case case_x, slice 2: label values in \[0, 5\].*\[0, 1\]"):
        for _ in range(20):
            bad.sample(4)
    PatchSampler([_case(label)], (8, 8), rng=rng).sample(4)  # num_classes None: unchecked, as before


@pytest.mark.parametrize("augment,labels,expected", [
    ({"mirror_p": 0.0, "mirror_axes": ["x", "y"], "lr_label_pairs": [[3, 9]]}, [1, 3, 9],
     {"axes": [], "lr_class_pairs": []}),
    ({"mirror_p": 0.5, "mirror_axes": ["y", "x"], "lr_label_pairs": [[9, 3]]}, [1, 3, 9],
     {"axes": ["x", "y"], "lr_class_pairs": [[3, 2]]}),
    ({"mirror_p": 0.5, "mirror_axes": ["y"], "lr_label_pairs": [[9, 3]]}, [1, 3, 9],
     {"axes": ["y"], "lr_class_pairs": []}),  # pairs swap on x flips only
])
def test_model_json_records_the_flips_of_training(augment, labels, expected):
    """What ``train`` writes to ``model.json["mirroring"]``: the pairs as class indices (channels)."""
    from unet_pipeline.infer.tta import trained_mirroring
    from unet_pipeline.train.augment import AugmentConfig, mirroring_record
    from unet_pipeline.train.run import _pairs_as_class_indices

    record = mirroring_record(_pairs_as_class_indices(AugmentConfig(**augment), labels))
    assert record == expected
    # read back at inference, and derived alike from the augmentation section of an older model.json
    as_read = (tuple(expected["axes"]), tuple(tuple(p) for p in expected["lr_class_pairs"]))
    assert trained_mirroring({"mirroring": record}) == as_read
    legacy = {"augmentation": AugmentConfig(**augment).to_dict(), "labels": {str(v): f"l{v}" for v in labels}}
    assert trained_mirroring(legacy) == as_read
