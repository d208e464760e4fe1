"""SRGAN discriminator: any input size, no BatchNorm, spectral norm, FLOPs, built from the config."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hpc_sr.config import load_config
from hpc_sr.models.complexity import count_parameters, flops_per_image
from hpc_sr.models.srgan_discriminator import SRGANDiscriminator, SRGANDiscriminatorOptions
from hpc_sr.train.components import build_discriminator
from tests.models.models_util import assert_unit_spectral_norm


def Discriminator(channels: int = 64, blocks: int = 4, spectral_norm: bool = False) -> SRGANDiscriminator:  # noqa: N802
    return SRGANDiscriminator(SRGANDiscriminatorOptions(channels, blocks, spectral_norm))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_parameter_count_is_srgan_sized() -> None:
    assert 1.0e6 < count_parameters(Discriminator()) < 1.0e7


@pytest.mark.parametrize("size", [(16, 16), (33, 47), (150, 150), (5, 7)])
def test_discriminator_any_input_size(size: tuple[int, int]) -> None:
    d = Discriminator(channels=8, blocks=4)
    x = torch.rand(3, 1, *size)
    logits, feats = d.forward_features(x)
    assert logits.shape == (3,)
    assert len(feats) == 4 + 1
    assert feats[-1].shape[1] == 8 * 2**3
    assert torch.equal(logits, d(x))


def test_discriminator_has_no_batchnorm_and_is_per_image() -> None:
    d = Discriminator(channels=8, blocks=2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    x = torch.rand(4, 1, 24, 24)
    torch.testing.assert_close(d(x)[:2], d(x[:2]))  # no batch statistics: an image's logit is its own


def test_spectral_norm_option() -> None:
    d = Discriminator(channels=8, blocks=2, spectral_norm=True)
    layers = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in Discriminator(channels=8, blocks=2).modules())
    x = torch.rand(2, 1, 16, 16)
    assert_unit_spectral_norm(d, layers, x, iterations=30)
    real, fake = d(x), d(torch.rand(2, 1, 20, 20))  # two passes (real, fake), one backward
    (fake.mean() - real.mean()).backward()
    assert all(p.grad is not None for p in d.parameters())
    cfg = load_config(None, ["model.d.options={channels: 8, blocks: 2, spectral_norm: true}"])
    d_cfg = build_discriminator(cfg.model)
    assert parametrize.is_parametrized(d_cfg.stages[0][0], "weight")
    assert d_cfg.stages[-1][2].out_channels == 16


def test_flops_discriminator_positive_and_scales() -> None:
    d = Discriminator(channels=8, blocks=3)
    f32, f64 = flops_per_image(d, (32, 32)), flops_per_image(d, (64, 64))
    assert f32 > 0
    assert f64 / f32 == pytest.approx(4.0, rel=0.05)
