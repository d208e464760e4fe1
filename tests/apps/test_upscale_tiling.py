"""upscale_array: batches, tiles blended into the untiled result, edge tiles, eval mode, self-ensemble."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.apps.tiling import tile_starts, upscale_array
from hpc_sr.models.ensemble import self_ensemble
from hpc_sr.models.layers import bicubic
from hpc_sr.models.registry import GeneratorCommon, build_generator

# Receptive radius of the tiny SRResNet in LR pixels: head 9x9 (4) + block (2) + trunk (1) + upsampler (1)
# + 9x9 tail in HR (2 LR) = 10. Tiles discard the outer quarter of the overlap, so overlap 40 is exact.
EXACT_OVERLAP = 40


@pytest.fixture(scope="module")
def random_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_generator("srresnet", {"channels": 4, "blocks": 1}, 2, GeneratorCommon(bicubic_skip=False))


def test_tiled_equals_untiled_with_overlap_covering_receptive_field(random_net: torch.nn.Module) -> None:
    lr = torch.rand(2, 1, 70, 61, generator=torch.Generator().manual_seed(1))
    ref = upscale_array(random_net, lr, 2)
    assert ref.shape == (2, 1, 140, 122) and ref.std() > 0.01  # a non-trivial model
    tiled = upscale_array(random_net, lr, 2, tile=48, overlap=EXACT_OVERLAP, batch_size=3)
    assert len(tile_starts(70, 48, EXACT_OVERLAP)) > 2 and len(tile_starts(61, 48, EXACT_OVERLAP)) > 1
    assert (tiled - ref).abs().max() < 1e-5
    # the comparison has teeth: a small overlap leaves tile-edge errors
    rough = upscale_array(random_net, lr, 2, tile=48, overlap=4)
    assert (rough - ref).abs().max() > 1e-5


@pytest.mark.parametrize("shape", [(1, 1, 20, 13), (1, 1, 20, 70), (3, 1, 9, 9)])
def test_images_smaller_than_a_tile(random_net: torch.nn.Module, shape: tuple[int, ...]) -> None:
    lr = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
    ref = upscale_array(random_net, lr, 2)
    tiled = upscale_array(random_net, lr, 2, tile=48, overlap=EXACT_OVERLAP, batch_size=2)
    assert tiled.shape == ref.shape
    assert (tiled - ref).abs().max() < 1e-5


def test_bicubic_model_is_exact_with_the_default_overlap() -> None:
    g = build_generator("srresnet", {"channels": 4, "blocks": 1}, 2)  # untrained, bicubic skip: == bicubic
    lr = torch.rand(2, 1, 32, 23, generator=torch.Generator().manual_seed(3))
    out = upscale_array(g, lr, 2, tile=16, overlap=8, batch_size=5)
    assert (out - bicubic(lr, 2)).abs().max() < 1e-5


def test_batch_size_does_not_change_the_result(random_net: torch.nn.Module) -> None:
    lr = torch.rand(3, 1, 30, 26, generator=torch.Generator().manual_seed(4))
    a = upscale_array(random_net, lr, 2, tile=16, overlap=8, batch_size=1)
    b = upscale_array(random_net, lr, 2, tile=16, overlap=8, batch_size=7)
    c = upscale_array(random_net, lr, 2, batch_size=2)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(c, upscale_array(random_net, lr, 2, batch_size=16), atol=1e-6, rtol=0)


def test_self_ensemble_tiled_and_untiled(random_net: torch.nn.Module) -> None:
    lr = torch.rand(1, 1, 20, 17, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = self_ensemble(random_net, lr)
    plain = upscale_array(random_net, lr, 2)
    ens = upscale_array(random_net, lr, 2, ensemble=True)
    torch.testing.assert_close(ens, expected, atol=1e-6, rtol=0)
    assert (ens - plain).abs().max() > 1e-4
    tiled = upscale_array(random_net, lr, 2, tile=48, overlap=EXACT_OVERLAP, ensemble=True)
    assert (tiled - ens).abs().max() < 1e-5


def test_eval_mode_no_grad_and_mode_restored() -> None:
    torch.manual_seed(6)
    g = build_generator(
        "srresnet", {"channels": 4, "blocks": 1, "batch_norm": True}, 2, GeneratorCommon(bicubic_skip=False)
    )
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    lr = torch.rand(2, 1, 12, 12)
    g.train()
    out = upscale_array(g, lr, 2)
    assert g.training and not out.requires_grad
    g.eval()
    with torch.no_grad():
        expected = g(lr)
    torch.testing.assert_close(out, expected)  # batch statistics (train mode) would differ


@pytest.mark.parametrize(
    "size,tile,overlap", [(70, 48, 40), (100, 32, 8), (33, 32, 8), (64, 16, 0), (5, 16, 8)]
)
def test_tile_starts_cover_the_axis_with_the_overlap(size: int, tile: int, overlap: int) -> None:
    starts = tile_starts(size, tile, overlap)
    length = min(tile, size)
    assert starts[0] == 0 and starts[-1] + length == size
    assert all(b - a <= length - overlap for a, b in zip(starts, starts[1:]))
    assert all(b > a for a, b in zip(starts, starts[1:]))


def test_bad_arguments_are_refused(random_net: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="overlap=16 must be smaller than tile=16"):
        upscale_array(random_net, torch.zeros(1, 1, 8, 8), 2, tile=16, overlap=16)
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        upscale_array(random_net, torch.zeros(1, 8, 8), 2)
    assert upscale_array(random_net, torch.zeros(0, 1, 8, 8), 2).shape == (0, 1, 16, 16)
