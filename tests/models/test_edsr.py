"""EDSR: shapes, bicubic skip, LR consistency, closed-form parameter/FLOP counts, training, registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hpc_sr.config import ConfigError
from hpc_sr.models.complexity import count_parameters, flops_per_image
from hpc_sr.models.edsr import EDSR, EDSROptions
from hpc_sr.models.registry import GeneratorCommon, build_generator, generator_names

TINY = dataclasses.asdict(EDSROptions.tiny())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _tiny(scale: int, **common: bool) -> EDSR:
    return EDSR(EDSROptions.tiny(), scale, GeneratorCommon(**common))


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _edsr_params(c: int, blocks: int, scale: int, ci: int = 1) -> int:
    """Head, 2 convs per block, the body's closing conv, conv to 4c per x2 stage, tail."""
    stages = scale.bit_length() - 1
    return _conv(ci, c, 3) + (2 * blocks + 1) * _conv(c, c, 3) + stages * _conv(c, 4 * c, 3) + _conv(c, ci, 3)


def _edsr_flops(c: int, blocks: int, scale: int, h: int, w: int, ci: int = 1) -> int:
    """2 x multiply-adds: head and body at LR pixels, x2 stage i at 4**i LR pixels, tail at HR pixels."""
    lr = h * w
    macs = lr * (9 * ci * c + (2 * blocks + 1) * 9 * c * c)
    macs += sum(lr * 4**i * 9 * c * 4 * c for i in range(scale.bit_length() - 1))
    macs += lr * scale * scale * 9 * c * ci
    return 2 * macs


@pytest.mark.parametrize("scale", [2, 4])
def test_parameter_count_closed_form(scale: int) -> None:
    o = EDSROptions.tiny()
    n = count_parameters(_tiny(scale))
    assert n == _edsr_params(o.channels, o.blocks, scale)
    assert n < 5000
    full = EDSR(EDSROptions(), scale, GeneratorCommon())
    assert count_parameters(full) == _edsr_params(64, 16, scale)
    assert 1.3e6 < count_parameters(full) < 1.6e6  # the paper's baseline: ~1.5 M at x4


@pytest.mark.parametrize("scale", [2, 4])
def test_flops_closed_form_and_proportional_to_pixels(scale: int) -> None:
    o = EDSROptions.tiny()
    g = _tiny(scale)
    small, big = flops_per_image(g, (6, 5)), flops_per_image(g, (12, 10))
    assert small == _edsr_flops(o.channels, o.blocks, scale, 6, 5)
    assert big == 4 * small


def test_structure_no_batchnorm_linear_upsampler_res_scale() -> None:
    g = EDSR(EDSROptions(channels=4, blocks=3, res_scale=0.1), 4, GeneratorCommon())
    assert not any(isinstance(m, nn.BatchNorm2d | nn.PReLU) for m in g.modules())
    assert [type(m) for m in g.upsample] == [nn.Conv2d, nn.PixelShuffle] * 2
    assert [b.res_scale for b in g.body[:-1]] == [0.1] * 3
    assert EDSROptions().res_scale == 1.0


def test_build_through_registry() -> None:
    assert "edsr" in generator_names()
    g = build_generator("edsr", {**TINY, "res_scale": 1}, 4, GeneratorCommon(bicubic_skip=False))
    assert isinstance(g, EDSR) and g.scale == 4 and not g.bicubic_skip
    assert g.body[0].res_scale == 1.0 and isinstance(g.body[0].res_scale, float)
    assert count_parameters(g) == _edsr_params(TINY["channels"], TINY["blocks"], 4)


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.g\.options\.chanels.*did you mean 'channels'"):
        build_generator("edsr", {"chanels": 4}, 2)
    with pytest.raises(ConfigError, match=r"model\.g\.options.*blocks=-1"):
        build_generator("edsr", {"blocks": -1}, 2)
    with pytest.raises(ConfigError, match=r"model\.g\.options\.channels"):
        build_generator("edsr", {"channels": "many"}, 2)
    with pytest.raises(ValueError, match="scale=3"):
        build_generator("edsr", TINY, 3)
