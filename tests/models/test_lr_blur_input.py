"""Generators told their LR's blur (``lr_blur_input``): one more input channel, the skip and the exact
projection on the image channels, the projection only where the blur is 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.imaging import with_lr_blur
from hpc_sr.models.complexity import flops_per_image
from hpc_sr.models.ensemble import ModelEnsemble
from hpc_sr.models.layers import bicubic
from hpc_sr.models.registry import (
    GeneratorCommon,
    build_generator,
    generator_from_spec,
    generator_names,
    generator_spec,
)

SMALL = {"srresnet": {"channels": 8, "blocks": 1}, "edsr": {"channels": 8, "blocks": 1},
         "rcan": {"channels": 8, "groups": 1, "blocks": 1, "reduction": 4},
         "rrdb": {"channels": 8, "blocks": 1, "growth": 8},
         "swinir": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4}}  # fmt: skip


def _randomize(g: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("arch", generator_names())
def test_every_arch_takes_the_blur_and_projects_only_block_means(arch: str) -> None:
    g = build_generator(arch, SMALL.get(arch), 2, GeneratorCommon(lr_blur_input=True, lr_consistent=True))
    lr = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    blur = torch.tensor([0.0, 1.5, 4.0])
    _randomize(g)
    sr = g(with_lr_blur(lr, blur))
    assert sr.shape == (3, 1, 24, 24)
    residual = (F.avg_pool2d(sr, 2) - lr).abs().flatten(1).amax(1)
    assert residual[0] < 1e-5 and (residual[1:] > 1e-3).all()  # exact where LR is a mean, free elsewhere
    # the blur changes the output: the network reads it
    assert (g(with_lr_blur(lr, blur + 1.0))[1:] - sr[1:]).abs().max() > 1e-5
    with pytest.raises(ValueError, match="LR-blur channel"):
        g(lr)


def test_untrained_generator_is_bicubic_of_the_image_channels() -> None:
    g = build_generator("srresnet", SMALL["srresnet"], 2, GeneratorCommon(lr_blur_input=True))
    lr = torch.rand(2, 1, 10, 10)
    torch.testing.assert_close(g(with_lr_blur(lr, torch.tensor([0.0, 3.0]))), bicubic(lr, 2))


def test_a_plain_generator_names_the_channels_it_takes() -> None:
    g = build_generator("srresnet", SMALL["srresnet"], 2, GeneratorCommon())
    with pytest.raises(ValueError, match=r"with 1 channel\(s\), got shape \(2, 2, 10, 10\)"):
        g(with_lr_blur(torch.rand(2, 1, 10, 10), 0.0))


def test_spec_records_the_input_only_when_on() -> None:
    plain = generator_spec({"arch": "rrdb", "options": SMALL["rrdb"]})
    told = generator_spec({"arch": "rrdb", "options": SMALL["rrdb"], "lr_blur_input": True})
    assert "lr_blur_input" not in plain and told["lr_blur_input"] is True
    g = generator_from_spec(told, 2)
    assert g.lr_blur_input and g.input_channels == 2 and g.net_in_channels == 2
    assert flops_per_image(g, (8, 8)) > 0  # the complexity probe feeds it two channels


def test_centred_stochastic_generator_with_the_blur() -> None:
    common = GeneratorCommon(lr_blur_input=True, noise_channels=1, noise_centred=True, lr_consistent=True)
    g = build_generator("srresnet", SMALL["srresnet"], 2, common)
    _randomize(g)
    x = with_lr_blur(torch.rand(2, 1, 8, 8), torch.tensor([0.0, 2.0]))
    z = torch.randn(2, 1, 8, 8)
    pair = g(x, z, pair=True)
    torch.testing.assert_close(pair[:2], g(x, z))
    torch.testing.assert_close(pair[2:], g(x, -z))
    samples = g.antithetic_pairs(x, z[None])
    torch.testing.assert_close(samples[0], g(x, z))
    assert (F.avg_pool2d(samples[:, 0], 2) - x[:1, :1]).abs().max() < 1e-5  # block-mean image stays exact


def test_ensemble_members_must_agree_on_the_input() -> None:
    told = build_generator("srresnet", SMALL["srresnet"], 2, GeneratorCommon(lr_blur_input=True))
    plain = build_generator("srresnet", SMALL["srresnet"], 2, GeneratorCommon())
    assert ModelEnsemble([told, told]).lr_blur_input is True
    with pytest.raises(ValueError, match="LR-blur input"):
        ModelEnsemble([told, plain])
