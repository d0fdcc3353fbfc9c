"""The U-Net: output shapes for odd sizes, the paper's geometry and size, config validation."""

from __future__ import annotations

import pytest
import torch

from unet_pipeline.model.unet import UNet2d, UNetConfig, build_unet, count_parameters


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (1, 7), (64, 33)])
@pytest.mark.parametrize("depth", [2, 4])
def test_padded_output_has_input_size(size, depth):
    model = build_unet(UNetConfig(num_classes=3, in_channels=3, base_channels=4, depth=depth)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 3, *size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_paper_network_geometry_and_parameter_count():
    """Ronneberger et al. (2015), Fig. 1: 572 x 572 in, 388 x 388 out; 31,030,658 weights."""
    model = build_unet(UNetConfig(num_classes=2, base_channels=64, depth=4, padded=False, norm="none"))
    assert count_parameters(model) == 31_030_658
    assert model.output_size(572) == 388
    assert model.margin() == 92
    assert model.valid_input_size(570) == 572
    small = build_unet(UNetConfig(num_classes=2, base_channels=2, depth=4, padded=False, norm="none")).eval()
    with torch.no_grad():
        assert small(torch.zeros(1, 1, 572, 188 + 16)).shape == (1, 2, 388, 20)


def test_unpadded_rejects_invalid_size_with_a_readable_error():
    model = build_unet(UNetConfig(num_classes=2, base_channels=2, depth=2, padded=False))
    valid = model.valid_input_size(40)
    with pytest.raises(ValueError, match="invalid for the unpadded U-Net"):
        model(torch.zeros(1, 1, valid + 1, valid))
    assert model.output_size(valid) == valid - 2 * model.margin()
    assert model.valid_output_size(10) >= 10


def test_unpadded_output_is_the_centre_of_a_larger_input():
    """Overlap-tile: the output only depends on its receptive field, so a crop commutes with it."""
    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_classes=2, base_channels=2, depth=2, padded=False, norm="none")).eval()
    m = model.margin()
    big_in = model.valid_input_size(60)
    small_in = model.valid_input_size(big_in - 8)
    x = torch.randn(1, 1, big_in, big_in)
    with torch.no_grad():
        big = model(x)
        off = (big_in - small_in) // 2
        small = model(x[..., off:off + small_in, off:off + small_in])
    n = small.shape[-1]
    torch.testing.assert_close(big[..., off:off + n, off:off + n], small, atol=1e-5, rtol=1e-5)
    assert big.shape[-1] == big_in - 2 * m


def test_he_initialisation_scale():
    model = build_unet(UNetConfig(num_classes=2, base_channels=32, depth=2, norm="none"))
    conv = model.down[1][0]
    fan_in = conv.weight.shape[1] * 9
    assert abs(conv.weight.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5


@pytest.mark.parametrize("bad", [{"num_classes": 1}, {"num_classes": 3, "in_channels": 2},
                                 {"num_classes": 3, "norm": "layer"}, {"num_classes": 3, "upsample": "nearest"},
                                 {"num_classes": 3, "dropout": 1.0}, {"num_classes": 3, "depth": 0}])
def test_config_validation_names_the_option(bad):
    key = [k for k in bad if k != "num_classes"] or ["num_classes"]
    with pytest.raises(ValueError, match=key[0]):
        UNetConfig(**bad)


def test_config_round_trip_and_unknown_keys():
    cfg = UNetConfig(num_classes=5, in_channels=3, upsample="bilinear", dropout=0.1)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown U-Net option"):
        UNetConfig.from_dict({"num_classes": 2, "channels": 8})
    model = build_unet(cfg.to_dict())
    assert isinstance(model, UNet2d) and model(torch.zeros(1, 3, 20, 20)).shape == (1, 5, 20, 20)


def test_wrong_channel_count_is_an_error():
    model = build_unet(UNetConfig(num_classes=2, in_channels=3, base_channels=2, depth=1))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        model(torch.zeros(1, 1, 8, 8))


def test_instance_norm_is_torch_instance_norm_and_loads_its_weights():
    """Our instance norm (a group norm with a group per channel, which stays channels-last) computes
    what ``nn.InstanceNorm2d(affine=True)`` computes, and a state dict saved from a network built
    with ``nn.InstanceNorm2d`` (models trained before the change) loads and gives the same logits."""
    from torch import nn

    from unet_pipeline.model.unet import InstanceNorm

    torch.manual_seed(0)
    ours, ref = InstanceNorm(6), nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.uniform_(-1.0, 1.0)
    ours.load_state_dict(ref.state_dict())
    x = 3.0 * torch.randn(4, 6, 17, 23) + 5.0
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    cl = ours(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref(x), atol=1e-5, rtol=1e-5)

    config = UNetConfig(num_classes=3, base_channels=4, depth=2)
    model = build_unet(config).eval()
    old = build_unet(config).eval()
    for name, module in old.named_modules():  # the network as built before: torch's InstanceNorm2d
        for child_name, child in module.named_children():
            if isinstance(child, InstanceNorm):
                setattr(module, child_name, nn.InstanceNorm2d(child.num_channels, affine=True))
    with torch.no_grad():
        for p in old.parameters():
            p.normal_(0.0, 0.3)
    model.load_state_dict(old.state_dict())  # strict: the same keys and shapes
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), old(x), atol=1e-4, rtol=1e-4)
