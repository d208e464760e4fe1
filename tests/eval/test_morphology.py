"""Arc region, noise rms, LR consistency and the ring radius (hpc_sr.eval.morphology)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.eval.morphology import (
    arc_mask,
    estimate_noise_rms,
    gaussian_smooth,
    lr_consistency_residual,
    lr_consistent_projection,
    masked_psnr,
    ring_profile,
    ring_radius,
)
from hpc_sr.imaging import gaussian_blur


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ring(n: int, size: int, radius: float, centre: tuple[float, float], width: float = 1.2) -> torch.Tensor:
    i = torch.arange(size, dtype=torch.float64)
    r = torch.sqrt((i[:, None] - centre[0]) ** 2 + (i[None, :] - centre[1]) ** 2)
    return torch.exp(-0.5 * ((r - radius) / width) ** 2).expand(n, 1, size, size).clone()


# ----------------------------------------------------------------------------------------------- arcs
def test_arc_mask_and_masked_psnr_by_hand() -> None:
    clean = torch.tensor([[0.0, 0.2, 0.6], [0.7, 0.1, 0.9], [0.0, 0.55, 0.3]], dtype=torch.float64)
    hr = torch.tensor([[0.0, 0.3, 0.5], [0.8, 0.1, 1.0], [0.1, 0.5, 0.2]], dtype=torch.float64)
    sr = torch.tensor([[0.9, 0.3, 0.6], [0.6, 0.0, 1.3], [0.0, 0.45, 0.2]], dtype=torch.float64)
    mask = arc_mask(clean.reshape(1, 1, 3, 3), 0.5)
    expected = clean > 0.5  # (0,2) (1,0) (1,2) (2,1)
    assert torch.equal(mask[0, 0], expected)
    # errors on the mask: 0.1, -0.2, clamp(1.3) - 1.0 = 0, -0.05
    mse = (0.1**2 + 0.2**2 + 0.0 + 0.05**2) / 4
    psnr = masked_psnr(sr.reshape(1, 1, 3, 3), hr.reshape(1, 1, 3, 3), mask)
    assert float(psnr[0]) == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    empty = arc_mask(clean.reshape(1, 1, 3, 3), 2.0)
    assert math.isnan(float(masked_psnr(sr.reshape(1, 1, 3, 3), hr.reshape(1, 1, 3, 3), empty)[0]))
    # per-image thresholds, and smoothing spreads a point above a threshold below its own value
    two = torch.stack([clean, clean]).unsqueeze(1)
    m2 = arc_mask(two, torch.tensor([0.5, 0.65]))
    assert int(m2[0].sum()) == 4 and int(m2[1].sum()) == 2
    point = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    point[0, 0, 4, 4] = 1.0
    assert int(arc_mask(point, 0.05, smooth_sigma=1.0).sum()) > 1 == int(arc_mask(point, 0.05).sum())


def test_noise_rms_estimate_from_clipped_and_offset_backgrounds() -> None:
    sigma, n = 0.02, 32
    blob = _ring(16, n, 0.0, (15.5, 15.5), width=1.5)  # a compact bright blob: mostly background
    noise = sigma * torch.randn(16, 1, n, n, generator=_gen(2), dtype=torch.float64)
    for name, img in (("clipped", (blob + noise).clamp(0, 1)), ("offset", 0.5 + noise)):  # offset: MAD branch
        ratio = estimate_noise_rms(img) / sigma  # ~1000 pixels: a few per cent of scatter per image
        assert 0.9 < float(ratio.median()) < 1.1, (name, ratio)
        assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.3, (name, ratio)


# ----------------------------------------------------------------------------------------------- LR
def test_lr_consistency_residual() -> None:
    x = torch.rand(3, 1, 8, 8, generator=_gen(3), dtype=torch.float64)
    lr = torch.rand(3, 1, 4, 4, generator=_gen(4), dtype=torch.float64)
    assert float(lr_consistency_residual(x, lr, 2).min()) > 0.05
    consistent = lr_consistent_projection(x, lr, 2)
    assert float(lr_consistency_residual(consistent, lr, 2).max()) < 1e-15
    assert torch.equal(lr_consistency_residual(F.avg_pool2d(x, 2).repeat_interleave(2, -1).repeat_interleave(
        2, -2), F.avg_pool2d(x, 2), 2), torch.zeros(3, dtype=torch.float64))  # fmt: skip
    const = lr_consistency_residual(torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 4, 4), 0.3), 2)
    assert float(const[0]) == pytest.approx(0.2, abs=1e-7)
    with pytest.raises(ValueError, match="downscaled"):
        lr_consistency_residual(x, lr, 4)


# ----------------------------------------------------------------------------------------------- ring
@pytest.mark.parametrize("radius,centre", [(9.37, (15.3, 16.1)), (6.8, (15.5, 15.5)), (12.15, (14.2, 16.9))])
def test_ring_radius_of_a_synthetic_ring(radius: float, centre: tuple[float, float]) -> None:
    img = _ring(1, 32, radius, centre)
    c = torch.tensor([centre], dtype=torch.float64)
    radii, prof = ring_profile(img, c, 16)
    assert radii[0] == pytest.approx(0.5) and prof.shape == (1, 16)
    assert abs(float(ring_radius(img, c)[0]) - radius) < 0.1


def test_ring_near_a_reference_picks_that_ring() -> None:
    img = _ring(1, 32, 6.0, (15.5, 15.5)) + 0.9 * _ring(1, 32, 12.0, (15.5, 15.5))
    assert abs(float(ring_radius(img)[0]) - 6.0) < 0.15  # the brighter ring
    assert abs(float(ring_radius(img, near=torch.tensor([11.0]))[0]) - 12.0) < 0.15
    assert abs(float(ring_radius(img, r_min=9.0)[0]) - 12.0) < 0.15


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5])
def test_gaussian_smooth_is_the_simulators_blur(sigma: float) -> None:
    """The arc mask's smoothing (eval may not import data) equals the simulator's scipy-matched blur."""
    x = torch.rand(3, 1, 12, 17, generator=_gen(7), dtype=torch.float64)
    want = gaussian_blur(x, torch.full((3,), sigma, dtype=torch.float64))
    torch.testing.assert_close(gaussian_smooth(x, sigma), want, rtol=0, atol=1e-14)
