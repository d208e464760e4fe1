"""SwinIR: shapes on any size, the bicubic skip, LR consistency, the shifted-window mask, FLOPs, training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hpc_sr.config import ConfigError
from hpc_sr.models.complexity import count_parameters, flops_per_image
from hpc_sr.models.registry import GeneratorCommon, build_generator, generator_names
from hpc_sr.models.swinir import (
    SwinIR,
    SwinIROptions,
    SwinLayer,
    WindowAttention,
    mirror_index,
    shifted_window_mask,
)

UPSAMPLERS = ["pixelshuffledirect", "pixelshuffle"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(scale: int = 2, upsampler: str = "pixelshuffledirect", **common: bool) -> SwinIR:
    opts = dataclasses.replace(SwinIROptions.tiny(), upsampler=upsampler, upsample_features=8)
    return SwinIR(opts, scale, GeneratorCommon(**common))


@pytest.mark.parametrize(("n", "total"), [(5, 8), (8, 8), (3, 8), (1, 4), (2, 11)])
def test_mirror_padding_is_numpys_symmetric_even_beyond_the_image(n: int, total: int) -> None:
    expected = np.pad(np.arange(n), (0, total - n), mode="symmetric")
    assert mirror_index(n, total, torch.device("cpu")).tolist() == expected.tolist()


def brute_force_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """Allowed pairs from first principles: same window of the shifted partition of the unrolled image."""
    nwx = w // ws
    windows, tokens = (h // ws) * nwx, ws * ws
    allowed = torch.zeros(windows, tokens, tokens, dtype=torch.bool)

    def cell(k: int, t: int) -> tuple[int, int]:
        r, c = (k // nwx) * ws + t // ws, (k % nwx) * ws + t % ws  # position in the rolled image
        orig_r, orig_c = (r + shift) % h, (c + shift) % w  # where the pixel came from
        return (orig_r - shift) // ws, (orig_c - shift) // ws  # its shifted window (-1: the first)

    for k in range(windows):
        for a in range(tokens):
            for b in range(tokens):
                allowed[k, a, b] = cell(k, a) == cell(k, b)
    return allowed


@pytest.mark.parametrize(("h", "w", "ws"), [(8, 12, 4), (4, 4, 4), (12, 6, 6), (6, 9, 3)])
def test_shift_mask_matches_brute_force(h: int, w: int, ws: int) -> None:
    mask = shifted_window_mask(h, w, ws, ws // 2, torch.device("cpu"))
    allowed = brute_force_mask(h, w, ws, ws // 2)
    assert mask.shape == allowed.shape
    assert torch.equal(mask == 0, allowed)
    assert torch.isneginf(mask[~allowed]).all()
    assert (~allowed).any()  # the last row/column of windows mixes wrapped pixels


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("pixel", [(0, 0), (3, 5), (7, 6), (5, 1)])
def test_tokens_of_different_windows_never_interact(shift: int, pixel: tuple[int, int]) -> None:
    """Perturb one pixel: a Swin layer's output moves exactly on that pixel's (shifted) window."""
    ws, h, w = 4, 8, 8
    layer = SwinLayer(dim=4, heads=2, ws=ws, shift=shift, mlp_ratio=1.0)
    mask = shifted_window_mask(h, w, ws, ws // 2, torch.device("cpu"))
    x = torch.randn(1, h, w, 4)
    x2 = x.clone()
    x2[0, pixel[0], pixel[1]] += torch.randn(4)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        changed = (layer(x2, mask) - layer(x, mask)).abs().amax(-1)[0] > 0

    def window(r: int, c: int) -> tuple[int, int]:
        return (r - shift) // ws, (c - shift) // ws

    expected = torch.tensor([[window(r, c) == window(*pixel) for c in range(w)] for r in range(h)])
    assert torch.equal(changed, expected)


def test_attention_flops_are_counted_and_grow_with_pixels() -> None:
    g = tiny(2)
    attn = [m for m in g.modules() if isinstance(m, WindowAttention)]
    ws, c = 4, SwinIROptions.tiny().embed_dim
    flops = {}
    for size, padded in [((7, 9), (8, 12)), ((16, 16), (16, 16))]:
        flops[size] = flops_per_image(g, size)
        per_layer = 2 * padded[0] * padded[1] * ws * ws * c  # q @ k^T plus attn @ v, one image
        assert [m.extra_macs for m in attn] == [per_layer] * len(attn)
        assert per_layer > 0
        for m in attn:  # without the attribute the counter sees only the Conv2d / Linear layers
            del m.extra_macs
        assert flops[size] - flops_per_image(g, size) == 2 * per_layer * len(attn)
    assert attn[0].extra_macs > 2 * 8 * 12 * ws * ws * c  # set again by the last forward, at 16x16
    assert flops[(16, 16)] > flops[(7, 9)]


def test_default_options_have_swinir_lights_parameter_count() -> None:
    """~910k (x2) / ~930k (x4) for RGB, what the reference code of the lightweight SwinIR counts."""
    rgb = GeneratorCommon(in_channels=3)
    assert [count_parameters(build_generator("swinir", {}, s, rgb)) for s in (2, 4)] == [910_152, 929_628]
    assert count_parameters(SwinIR(SwinIROptions.tiny(), 4, GeneratorCommon())) < 5000


def test_registry_builds_by_name_and_names_bad_options() -> None:
    assert "swinir" in generator_names()
    g = build_generator("swinir", {"embed_dim": 6, "window_size": 4, "mlp_ratio": 1.0}, 4, GeneratorCommon())
    assert isinstance(g, SwinIR) and len(g.stages) == 4 and g.head.out_channels == 6
    assert g(torch.rand(1, 1, 5, 6)).shape == (1, 1, 20, 24)
    with pytest.raises(ConfigError, match=r"model\.g\.options\.upsampler.*pixelshuffle"):
        build_generator("swinir", {"upsampler": "nearest"}, 2)
    with pytest.raises(ConfigError, match="embed_dim=7"):
        build_generator("swinir", {"embed_dim": 7}, 2)
    with pytest.raises(ValueError, match="num_heads"):
        SwinIROptions(depths=(2, 2), num_heads=(2,))
    with pytest.raises(ValueError, match="window_size=1"):
        SwinIROptions(window_size=1)


def test_registry_reads_depths_and_heads_from_lists() -> None:
    """As a YAML config or a checkpoint's options dict gives them (lists / tuples of any length)."""
    opts = {"embed_dim": 8, "depths": [2, 1, 1], "num_heads": [2, 4, 1], "window_size": 4}
    g = build_generator("swinir", opts, 2, GeneratorCommon())
    assert isinstance(g, SwinIR) and [len(s.layers) for s in g.stages] == [2, 1, 1]
    again = build_generator("swinir", dataclasses.asdict(SwinIROptions.tiny()), 2, GeneratorCommon())
    assert count_parameters(again) == count_parameters(SwinIR(SwinIROptions.tiny(), 2, GeneratorCommon()))
