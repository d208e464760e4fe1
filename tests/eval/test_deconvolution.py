"""The classical deconvolution baselines: better than bicubic on two-instrument pairs, an exact adjoint, the
simulator's forward model, flux, batching and argument errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.eval.deconvolution import (
    RL_EPS,
    deconvolution_baseline,
    estimate_noise_var,
    lr_adjoint,
    lr_forward,
    richardson_lucy,
    richardson_lucy_path,
    wiener,
)
from hpc_sr.eval.metrics import bicubic_upscale, psnr_from_mse
from hpc_sr.imaging import fft_blur, psf_kernels_2d

SIZE = 64
F64 = torch.float64


def _sky(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n,1,size,size) smooth skies: a soft lens galaxy, a ring broken into arcs, a compact blob."""
    t = torch.arange(size, dtype=F64) - (size - 1) / 2
    yy, xx = torch.meshgrid(t, t, indexing="ij")

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=F64))

    out = torch.zeros(n, 1, size, size, dtype=F64)
    for i in range(n):
        r, th = torch.hypot(yy, xx), torch.atan2(yy, xx)
        lens = torch.exp(-torch.hypot(yy - u(-2, 2), xx - u(-2, 2)) / u(2.5, 4.0))
        arcs = torch.exp(-((r - u(0.25, 0.35) * size) ** 2) / (2 * u(1.5, 2.5) ** 2))
        arcs = arcs * (1 + torch.cos(th - u(-math.pi, math.pi))) / 2
        by, bx = u(-0.3, 0.3) * size, u(-0.3, 0.3) * size
        blob = torch.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * u(1.0, 2.0) ** 2))
        out[i, 0] = lens + u(0.4, 0.8) * arcs + u(0.2, 0.5) * blob
    return out


def _pairs(n: int = 4, size: int = SIZE, seed: int = 0, sigma_lr: float = 0.004) -> dict[str, torch.Tensor]:
    """Two-instrument pairs as the simulator renders them: Gaussian and Moffat LR PSFs (FWHM 5-10 HR px,
    shifted by up to 1 HR px), a 2 px Gaussian HR PSF, LR noise, everything normalised by the HR peak."""
    g = torch.Generator().manual_seed(seed)
    sky = _sky(n, size, g)
    fwhm = 5 + 5 * torch.rand(n, generator=g, dtype=F64)
    beta = torch.where(torch.arange(n) % 2 == 0, 0.0, 3.5).to(F64)  # Gaussian, Moffat, ...
    shift = 2 * torch.rand(n, 2, generator=g, dtype=F64) - 1
    psf_lr = psf_kernels_2d(fwhm, beta, shift)
    psf_hr = psf_kernels_2d(torch.full((n,), 2.0, dtype=F64), torch.zeros(n, dtype=F64))
    hr_clean = fft_blur(sky, psf_hr)
    peak = hr_clean.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    sky, hr_clean = sky / peak, hr_clean / peak
    lr_clean = F.avg_pool2d(fft_blur(sky, psf_lr), 2)
    noise = sigma_lr * torch.randn(lr_clean.shape, generator=g, dtype=F64)
    lr = (lr_clean + noise).clamp(0.0, 1.0)
    return {"sky": sky, "hr_clean": hr_clean, "lr": lr, "psf_lr": psf_lr, "psf_hr": psf_hr}


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return psnr_from_mse((x.clamp(0, 1) - ref).pow(2).flatten(1).mean(1))


@pytest.fixture(scope="module")
def pairs() -> dict[str, torch.Tensor]:
    return _pairs()


def test_both_beat_bicubic_against_the_noise_free_hr(pairs: dict[str, torch.Tensor]) -> None:
    lr, kl, kh, ref = pairs["lr"], pairs["psf_lr"], pairs["psf_hr"], pairs["hr_clean"]
    bic = _psnr(bicubic_upscale(lr, 2), ref)
    rl = _psnr(richardson_lucy(lr, kl, kh), ref)
    wi = _psnr(wiener(lr, kl, kh, noise_var=0.004**2), ref)
    # every image, Gaussian and Moffat alike, by a clear margin
    assert bool((rl > bic + 6.0).all()), (rl, bic)
    assert bool((wi > bic + 4.0).all()), (wi, bic)
    by_name = deconvolution_baseline("richardson_lucy", lr, kl, kh, iterations=3)
    assert by_name.equal(richardson_lucy(lr, kl, kh, iterations=3))


def test_wiener_estimates_its_noise_when_not_told(pairs: dict[str, torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(2)
    t = torch.linspace(-1, 1, 64, dtype=F64)
    smooth = 0.3 + 0.2 * torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 0.3)  # seeing-smooth signal
    var = estimate_noise_var(smooth + 0.01 * torch.randn(3, 1, 64, 64, generator=g, dtype=F64))
    assert var.shape == (3,) and torch.allclose(var, torch.full_like(var, 1e-4), rtol=0.1), var
    lr, kl, kh, ref = pairs["lr"], pairs["psf_lr"], pairs["psf_hr"], pairs["hr_clean"]
    assert bool((_psnr(wiener(lr, kl, kh), ref) > _psnr(bicubic_upscale(lr, 2), ref) + 4.0).all())


@pytest.mark.parametrize(("scale", "shape"), [(2, (5, 7)), (3, (4, 6))])
def test_rl_adjoint_is_exact(scale: int, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(1)
    n = 3
    k = psf_kernels_2d(
        torch.tensor([2.5, 3.0, 4.0], dtype=F64), torch.tensor([0.0, 3.0, 2.5], dtype=F64),
        torch.rand(n, 2, generator=g, dtype=F64) - 0.5,
    )  # fmt: skip
    r = (k.shape[-1] - 1) // 2
    h, w = shape
    x = torch.randn(n, 1, scale * h + 2 * r, scale * w + 2 * r, generator=g, dtype=F64)
    y = torch.randn(n, 1, h, w, generator=g, dtype=F64)
    ax = lr_forward(x, k, scale)
    aty = lr_adjoint(y, k, scale)
    assert ax.shape == y.shape and aty.shape == x.shape
    lhs, rhs = (ax * y).flatten(1).sum(1), (x * aty).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * float(lhs.abs().max())), (lhs, rhs)


def test_rl_forward_is_the_simulators_lr(pairs: dict[str, torch.Tensor]) -> None:
    """On the sky replicate-padded by the kernel radius, A gives the simulator's noise-free LR."""
    sky, kl = pairs["sky"], pairs["psf_lr"]
    r = (kl.shape[-1] - 1) // 2
    expect = F.avg_pool2d(fft_blur(sky, kl), 2)
    got = lr_forward(F.pad(sky, (r, r, r, r), mode="replicate"), kl, 2)
    assert torch.allclose(got, expect, atol=1e-12)


def test_a_constant_sky_comes_back_exactly_edges_included(pairs: dict[str, torch.Tensor]) -> None:
    """No padding convention leaks in at the field's edge: a flat sky is a fixed point of both."""
    kl, kh = pairs["psf_lr"], pairs["psf_hr"]
    lr = torch.full((kl.shape[0], 1, 24, 20), 0.3, dtype=F64)
    for out in (richardson_lucy(lr, kl, kh), wiener(lr, kl, kh, k=0.05)):
        assert out.shape == (kl.shape[0], 1, 48, 40)
        assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-9), (out - 0.3).abs().max()


def test_rl_conserves_flux_and_zero_iterations_is_the_init(pairs: dict[str, torch.Tensor]) -> None:
    lr, kl, kh, ref = pairs["lr"], pairs["psf_lr"], pairs["psf_hr"], pairs["hr_clean"]
    out = richardson_lucy(lr, kl, kh)
    flux_err = (out.flatten(1).sum(1) - ref.flatten(1).sum(1)).abs() / ref.flatten(1).sum(1)
    assert bool((flux_err < 0.03).all()), flux_err
    init = fft_blur(bicubic_upscale(lr, 2).clamp_min(RL_EPS), kh).clamp(0.0, 1.0)
    assert torch.allclose(richardson_lucy(lr, kl, kh, iterations=0), init, atol=1e-12)
    sky = richardson_lucy(lr, kl, None, iterations=0)  # no target PSF: the sky estimate itself
    assert torch.allclose(sky, bicubic_upscale(lr, 2).clamp_min(RL_EPS), atol=1e-12)


def test_rl_path_batches_and_determinism(pairs: dict[str, torch.Tensor]) -> None:
    lr, kl, kh = pairs["lr"], pairs["psf_lr"], pairs["psf_hr"]
    path = richardson_lucy_path(lr, kl, kh, (7, 0, 3), noise_var=1e-5)
    assert path[0].equal(richardson_lucy(lr, kl, kh, iterations=7, noise_var=1e-5))
    assert path[2].equal(richardson_lucy(lr, kl, kh, iterations=3, noise_var=1e-5))
    one = richardson_lucy(lr[1:2], kl[1:2], kh[1:2], iterations=7, noise_var=1e-5)
    assert torch.allclose(path[0][1:2], one, atol=1e-12)  # each image its own kernels
    w_all, w_one = wiener(lr, kl, kh, k=1e-3), wiener(lr[2:3], kl[2:3], kh[2:3], k=1e-3)
    assert torch.allclose(w_all[2:3], w_one, atol=1e-12)
    out32 = richardson_lucy(lr.float(), kl, kh, iterations=2)
    assert out32.dtype == torch.float32 and out32.shape == (lr.shape[0], 1, SIZE, SIZE)
    assert wiener(lr.float(), kl, kh).dtype == torch.float32


def test_errors_name_the_argument(pairs: dict[str, torch.Tensor]) -> None:
    lr, kl, kh = pairs["lr"], pairs["psf_lr"], pairs["psf_hr"]
    with pytest.raises(ValueError, match="lr must be an"):
        richardson_lucy(lr[:, 0], kl, kh)
    with pytest.raises(ValueError, match="lr must be an"):
        wiener(lr.expand(-1, 3, -1, -1), kl, kh)
    with pytest.raises(ValueError, match="psf_lr must be .* K odd"):
        richardson_lucy(lr, kl[:, 1:, 1:], kh)
    with pytest.raises(ValueError, match="psf_hr holds 2 kernels for 4 images"):
        wiener(lr, kl, kh[:2])
    with pytest.raises(ValueError, match="scale must be a positive int"):
        richardson_lucy(lr, kl, kh, scale=0)
    with pytest.raises(ValueError, match="iterations must be"):
        richardson_lucy(lr, kl, kh, iterations=-1)
    with pytest.raises(ValueError, match="noise_var must be"):
        richardson_lucy(lr, kl, kh, noise_var=torch.ones(3))
    with pytest.raises(ValueError, match="k must be > 0"):
        wiener(lr, kl, kh, k=0.0)
    with pytest.raises(ValueError, match="did you mean 'wiener'"):
        deconvolution_baseline("weiner", lr, kl, kh)
    assert deconvolution_baseline("bicubic", lr, kl, kh).equal(bicubic_upscale(lr, 2).clamp(0, 1))
