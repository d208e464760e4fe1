"""RCAN: shapes, bicubic skip, LR consistency, channel attention, closed-form counts, training, registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hpc_sr.config import ConfigError
from hpc_sr.models.complexity import count_parameters, flops_per_image
from hpc_sr.models.rcan import RCAN, ChannelAttention, RCANOptions
from hpc_sr.models.registry import GeneratorCommon, build_generator, generator_names

TINY = dataclasses.asdict(RCANOptions.tiny())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _tiny(scale: int, **common: bool) -> RCAN:
    return RCAN(RCANOptions.tiny(), scale, GeneratorCommon(**common))


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _rcan_params(o: RCANOptions, scale: int, ci: int = 1) -> int:
    """Head; per group: RCABs (2 convs + attention down/up) and a conv; body conv; x2 stages; tail."""
    c, q = o.channels, max(1, o.channels // o.reduction)
    rcab = 2 * _conv(c, c, 3) + _conv(c, q, 1) + _conv(q, c, 1)
    group = o.blocks * rcab + _conv(c, c, 3)
    stages = scale.bit_length() - 1
    return _conv(ci, c, 3) + o.groups * group + _conv(c, c, 3) + stages * _conv(c, 4 * c, 3) + _conv(c, ci, 3)


def _rcan_flops(o: RCANOptions, scale: int, h: int, w: int, ci: int = 1) -> tuple[int, int]:
    """(per-pixel part, constant part): the attention convs act on one pooled pixel per image."""
    c, q, lr = o.channels, max(1, o.channels // o.reduction), h * w
    convs3 = o.groups * (2 * o.blocks + 1) + 1
    macs = lr * (9 * ci * c + convs3 * 9 * c * c)
    macs += sum(lr * 4**i * 9 * c * 4 * c for i in range(scale.bit_length() - 1))
    macs += lr * scale * scale * 9 * c * ci
    return 2 * macs, 2 * o.groups * o.blocks * 2 * c * q


@pytest.mark.parametrize("scale", [2, 4])
def test_parameter_count_closed_form(scale: int) -> None:
    n = count_parameters(_tiny(scale))
    assert n == _rcan_params(RCANOptions.tiny(), scale)
    assert n < 5000
    full = RCAN(RCANOptions(), scale, GeneratorCommon())
    assert count_parameters(full) == _rcan_params(RCANOptions(), scale)
    assert 15.0e6 < count_parameters(full) < 16.0e6  # the paper: ~15.6 M at x4


@pytest.mark.parametrize("scale", [2, 4])
def test_flops_closed_form_and_scaling_with_pixels(scale: int) -> None:
    o = RCANOptions.tiny()
    g = _tiny(scale)
    small, big = flops_per_image(g, (6, 5)), flops_per_image(g, (12, 10))
    per_pixel, const = _rcan_flops(o, scale, 6, 5)
    assert const > 0
    assert small == per_pixel + const
    assert big == 4 * per_pixel + const  # 4x pixels -> 4x the conv FLOPs; the pooled attention is fixed


def test_channel_attention_scales_each_channel_by_a_gate_in_0_1() -> None:
    ca = ChannelAttention(6, 2)
    x = (torch.rand(3, 6, 5, 7) + 0.1) * torch.tensor([1.0, 8.0, 0.5]).view(3, 1, 1, 1)
    gate = ca(x) / x
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-6)  # one weight per channel
    assert ((gate > 0) & (gate < 1)).all()
    assert gate[0].flatten(1)[:, 0].std() > 0  # channels get different weights
    assert not torch.allclose(gate[0], gate[1], atol=1e-4)  # and they depend on the image


def test_squeeze_keeps_at_least_one_channel() -> None:
    o = RCANOptions(channels=4, groups=1, blocks=1, reduction=16)
    assert o.squeeze == 1
    g = RCAN(o, 2, GeneratorCommon(bicubic_skip=False))
    down = g.body[0].body[0].body[3].gate[1]
    assert (down.in_channels, down.out_channels) == (4, 1)
    assert g(torch.rand(1, 1, 5, 5)).shape == (1, 1, 10, 10)
    assert RCANOptions().squeeze == 4
    with pytest.raises(ValueError, match="reduction=0"):
        RCANOptions(reduction=0)


def test_build_through_registry() -> None:
    assert "rcan" in generator_names()
    g = build_generator("rcan", {**TINY, "groups": 3}, 4, GeneratorCommon(bicubic_skip=False))
    assert isinstance(g, RCAN) and g.scale == 4 and not g.bicubic_skip
    assert len(g.body) == 3 + 1
    assert count_parameters(g) == _rcan_params(RCANOptions(**{**TINY, "groups": 3}), 4)


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.g\.options\.reduce.*did you mean 'reduction'"):
        build_generator("rcan", {"reduce": 4}, 2)
    with pytest.raises(ConfigError, match=r"model\.g\.options.*groups=-2"):
        build_generator("rcan", {"groups": -2}, 2)
    with pytest.raises(ConfigError, match=r"model\.g\.options\.res_scale"):
        build_generator("rcan", {"res_scale": True}, 2)
