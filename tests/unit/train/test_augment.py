"""Tests for unet_pipeline.train.augment: elastic field, alignment, mirroring, identity, reproducibility."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from unet_pipeline.train.augment import AugmentConfig, _interpolate_nodes, augment_batch, elastic_displacement

OFF = {"elastic_p": 0.0, "rotate_p": 0.0, "scale_p": 0.0, "mirror_p": 0.0, "gamma_p": 0.0, "noise_p": 0.0,
       "contrast_p": 0.0, "brightness_p": 0.0}


def _config(**on: object) -> AugmentConfig:
    """Everything off except the given fields."""
    return AugmentConfig(**{**OFF, **on})


def _blobs(n: int = 4, h: int = 128, w: int = 128) -> torch.Tensor:
    """``(n, h, w)`` int64 label: three rectangles of classes 1, 2 and 3 (3 inside 2)."""
    label = torch.zeros(n, h, w, dtype=torch.long)
    label[:, h // 6:h // 2, w // 12:w // 2 - 10] = 1
    label[:, h // 2 + 5:h - 15, w // 2:w - 8] = 2
    label[:, h // 2 + 15:h - 25, w // 2 + 15:w - 25] = 3
    return label


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- elastic field ---------------------------------------------------------------------------
def test_elastic_shape_dtype_and_device():
    field = elastic_displacement(3, (17, 24), grid=4, sigma_px=2.0, generator=_gen(0), dtype=torch.float64)
    assert field.shape == (3, 17, 24, 2) and field.dtype == torch.float64 and field.device.type == "cpu"
    assert elastic_displacement(0, (5, 5)).shape == (0, 5, 5, 2)


def test_elastic_passes_through_lattice_nodes():
    # 9 x 13 px with a 3 x 3 lattice: nodes at rows 0, 4, 8 and columns 0, 6, 12.
    field = elastic_displacement(2, (9, 13), grid=3, sigma_px=10.0, generator=_gen(5))
    nodes = torch.randn((2, 2, 3, 3), generator=_gen(5)) * 10.0  # the documented draw
    for i, row in enumerate((0, 4, 8)):
        for j, col in enumerate((0, 6, 12)):
            torch.testing.assert_close(field[:, row, col, :], nodes[:, :, i, j], rtol=0, atol=1e-5)
    # the four patch corners in particular
    torch.testing.assert_close(field[:, [0, 0, -1, -1], [0, -1, 0, -1], :],
                               nodes[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].permute(0, 2, 1), rtol=0, atol=1e-5)


def test_elastic_node_scale_matches_sigma():
    # 2000 fields on a 9 x 9 patch: the 9 nodes per field are pixels; their std must be sigma.
    sigma = 7.0
    field = elastic_displacement(2000, (9, 9), grid=3, sigma_px=sigma, generator=_gen(1))
    node_values = field[:, ::4, ::4, :]
    assert node_values.std().item() == pytest.approx(sigma, rel=0.1)
    assert node_values.mean().abs().item() < 0.1 * sigma


def test_elastic_field_is_smooth():
    field = elastic_displacement(4, (257, 257), grid=3, sigma_px=10.0, generator=_gen(2))
    magnitude = field.abs().mean()
    second_y = (field[:, 2:] - 2 * field[:, 1:-1] + field[:, :-2]).abs()
    second_x = (field[:, :, 2:] - 2 * field[:, :, 1:-1] + field[:, :, :-2]).abs()
    assert second_y.mean() < 1e-3 * magnitude and second_x.mean() < 1e-3 * magnitude
    first_y = (field[:, 1:] - field[:, :-1]).abs().max()
    first_x = (field[:, :, 1:] - field[:, :, :-1]).abs().max()
    assert first_y < 1.0 and first_x < 1.0  # no jumps: under 1 px per px


def test_separable_interpolation_equals_torch_bicubic():
    nodes = torch.randn(3, 2, 4, 4, generator=_gen(8)) * 5.0
    reference = F.interpolate(nodes, size=(23, 37), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(_interpolate_nodes(nodes, (23, 37)), reference, rtol=0, atol=1e-5)


def test_elastic_zero_sigma_is_zero():
    assert elastic_displacement(2, (6, 7), sigma_px=0.0, generator=_gen(0)).abs().max() == 0


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"size": (1, 5)}, {"size": (5,)}, {"grid": 1}, {"sigma_px": -1.0}])
def test_elastic_bad_arguments_raise(kwargs):
    args = {"n": 1, "size": (5, 5), **kwargs}
    n, size = args.pop("n"), args.pop("size")
    with pytest.raises(ValueError):
        elastic_displacement(n, size, **args)


# ---- augment_batch ---------------------------------------------------------------------------
def _source_positions(config: AugmentConfig, h: int = 40, w: int = 56, n: int = 6, seed: int = 0):
    """Augment coordinate ramps: returns output pixel positions ``p`` and source positions ``q``,
    both ``(n, H, W, 2)`` px as (x, y); bilinear sampling reproduces a linear ramp exactly."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ramps = torch.stack([xs, ys])[None].repeat(n, 1, 1, 1)
    out, _, _ = augment_batch(ramps, torch.zeros(n, h, w, dtype=torch.long), config, generator=_gen(seed))
    return ramps.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)


def _fit_linear(p: torch.Tensor, q: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Least-squares 2x2 ``A`` with ``q - c = A (p - c)`` over the pixels of one sample."""
    a = (p - centre).reshape(-1, 2).double()
    b = (q - centre).reshape(-1, 2).double()
    return torch.linalg.lstsq(a, b).solution.T


def test_scale_zooms_about_the_centre():
    p, q = _source_positions(_config(scale_p=1.0, scale_range=(2.0, 2.0)))
    centre = torch.tensor([(56 - 1) / 2, (40 - 1) / 2])
    torch.testing.assert_close(q, centre + (p - centre) / 2.0, rtol=0, atol=1e-3)


def test_rotation_is_angle_true_on_non_square_patch():
    p, q = _source_positions(_config(rotate_p=1.0, rotate_deg=30.0))
    centre = torch.tensor([(56 - 1) / 2, (40 - 1) / 2])
    angles = []
    for i in range(p.shape[0]):
        # a rotation about the centre maps this disc onto itself: no reflected sources
        inside = (p[i] - centre).norm(dim=-1) < 19.0
        a = _fit_linear(p[i][inside], q[i][inside], centre)
        torch.testing.assert_close(a @ a.T, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-4)
        assert torch.linalg.det(a).item() == pytest.approx(1.0, abs=1e-4)
        angles.append(math.degrees(math.atan2(a[1, 0].item(), a[0, 0].item())))
    assert max(abs(x) for x in angles) <= 30.0 and len({round(x, 3) for x in angles}) == len(angles)


def test_rotation_scale_mirror_compose_into_one_map():
    config = _config(rotate_p=1.0, rotate_deg=20.0, scale_p=1.0, scale_range=(2.0, 2.0), mirror_p=1.0)
    p, q = _source_positions(config, seed=4)
    centre = torch.tensor([(56 - 1) / 2, (40 - 1) / 2])
    for i in range(p.shape[0]):
        a = _fit_linear(p[i], q[i], centre)  # zoom 2: every source lies inside
        torch.testing.assert_close(a @ a.T, torch.eye(2, dtype=torch.float64) / 4, rtol=0, atol=1e-4)
        assert torch.linalg.det(a).item() == pytest.approx(-0.25, abs=1e-4)  # mirrored
        residual = (q[i] - centre) - ((p[i] - centre).double() @ a.T).float()
        assert residual.abs().max() < 1e-3


def test_elastic_only_moves_pixels_by_a_smooth_field_of_sigma_scale():
    p, q = _source_positions(_config(elastic_p=1.0, elastic_sigma_px=3.0), h=64, w=64, n=8)
    shift = q - p
    inner = shift[:, 16:48, 16:48]  # sources there stay inside the patch
    assert 0.5 < inner.abs().mean() < 3.0 * 3.0
    assert (inner[:, 1:] - inner[:, :-1]).abs().max() < 0.5


def test_all_probabilities_zero_is_identity():
    gen = _gen(0)
    image = torch.randn(3, 2, 15, 11, generator=gen)
    label = torch.randint(0, 4, (3, 15, 11), generator=gen)
    weight = torch.rand(3, 15, 11, generator=gen)
    out_image, out_label, out_weight = augment_batch(image, label, _config(), weight=weight, generator=_gen(1))
    assert torch.equal(out_image, image) and torch.equal(out_label, label) and torch.equal(out_weight, weight)


def test_shapes_and_dtypes_preserved_odd_sizes():
    gen = _gen(3)
    image = torch.randn(5, 3, 31, 17, generator=gen)
    label = torch.randint(0, 3, (5, 31, 17), generator=gen)
    weight = torch.rand(5, 31, 17, generator=gen)
    config = AugmentConfig(elastic_p=1.0, rotate_p=1.0, scale_p=1.0, mirror_p=0.5, mirror_axes=("x", "y"),
                           gamma_p=1.0, noise_p=1.0, contrast_p=1.0, brightness_p=1.0)
    out_image, out_label, out_weight = augment_batch(image, label, config, weight=weight, generator=_gen(4))
    assert out_image.shape == image.shape and out_image.dtype == image.dtype
    assert out_label.shape == label.shape and out_label.dtype == label.dtype
    assert out_weight.shape == weight.shape and out_weight.dtype == weight.dtype
    assert set(out_label.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(out_image, image)
    _, _, no_weight = augment_batch(image, label, config, generator=_gen(4))
    assert no_weight is None


def test_image_and_label_stay_aligned():
    label = _blobs()
    image = label.float()[:, None]
    config = _config(elastic_p=1.0, rotate_p=1.0, scale_p=1.0, mirror_p=0.5, mirror_axes=("x", "y"))
    out_image, out_label, _ = augment_batch(image, label, config, generator=_gen(11))
    assert not torch.equal(out_label, label)  # something moved
    agree = out_image[:, 0].round().long() == out_label
    assert agree.float().mean() > 0.99
    # away from class borders (3 x 3 neighbourhood of one class) they agree (all but a pixel or two)
    lab = out_label[:, None].float()
    interior = (F.max_pool2d(lab, 3, 1, 1) == -F.max_pool2d(-lab, 3, 1, 1))[:, 0]
    assert agree[interior].float().mean() > 0.999


def test_weight_map_follows_label():
    label = _blobs(n=2, h=64, w=64)
    weight = 1.0 + 4.0 * (label == 2).float()
    config = _config(elastic_p=1.0, rotate_p=1.0, scale_p=1.0)
    _, out_label, out_weight = augment_batch(label.float()[:, None], label, config, weight=weight,
                                             generator=_gen(2))
    agree = (out_weight > 3.0) == (out_label == 2)
    assert agree.float().mean() > 0.98


def test_mirror_x_moves_left_blob_right_and_swaps_pair():
    label = torch.zeros(2, 10, 16, dtype=torch.long)
    label[:, 2:5, 1:5] = 1  # "left" class on the left
    label[:, 5:7, 11:15] = 2  # "right" class on the right
    label[:, 7:9, 6:10] = 3  # a midline class outside any pair
    image = torch.arange(2 * 10 * 16, dtype=torch.float32).view(2, 1, 10, 16)
    config = _config(mirror_p=1.0, mirror_axes=("x",), lr_label_pairs=((1, 2),))
    out_image, out_label, _ = augment_batch(image, label, config, generator=_gen(0))
    flipped = torch.flip(label, dims=[-1])
    expected = torch.where(flipped == 1, 2, torch.where(flipped == 2, 1, flipped))
    assert torch.equal(out_label, expected)
    assert (out_label[:, 2:5, 11:15] == 2).all() and (out_label[:, 5:7, 1:5] == 1).all()
    assert (out_label == 3).sum() == (label == 3).sum()
    torch.testing.assert_close(out_image, torch.flip(image, dims=[-1]), rtol=0, atol=1e-3)


def test_mirror_y_does_not_swap_pairs():
    label = torch.zeros(1, 8, 6, dtype=torch.long)
    label[0, 1:3, 1:3] = 1
    config = _config(mirror_p=1.0, mirror_axes=("y",), lr_label_pairs=((1, 2),))
    _, out_label, _ = augment_batch(label.float()[:, None], label, config, generator=_gen(0))
    assert torch.equal(out_label, torch.flip(label, dims=[-2]))


def test_reproducible_with_same_seed():
    label = _blobs(n=3, h=40, w=36)
    image = torch.randn(3, 1, 40, 36, generator=_gen(9))
    config = AugmentConfig(elastic_p=0.7, rotate_p=0.7, scale_p=0.7, mirror_p=0.5, gamma_p=0.7, noise_p=0.7,
                           contrast_p=0.7, brightness_p=0.7)
    first = augment_batch(image, label, config, generator=_gen(42))
    second = augment_batch(image, label, config, generator=_gen(42))
    third = augment_batch(image, label, config, generator=_gen(43))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])


def test_untouched_samples_pass_through_exactly():
    # p = 0.5: samples that draw no spatial transform keep their pixels bit for bit
    label = _blobs(n=8, h=24, w=24)
    image = label.float()[:, None] + 0.25
    out_image, out_label, _ = augment_batch(image, label, _config(rotate_p=0.5), generator=_gen(3))
    same = [torch.equal(out_image[i], image[i]) for i in range(8)]
    assert 0 < sum(same) < 8
    for i in range(8):
        if same[i]:
            assert torch.equal(out_label[i], label[i])


def test_intensity_transforms_hand_checked():
    image = torch.linspace(-1.0, 3.0, 2 * 4 * 5).view(2, 1, 4, 5)
    label = torch.zeros(2, 4, 5, dtype=torch.long)
    shifted, _, _ = augment_batch(image, label, _config(brightness_p=1.0, brightness_range=(0.3, 0.3)))
    torch.testing.assert_close(shifted, image + 0.3)
    scaled, _, _ = augment_batch(image, label, _config(contrast_p=1.0, contrast_range=(2.0, 2.0)))
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(scaled, (image - mean) * 2.0 + mean)
    gamma, _, _ = augment_batch(image, label, _config(gamma_p=1.0, gamma_range=(2.0, 2.0)))
    low = image.amin(dim=(1, 2, 3), keepdim=True)
    span = image.amax(dim=(1, 2, 3), keepdim=True) - low
    torch.testing.assert_close(gamma, ((image - low) / span) ** 2 * span + low)
    # gamma keeps each sample's min and max
    torch.testing.assert_close(gamma.amin(dim=(1, 2, 3)), image.amin(dim=(1, 2, 3)))
    big = torch.zeros(4, 1, 64, 64)
    noisy, _, _ = augment_batch(big, torch.zeros(4, 64, 64, dtype=torch.long),
                                _config(noise_p=1.0, noise_std=0.5), generator=_gen(0))
    assert noisy.std().item() == pytest.approx(0.5, rel=0.05)


def test_bad_batch_raises():
    image = torch.zeros(2, 1, 8, 8)
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    config = AugmentConfig()
    with pytest.raises(ValueError, match="image"):
        augment_batch(image[0], label, config)
    with pytest.raises(ValueError, match="label"):
        augment_batch(image, label[:, :4], config)
    with pytest.raises(ValueError, match="label"):
        augment_batch(image, label.float(), config)
    with pytest.raises(ValueError, match="weight"):
        augment_batch(image, label, config, weight=torch.ones(2, 8, 7))
    with pytest.raises(TypeError, match="config"):
        augment_batch(image, label, {"elastic_p": 1.0})


# ---- AugmentConfig ---------------------------------------------------------------------------
def test_config_round_trip_and_lists():
    config = AugmentConfig.from_dict({"scale_range": [0.9, 1.1], "mirror_p": 0.5, "mirror_axes": ["x", "y"],
                                      "lr_label_pairs": [[1, 2], [3, 4]]})
    assert config.scale_range == (0.9, 1.1) and config.lr_label_pairs == ((1, 2), (3, 4))
    assert AugmentConfig.from_dict(config.to_dict()) == config
    assert AugmentConfig.from_dict(None) == AugmentConfig()
    hash(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.elastic_p = 1.0


@pytest.mark.parametrize("key, value", [
    ("elastic_p", 1.5), ("noise_p", -0.1), ("gamma_p", "high"), ("elastic_grid", 1), ("elastic_sigma_px", -2.0),
    ("rotate_deg", 200.0), ("scale_range", (1.2, 0.8)), ("scale_range", (0.0, 1.0)), ("gamma_range", (1.0,)),
    ("contrast_range", (1.5, 0.5)), ("brightness_range", (0.1, -0.1)), ("mirror_axes", ("z",)),
    ("mirror_axes", ("x", "x")), ("lr_label_pairs", ((1, 1),)), ("lr_label_pairs", ((1, 2), (2, 3))),
    ("noise_std", math.inf),
])
def test_config_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        AugmentConfig.from_dict({key: value})


def test_config_unknown_key_raises():
    with pytest.raises(ValueError, match="elastic_alpha"):
        AugmentConfig.from_dict({"elastic_alpha": 3})


def test_organ_shift_moves_each_structure_by_its_own_hu_shift_in_z_units():
    image = torch.zeros(3, 2, 6, 7)
    label = torch.zeros(3, 6, 7, dtype=torch.long)
    label[:, :3, :3] = 1
    label[:, 4:, 4:] = 2
    out, lab, _ = augment_batch(image, label, _config(organ_shift_p=1.0, organ_shift_hu=(50.0, 50.0)),
                                generator=_gen(0), hu_per_unit=25.0)
    assert torch.equal(lab, label)
    assert torch.allclose(out[label.unsqueeze(1).expand_as(out) > 0], torch.tensor(2.0))  # 50 HU / 25 HU per unit
    assert torch.equal(out[label.unsqueeze(1).expand_as(out) == 0], torch.zeros(int((label == 0).sum()) * 2))
    # Random shifts: one per structure and sample, within the range, the same over a structure.
    out, _, _ = augment_batch(image, label, _config(organ_shift_p=1.0, organ_shift_hu=(-20.0, 60.0)),
                              generator=_gen(1), hu_per_unit=10.0)
    for i in range(3):
        for k in (1, 2):
            values = out[i, :, label[i] == k]
            assert values.unique().numel() == 1 and -2.0 <= float(values[0, 0]) <= 6.0
    assert out[0, 0, 0, 0] != out[0, 0, 5, 6] or out[0, 0, 0, 0] != out[1, 0, 0, 0]
    off, _, _ = augment_batch(image, label, _config(organ_shift_p=0.0), generator=_gen(1), hu_per_unit=10.0)
    assert torch.equal(off, image)
