"""Generator / discriminator shapes, the bicubic skip, options, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hpc_sr.config import ModelConfig
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.models.srgan import Discriminator, Generator, count_parameters, flops_per_image


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(7, 9), (13, 5)])
@pytest.mark.parametrize("bicubic_skip", [True, False])
def test_generator_shapes_odd_sizes(scale: int, size: tuple[int, int], bicubic_skip: bool) -> None:
    g = Generator(channels=8, blocks=2, scale=scale, bicubic_skip=bicubic_skip)
    out = g(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, scale * size[0], scale * size[1])


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_untrained_generator_equals_bicubic_exactly(scale: int, batch_norm: bool) -> None:
    g = Generator(channels=8, blocks=2, scale=scale, batch_norm=batch_norm, bicubic_skip=True)
    lr = torch.rand(3, 1, 11, 8)
    assert torch.equal(g(lr), bicubic_upscale(lr, scale))


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
    cfg = ModelConfig(channels=8, blocks=3, batch_norm=True, res_scale=0.2, bicubic_skip=False)
    g = Generator.from_config(cfg, scale=4)
    assert g.scale == 4 and not g.bicubic_skip
    assert len(g.body) == 3 and g.body[0].res_scale == 0.2
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())


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
    d = Discriminator()
    assert 1.0e6 < count_parameters(d) < 1.0e7


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
    d.train()
    x = torch.rand(2, 1, 16, 16)
    for _ in range(30):  # power iterations converge
        d(x)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)
    real, fake = d(x), d(torch.rand(2, 1, 20, 20))  # two passes (real, fake), one backward
    (fake.mean() - real.mean()).backward()
    assert all(p.grad is not None for p in d.parameters())
    d_cfg = Discriminator.from_config(ModelConfig(d_channels=8, d_blocks=2, d_spectral_norm=True))
    assert parametrize.is_parametrized(d_cfg.stages[0][0], "weight")
    assert d_cfg.stages[-1][2].out_channels == 16


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


def test_flops_discriminator_positive_and_scales() -> None:
    d = Discriminator(channels=8, blocks=3)
    f32, f64 = flops_per_image(d, (32, 32)), flops_per_image(d, (64, 64))
    assert f32 > 0
    assert f64 / f32 == pytest.approx(4.0, rel=0.05)
