"""U-Net D: per-pixel logits for any size, spectral norm, feature maps, gradients, counts, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hpc_sr.config import ConfigError
from hpc_sr.models.complexity import count_parameters, flops_per_image
from hpc_sr.models.registry import build_discriminator, discriminator_names
from hpc_sr.models.unet_discriminator import UNetDiscriminator, UNetDiscriminatorOptions
from tests.models.models_util import assert_unit_spectral_norm


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _unet_params(c: int, ci: int = 1) -> int:
    """conv_in (bias), 8 bias-free 3x3 convs (down 2c,4c,8c; up 4c,2c,c; extra c,c), conv_out (bias)."""
    down = [(c, 2 * c), (2 * c, 4 * c), (4 * c, 8 * c)]
    inner = down + [(8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c), (c, c), (c, c)]
    return (ci * c * 9 + c) + sum(9 * a * b for a, b in inner) + (c * 9 + 1)


def _up(n: int, times: int) -> int:
    for _ in range(times):
        n = -(-n // 2)
    return n


@pytest.mark.parametrize("size", [(16, 16), (13, 11), (1, 1), (3, 7)])
def test_per_pixel_logits_any_size(size: tuple[int, int]) -> None:
    d = UNetDiscriminator.tiny().eval()  # eval: no power iteration, so two passes agree exactly
    x = torch.rand(2, 1, *size)
    logits, feats = d.forward_features(x)
    assert logits.shape == x.shape
    assert torch.equal(logits, d(x))
    c = UNetDiscriminatorOptions.tiny().channels
    expected = [(4 * c, _up(size[0], 2), _up(size[1], 2)), (2 * c, _up(size[0], 1), _up(size[1], 1))]
    expected += [(c, *size)] * 3
    assert [tuple(f.shape[1:]) for f in feats] == expected
    assert all(f.shape[0] == 2 for f in feats)


def test_three_channel_input() -> None:
    d = UNetDiscriminator.tiny(in_channels=3)
    assert d(torch.rand(1, 3, 9, 10)).shape == (1, 1, 9, 10)
    assert count_parameters(d) == _unet_params(2, ci=3)


def test_spectral_norm_on_inner_convs_only_when_enabled() -> None:
    d = UNetDiscriminator(UNetDiscriminatorOptions(channels=2, spectral_norm=True))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10
    inner = [m for m in convs if m is not d.conv_in and m is not d.conv_out]
    assert all(parametrize.is_parametrized(m, "weight") and m.bias is None for m in inner)
    assert not parametrize.is_parametrized(d.conv_in) and not parametrize.is_parametrized(d.conv_out)
    assert_unit_spectral_norm(d, inner, torch.rand(2, 1, 16, 16), iterations=20)
    plain = UNetDiscriminator(UNetDiscriminatorOptions(channels=2, spectral_norm=False))
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert count_parameters(plain) == count_parameters(d) == _unet_params(2)


def test_skip_connections_option_changes_output_not_parameters() -> None:
    on = UNetDiscriminator(UNetDiscriminatorOptions(channels=2, spectral_norm=False))
    off = UNetDiscriminator(UNetDiscriminatorOptions(channels=2, spectral_norm=False, skip_connections=False))
    off.load_state_dict(on.state_dict())
    x = torch.rand(2, 1, 13, 11)
    assert off(x).shape == on(x).shape
    assert not torch.allclose(off(x), on(x), atol=1e-5)


def test_gradients_reach_input_and_every_parameter() -> None:
    d = UNetDiscriminator.tiny()
    x = torch.rand(2, 1, 13, 11, requires_grad=True)
    logits, feats = d.forward_features(x)
    (logits.mean() + sum(f.square().mean() for f in feats)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


def test_logit_of_an_image_is_its_own() -> None:
    d = UNetDiscriminator.tiny().eval()
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(d(x)[:2], d(x[:2]))


def test_parameter_count_closed_form() -> None:
    assert count_parameters(UNetDiscriminator.tiny()) == _unet_params(2) < 5000
    full = UNetDiscriminator(UNetDiscriminatorOptions())
    assert count_parameters(full) == _unet_params(64)


def test_flops_proportional_to_pixels() -> None:
    d = UNetDiscriminator.tiny()
    small, big = flops_per_image(d, (16, 8)), flops_per_image(d, (32, 16))
    c, px = 2, 16 * 8
    full_res = 9 * (1 * c + 2 * c * c + 2 * c * c + c * 1)  # conv_in, up to c, the two extra convs, conv_out
    expected = px * full_res + px // 4 * 9 * (c * 2 * c + 4 * c * 2 * c)  # at H/2: down to 2c, up to 2c
    expected += px // 16 * 9 * (2 * c * 4 * c + 8 * c * 4 * c)  # at H/4: down to 4c, up to 4c
    expected += px // 64 * 9 * 4 * c * 8 * c  # at H/8: down to 8c
    assert small == 2 * expected
    assert big == 4 * small


def test_build_through_registry() -> None:
    assert "unet" in discriminator_names()
    d = build_discriminator("unet", {"channels": 2, "skip_connections": False})
    assert isinstance(d, UNetDiscriminator) and not d.skip_connections
    assert d(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"model\.d\.options\.spectral.*did you mean 'spectral_norm'"):
        build_discriminator("unet", {"spectral": False})
    with pytest.raises(ConfigError, match=r"model\.d\.options.*channels=0"):
        build_discriminator("unet", {"channels": 0})
    with pytest.raises(ConfigError, match=r"model\.d\.options\.spectral_norm"):
        build_discriminator("unet", {"spectral_norm": "yes"})
