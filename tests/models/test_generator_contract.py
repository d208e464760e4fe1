"""The contract every registered generator keeps, checked for each arch of the zoo (a new arch file is
covered without a new test): any LR size and x2/x4, untrained output equal to bicubic with the skip, exact LR
consistency when asked, and a training step that lowers the loss. Arch-specific checks (closed-form
parameter and FLOP counts, attention masks, options) stay in each arch's own test file."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.models.layers import bicubic
from hpc_sr.models.registry import GENERATORS, GeneratorCommon, build_generator, generator_names

# every arch at its tiny() size, plus the variants whose forward takes another path
EXTRA_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("srresnet", {"batch_norm": True}),
    ("swinir", {"upsampler": "pixelshuffle", "upsample_features": 8}),
]
VARIANTS = [(arch, {}) for arch in generator_names()] + EXTRA_VARIANTS
IDS = [arch + "".join(f"-{k}={v}" for k, v in extra.items()) for arch, extra in VARIANTS]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make(arch: str, extra: dict[str, Any], scale: int, **common: bool) -> torch.nn.Module:
    options = {**dataclasses.asdict(GENERATORS[arch].options.tiny()), **extra}
    return build_generator(arch, options, scale, GeneratorCommon(**common))


def test_every_arch_is_covered() -> None:
    assert {"srresnet", "edsr", "rcan", "rrdb", "swinir"} <= set(generator_names())


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(7, 9), (3, 2), (1, 1)])
@pytest.mark.parametrize("skip", [True, False])
def test_any_size_gives_scale_times_the_input(
    arch: str, extra: dict[str, Any], scale: int, size: tuple[int, int], skip: bool
) -> None:
    out = make(arch, extra, scale, bicubic_skip=skip)(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, scale * size[0], scale * size[1])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("scale", [2, 4])
def test_untrained_equals_bicubic_exactly_and_differs_without_skip(
    arch: str, extra: dict[str, Any], scale: int
) -> None:
    lr = torch.rand(3, 1, 7, 9)
    assert torch.equal(make(arch, extra, scale, bicubic_skip=True)(lr), bicubic(lr, scale))
    plain = make(arch, extra, scale, bicubic_skip=False)(lr)
    assert not torch.allclose(plain, bicubic(lr, scale), atol=1e-3)


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("skip", [True, False])
def test_lr_consistent_output_pools_back_to_the_input(
    arch: str, extra: dict[str, Any], scale: int, skip: bool
) -> None:
    g = make(arch, extra, scale, bicubic_skip=skip, lr_consistent=True)
    lr = torch.rand(2, 1, 7, 9)
    torch.testing.assert_close(F.avg_pool2d(g(lr), scale), lr, atol=1e-6, rtol=0)
    free = make(arch, extra, scale, bicubic_skip=skip, lr_consistent=False)
    free.load_state_dict(g.state_dict())
    assert (F.avg_pool2d(free(lr), scale) - lr).abs().max() > 1e-4  # the projection did the work


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("skip", [True, False])
def test_one_adam_step_lowers_the_mse(arch: str, extra: dict[str, Any], skip: bool) -> None:
    g = make(arch, extra, 2, bicubic_skip=skip)
    lr, hr = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 16, 16)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    before = F.mse_loss(g(lr), hr)
    before.backward()
    opt.step()
    with torch.no_grad():
        assert F.mse_loss(g(lr), hr) < before.item()


def test_the_skip_is_the_metrics_bicubic_without_align_corners() -> None:
    """The generators' skip is the same bicubic as the baseline every metric compares against."""
    lr = torch.rand(2, 1, 7, 9)
    for scale in (2, 4):
        want = F.interpolate(lr, scale_factor=float(scale), mode="bicubic", align_corners=False)
        assert torch.equal(bicubic(lr, scale), want)
