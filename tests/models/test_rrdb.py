"""RRDBNet (ESRGAN): shapes, the bicubic skip, LR consistency, parameter counts, training, the registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hpc_sr.config import ConfigError
from hpc_sr.models.complexity import count_parameters
from hpc_sr.models.registry import GeneratorCommon, build_generator, generator_names
from hpc_sr.models.rrdb import RRDBNet, RRDBOptions


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(scale: int = 2, **common: bool) -> RRDBNet:
    g = build_generator("rrdb", dataclasses.asdict(RRDBOptions.tiny()), scale, GeneratorCommon(**common))
    assert isinstance(g, RRDBNet)
    return g


def closed_form_parameters(c: int, blocks: int, growth: int, cin: int, scale: int) -> int:
    """Weights + biases of every conv, counted by hand from the architecture."""

    def conv3(i: int, o: int) -> int:
        return 9 * i * o + o

    rdb = sum(conv3(c + k * growth, growth) for k in range(4)) + conv3(c + 4 * growth, c)
    stages = scale.bit_length() - 1
    return conv3(cin, c) + blocks * 3 * rdb + conv3(c, c) + stages * conv3(c, c) + conv3(c, c) + conv3(c, cin)


@pytest.mark.parametrize(
    ("opts", "cin", "scale"),
    [
        (RRDBOptions.tiny(), 1, 2),
        (RRDBOptions.tiny(), 1, 4),
        (RRDBOptions(channels=5, blocks=2, growth=3), 2, 4),
    ],
)
def test_parameter_count_matches_closed_form(opts: RRDBOptions, cin: int, scale: int) -> None:
    g = RRDBNet(opts, scale, GeneratorCommon(in_channels=cin))
    assert count_parameters(g) == closed_form_parameters(opts.channels, opts.blocks, opts.growth, cin, scale)
    if opts == RRDBOptions.tiny():
        assert count_parameters(g) < 5000


def test_default_options_are_esrgans_16_7m_parameters() -> None:
    g = build_generator("rrdb", {}, 4, GeneratorCommon(in_channels=3))
    assert count_parameters(g) == 16_697_987  # ESRGAN's RRDB_ESRGAN_x4 (RGB)
    assert count_parameters(g) == closed_form_parameters(64, 23, 32, 3, 4)


def test_registry_builds_by_name_and_names_bad_options() -> None:
    assert "rrdb" in generator_names()
    g = build_generator("rrdb", {"channels": 6, "blocks": 2, "growth": 4}, 4, GeneratorCommon())
    assert isinstance(g, RRDBNet) and len(g.body) == 2 and g.head.out_channels == 6
    with pytest.raises(ConfigError, match=r"model\.g\.options\.grwoth.*growth"):
        build_generator("rrdb", {"grwoth": 4}, 2)
    with pytest.raises(ConfigError, match="growth=0"):
        build_generator("rrdb", {"growth": 0}, 2)
    with pytest.raises(ValueError, match="scale=3"):
        build_generator("rrdb", {}, 3)
