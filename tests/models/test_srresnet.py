"""SRResNet: shapes, the bicubic skip, LR consistency, options via the registry, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpc_sr.config import ConfigError, load_config
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.models.complexity import count_parameters, flops_per_image
from hpc_sr.models.registry import GeneratorCommon, build_generator
from hpc_sr.models.srresnet import SRResNet, SRResNetOptions
from hpc_sr.train.components import build_generator as generator_from_config


def Generator(  # noqa: N802 - reads like the class it builds
    channels: int = 64,
    blocks: int = 16,
    scale: int = 2,
    batch_norm: bool = False,
    res_scale: float = 0.1,
    bicubic_skip: bool = True,
    lr_consistent: bool = False,
) -> SRResNet:
    return SRResNet(
        SRResNetOptions(channels, blocks, batch_norm, res_scale),
        scale,
        GeneratorCommon(bicubic_skip=bicubic_skip, lr_consistent=lr_consistent),
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_plain_srresnet_is_not_bicubic_and_trains() -> None:
    g = Generator(channels=8, blocks=2, bicubic_skip=False)
    lr = torch.rand(2, 1, 10, 10)
    out = g(lr)
    assert not torch.allclose(out, bicubic_upscale(lr, 2), atol=1e-3)
    out.square().mean().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_bicubic_skip_generator_learns_from_step_one() -> None:
    """The zero tail gets a gradient at once; after one step the whole network does."""
    g = Generator(channels=8, blocks=2, bicubic_skip=True)
    lr, hr = torch.rand(2, 1, 10, 10), torch.rand(2, 1, 20, 20)
    for _ in range(2):
        g.zero_grad()
        (g(lr) - hr).abs().mean().backward()
        assert g.tail.weight.grad is not None and g.tail.weight.grad.abs().sum() > 0
        with torch.no_grad():  # one plain SGD step
            for p in g.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    assert g.head[0].weight.grad is not None and g.head[0].weight.grad.abs().sum() > 0


def test_unsupported_scale_names_the_value() -> None:
    with pytest.raises(ValueError, match="scale=3"):
        Generator(scale=3)


def test_batch_norm_option() -> None:
    with_bn = Generator(channels=8, blocks=3, batch_norm=True)
    without = Generator(channels=8, blocks=3, batch_norm=False)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert n_bn == 2 * 3 + 1  # two per block and one after the trunk conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    with_bn.train()
    assert with_bn(torch.rand(2, 1, 9, 9)).shape == (2, 1, 18, 18)
    with_bn.eval()
    assert with_bn(torch.rand(1, 1, 9, 9)).shape == (1, 1, 18, 18)


def test_generator_from_config() -> None:
    cfg = load_config(
        None,
        [
            "model.g.options={channels: 8, blocks: 3, batch_norm: true, res_scale: 0.2}",
            "model.g.bicubic_skip=false",
        ],
    )
    g = generator_from_config(cfg.model, scale=4)
    assert isinstance(g, SRResNet) and g.scale == 4 and not g.bicubic_skip
    assert len(g.body) == 3 and g.body[0].res_scale == 0.2
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())


def test_registry_names_unknown_option_and_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"model\.g\.options\.chanels; did you mean 'channels'"):
        build_generator("srresnet", {"chanels": 8}, 2)
    with pytest.raises(ConfigError, match=r"model\.g\.options\.blocks: expected an integer"):
        build_generator("srresnet", {"blocks": "many"}, 2)
    with pytest.raises(
        ConfigError, match=r"model\.g\.arch: unknown arch 'srresnt' \(did you mean 'srresnet'"
    ):
        build_generator("srresnt", {}, 2)


def _srresnet_params(c: int, blocks: int, scale: int) -> int:
    """Parameter count written out from the architecture description."""
    head = 1 * c * 81 + c + c  # 9x9 conv + PReLU
    block = 2 * (c * c * 9 + c) + c  # two 3x3 convs + PReLU
    trunk = c * c * 9 + c
    up = (c * 4 * c * 9 + 4 * c + c) * (2 if scale == 4 else 1)  # conv to 4c + PReLU per x2 stage
    tail = c * 81 + 1
    return head + blocks * block + trunk + up + tail


@pytest.mark.parametrize("scale", [2, 4])
def test_parameter_count(scale: int) -> None:
    g = Generator(scale=scale)
    n = count_parameters(g)
    assert n == _srresnet_params(64, 16, scale)
    assert 1.0e6 < n < 2.0e6  # SRResNet is ~1.5 M parameters


def test_flops_generator_exact_and_scales_with_pixels() -> None:
    c, b = 8, 2
    g = Generator(channels=c, blocks=b, scale=2)
    g.train()
    h, w = 10, 6
    per_lr_pixel = 81 * c + (2 * b + 1) * 9 * c * c + 9 * c * 4 * c  # head, body + trunk, upsample conv
    per_hr_pixel = 81 * c  # tail
    expected = 2 * (h * w * per_lr_pixel + 4 * h * w * per_hr_pixel)
    assert flops_per_image(g, (h, w)) == expected
    assert flops_per_image(g, (2 * h, 2 * w)) == 4 * expected
    assert g.training  # mode restored
