"""Power spectra and band powers (hpc_sr.eval.spectra)."""

from __future__ import annotations

import math

import pytest
import torch

from hpc_sr.eval.spectra import band_power_ratios, band_powers, radial_power_spectrum
from hpc_sr.imaging import gaussian_blur


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sinusoid_power_sits_in_its_radius_bin() -> None:
    n = 32
    i = torch.arange(n, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * (4 * i[:, None] + 3 * i[None, :]) / n)  # |k| = 5 / 32: bin 5
    wave2 = 0.5 * torch.sin(2 * math.pi * (2 * i[:, None] - 3 * i[None, :]) / n)  # |k| = 3.61 / 32: bin 4
    k, p = radial_power_spectrum(torch.stack([wave, wave + wave2]).unsqueeze(1))
    assert k.shape == (17,) and p.shape == (2, 17) and k[5] == pytest.approx(5 / 32) and k[-1] == 0.5
    assert int(p[0].argmax()) == 5 and float(torch.cat([p[0, :5], p[0, 6:]]).max()) < 1e-20 * float(p[0, 5])
    assert torch.allclose(p[1, 5], p[0, 5]) and float(p[1, 4]) > 1e-3
    assert float(torch.cat([p[1, :4], p[1, 6:]]).max()) < 1e-20 * float(p[1, 5])
    # Parseval: the bin mean times its coefficient count is the summed squares of the cosine, n^2 / 2
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    counts = torch.bincount(torch.round(torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) * n).long().flatten())
    assert float(p[0, 5]) * int(counts[5]) == pytest.approx(n * n / 2, rel=1e-9)


def test_white_noise_spectrum_is_flat_at_its_variance() -> None:
    sigma = 0.1
    x = sigma * torch.randn(64, 1, 32, 32, generator=_gen(0), dtype=torch.float64)
    for window in ("none", "hann"):
        _, p = radial_power_spectrum(x, window=window)
        mean = p.mean(0)
        assert float(mean[0]) == pytest.approx(0.0, abs=1e-20)  # the mean is subtracted
        rel = mean[2:] / sigma**2
        assert float(rel.min()) > 0.8 and float(rel.max()) < 1.2, (window, rel)
    # without a window, Parseval: the 2-D power sums to the squared deviations
    total = band_powers(x, ((0.0, 0.5),)).sum() + 0  # the corners |k| > 0.5 are outside every band
    dev = (x - x.mean(dim=(-2, -1), keepdim=True)).pow(2).sum()
    assert 0.7 * float(dev) < float(total) < float(dev)


def test_band_ratios_of_self_are_one_and_blur_removes_the_high_band() -> None:
    x = torch.rand(4, 1, 32, 32, generator=_gen(1), dtype=torch.float64)
    same = band_power_ratios(x, x)
    assert same.shape == (4, 3) and torch.allclose(same, torch.ones_like(same), rtol=0, atol=1e-12)
    blurred = gaussian_blur(x, torch.full((4,), 1.5, dtype=torch.float64))
    r = band_power_ratios(blurred, x).mean(0)
    assert float(r[2]) < 0.05 and float(r[2]) < float(r[1]) < float(r[0]) < 1.0
    with pytest.raises(ValueError, match="band"):
        band_power_ratios(x, x, bands=((0.3, 0.2),))
