"""Calibration of sample intervals (hpc_sr.eval.uncertainty) on synthetic samples of known distribution."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.eval.uncertainty import (
    CalibrationAccumulator,
    central_interval,
    draw_samples,
    interval_coverage,
    interval_positions,
)
from hpc_sr.models.registry import GeneratorCommon, build_generator


def gaussian(n: int, shape: tuple[int, ...], mean: float, sd: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return mean + sd * torch.randn((n, *shape), generator=gen)


def test_samples_from_the_truths_distribution_cover_68_percent() -> None:
    shape = (4, 1, 64, 64)  # 16k pixels: coverage known to ~0.4 %
    samples, hr = gaussian(16, shape, 0.5, 0.05, 1), gaussian(1, shape, 0.5, 0.05, 2)[0]
    cal = interval_coverage(samples, hr)
    assert cal["overall"]["coverage"] == pytest.approx(0.68, abs=0.015)
    assert cal["overall"]["width"] == pytest.approx(2 * 0.05 * 0.9945, rel=0.1)  # ~ 2 sd for a Gaussian
    assert cal["bins"][2]["share"] == 1.0  # every sample mean is bright (> 0.05)
    # the plain 16 % / 84 % quantiles of 16 samples would cover only ~60 %
    lo, hi = torch.quantile(samples, torch.tensor([0.16, 0.84]), dim=0)
    assert float(((hr >= lo) & (hr <= hi)).double().mean()) < 0.63


def test_too_narrow_and_too_wide_samples_are_seen_per_bin() -> None:
    shape = (2, 1, 64, 64)
    base = torch.zeros(shape)
    base[..., :32] = 0.5  # left half bright, right half background (sample mean ~ 0)
    hr = base + gaussian(1, shape, 0.0, 0.002, 3)[0] * (base > 0)
    spread = torch.where(base > 0, torch.tensor(0.0005), torch.tensor(0.0))  # bright: 4x too narrow
    samples = base + spread * gaussian(16, shape, 0.0, 1.0, 4)
    cal = interval_coverage(samples, hr)
    rows = {b["name"]: b for b in cal["bins"]}
    assert rows["bright"]["share"] == pytest.approx(0.5) and rows["background"]["share"] == pytest.approx(0.5)
    assert rows["bright"]["coverage"] < 0.3  # P(|z| < 0.25) ~ 0.2
    assert rows["background"]["coverage"] == 1.0  # truth exactly 0, samples exactly 0: ends included
    assert rows["faint"]["pixels"] == 0
    assert cal["overall"]["pixels"] == hr.numel()


def test_interval_positions_and_too_few_samples() -> None:
    assert interval_positions(16) == pytest.approx((17 * 0.16 - 1, 17 * 0.84 - 1))
    with pytest.raises(ValueError, match="at least 6 samples"):
        interval_positions(5)
    s = torch.arange(16.0).reshape(16, 1)
    lo, hi = central_interval(s[torch.randperm(16)])
    assert float(lo) == pytest.approx(1.72) and float(hi) == pytest.approx(13.28)


def test_the_accumulator_sums_batches_exactly_and_the_mean_psnr_is_the_sample_means() -> None:
    shape = (4, 1, 16, 16)
    samples, hr = gaussian(8, shape, 0.3, 0.01, 5).clamp(0, 1), gaussian(1, shape, 0.3, 0.01, 6)[0]
    whole = CalibrationAccumulator()
    whole.update(samples, hr)
    a, b = CalibrationAccumulator(), CalibrationAccumulator()
    a.update(samples[:, :2], hr[:2])
    b.update(samples[:, 2:], hr[2:])
    torch.testing.assert_close(a.merge(b).state(), whole.state())
    got = whole.compute()
    mse = (samples.double().mean(0) - hr.double()).pow(2).flatten(1).mean(1)
    assert got["mean_psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()))
    assert got["images"] == 4


def test_the_infinite_sample_estimate_removes_the_means_own_noise() -> None:
    shape = (2, 1, 32, 32)
    truth = torch.full(shape, 0.4)
    cal = interval_coverage(truth + gaussian(16, shape, 0.0, 0.01, 7), truth)  # the distribution's mean = HR
    # mean of 16: MSE ~ 1e-4 / 16 -> ~52 dB; the infinite-sample MSE is ~0 (floored: far higher)
    assert cal["mean_psnr_pooled"] == pytest.approx(10 * torch.log10(torch.tensor(16 / 1e-4)).item(), abs=0.3)
    assert cal["mean_psnr_pooled_inf"] > cal["mean_psnr_pooled"] + 10


def test_draw_samples_is_seeded_clamped_and_refuses_deterministic_generators() -> None:
    torch.manual_seed(0)
    g = build_generator(
        "edsr", {"channels": 4, "blocks": 1}, 2, GeneratorCommon(bicubic_skip=False, noise_channels=1)
    ).eval()
    lr = torch.rand(2, 1, 8, 8)
    a, b, c = draw_samples(g, lr, 3, seed=1), draw_samples(g, lr, 3, seed=1), draw_samples(g, lr, 3, seed=2)
    assert a.shape == (3, 2, 1, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[0] - a[1]).abs().max() > 0 and a.min() >= 0 and a.max() <= 1
    plain = build_generator("edsr", {"channels": 4, "blocks": 1}, 2, GeneratorCommon())
    with pytest.raises(ValueError, match="deterministic"):
        draw_samples(plain, lr, 3)
