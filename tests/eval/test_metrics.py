"""Metrics against scikit-image, pooled vs mean PSNR, exact accumulator merging, the bicubic baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from hpc_sr.eval.metrics import (
    MetricAccumulator,
    bicubic_upscale,
    evaluate_pairs,
    per_image_metrics,
)

SIZE = 64


def _lensing_like(rng: np.random.Generator) -> np.ndarray:
    """A few Gaussian blobs, ring arcs and noise, scaled into [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) - SIZE / 2
    img = np.zeros((SIZE, SIZE))
    for _ in range(3):
        cx, cy, s, a = rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(1.5, 4), rng.uniform(0.3, 1)
        img += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    for _ in range(2):
        r0, phi0, width = rng.uniform(10, 20), rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.5)
        img += (
            0.8
            * np.exp(-((r - r0) ** 2) / (2 * width**2))
            * np.exp(-(np.angle(np.exp(1j * (phi - phi0))) ** 2))
        )
    img += rng.normal(0, 0.01, img.shape)
    img -= img.min()
    return img / img.max()


def _pairs(kind: str, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(sr, hr) float32 (n,1,64,64); sr = hr + noise of a different level per image (some out of [0,1])."""
    rng = np.random.default_rng(0 if kind == "random" else 1)
    if kind == "random":
        hr = rng.uniform(0, 1, (n, 1, SIZE, SIZE))
    else:
        hr = np.stack([_lensing_like(rng)[None] for _ in range(n)])
    noise = rng.normal(0, 1, hr.shape) * np.array([0.005, 0.02, 0.05, 0.1][:n]).reshape(n, 1, 1, 1)
    return torch.from_numpy(hr + noise).float(), torch.from_numpy(hr).float()


def _skimage(sr: torch.Tensor, hr: torch.Tensor) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"psnr": [], "mse": [], "ssim": []}
    for s, h in zip(sr[:, 0].double().numpy(), hr[:, 0].double().numpy()):
        s = np.clip(s, 0, 1)
        out["psnr"].append(peak_signal_noise_ratio(h, s, data_range=1.0))
        out["mse"].append(mean_squared_error(h, s))
        out["ssim"].append(
            structural_similarity(
                h, s, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
            )
        )
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("kind", ["random", "lensing"])
def test_per_image_metrics_match_skimage(kind: str) -> None:
    sr, hr = _pairs(kind)
    assert sr.max() > 1 or sr.min() < 0  # the clamp matters for these inputs
    ours = per_image_metrics(sr, hr)
    ref = _skimage(sr, hr)
    for key in ("psnr", "mse", "ssim"):
        assert ours[key].shape == (4,) and ours[key].dtype == torch.float64
        np.testing.assert_allclose(ours[key].numpy(), ref[key], rtol=0, atol=1e-4)
    # the images differ, so the metrics must too (the comparison above is not vacuous)
    assert len(set(np.round(ref["psnr"], 3))) == 4


def test_sr_is_clamped_inside() -> None:
    sr, hr = _pairs("random")
    ours = per_image_metrics(sr, hr)
    clamped = per_image_metrics(sr.clamp(0, 1), hr)
    for key in ("psnr", "mse", "ssim", "flux_err"):
        torch.testing.assert_close(ours[key], clamped[key], rtol=0, atol=0)
    raw_mse = (sr.double() - hr.double()).pow(2).flatten(1).mean(1)
    assert (raw_mse > ours["mse"]).any()


def test_flux_err_and_exact_match_cap() -> None:
    _, hr = _pairs("lensing", n=2)
    hr = hr * 0.9
    m = per_image_metrics(hr * 1.05, hr)
    torch.testing.assert_close(m["flux_err"], torch.full((2,), 0.05, dtype=torch.float64), rtol=1e-5, atol=0)
    same = per_image_metrics(hr, hr)
    assert torch.equal(same["psnr"], torch.full((2,), 100.0, dtype=torch.float64))
    assert torch.allclose(same["ssim"], torch.ones(2, dtype=torch.float64))


def test_pooled_and_mean_psnr_differ_and_are_each_right() -> None:
    sr, hr = _pairs("lensing")
    acc = MetricAccumulator()
    acc.update(sr, hr)
    res = acc.compute()
    ref = _skimage(sr, hr)
    assert res["n"] == 4
    assert res["psnr"] == pytest.approx(ref["psnr"].mean(), abs=1e-6)
    assert res["psnr_pooled"] == pytest.approx(10 * math.log10(1 / ref["mse"].mean()), abs=1e-6)
    assert res["mse"] == pytest.approx(ref["mse"].mean(), rel=1e-9)
    assert res["ssim"] == pytest.approx(ref["ssim"].mean(), abs=1e-6)
    assert res["psnr"] - res["psnr_pooled"] > 1.0  # Jensen: the mean of logs exceeds the log of the mean


def test_accumulator_merge_of_halves_equals_whole_exactly() -> None:
    sr, hr = _pairs("random")
    whole, first, second = MetricAccumulator(), MetricAccumulator(), MetricAccumulator()
    whole.update(sr[:2], hr[:2])
    whole.update(sr[2:], hr[2:])
    first.update(sr[:2], hr[:2])
    second.update(sr[2:], hr[2:])
    assert torch.equal(first.merge(second).state(), whole.state())
    # as a SUM all-reduce of two ranks' states would do it
    ranked = MetricAccumulator()
    ranked.load_state(first.state())  # already merged above: first == whole
    assert ranked.compute() == whole.compute()
    one_batch = MetricAccumulator()
    one_batch.update(sr, hr)
    torch.testing.assert_close(one_batch.state(), whole.state(), rtol=1e-12, atol=0)


def test_accumulator_state_shape_and_empty() -> None:
    acc = MetricAccumulator()
    st = acc.state()
    assert st.dtype == torch.float64 and st.shape == (5,)
    res = acc.compute()
    assert res["n"] == 0 and math.isnan(res["psnr"])
    with pytest.raises(ValueError, match="shape"):
        acc.load_state(torch.zeros(4, dtype=torch.float64))
    sr, hr = _pairs("random", n=2)
    acc.update(sr, hr)
    st = acc.state()
    st[0] += 1  # a copy: changing it must not change the accumulator
    assert acc.n == 2


def test_bicubic_shape_constant_and_not_clamped() -> None:
    lr = torch.rand(2, 1, 7, 9)
    assert bicubic_upscale(lr, 2).shape == (2, 1, 14, 18)
    assert bicubic_upscale(lr, 4).shape == (2, 1, 28, 36)
    const = torch.full((1, 1, 6, 5), 0.37)
    torch.testing.assert_close(bicubic_upscale(const, 2), torch.full((1, 1, 12, 10), 0.37))
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    up = bicubic_upscale(step, 2)
    assert up.max() > 1.0 and up.min() < 0.0  # bicubic overshoot at an edge is kept


def _smooth(u: torch.Tensor, v: torch.Tensor, wavelength: float) -> torch.Tensor:
    return 0.5 + 0.25 * torch.sin(2 * math.pi * u / wavelength) * torch.cos(
        2 * math.pi * v / (1.25 * wavelength)
    )


def _bicubic_error(wavelength: float, hr_shift: float = 0.0, mode: str = "bicubic") -> float:
    """Max interior error of x2 upsampling of samples of a smooth function, against the function itself.

    Pixel centres (align_corners=False): LR pixel i sits at HR coordinate 2i + 1, HR pixel j at j + 0.5.
    """
    n_lr = 32
    c_lr = torch.arange(n_lr, dtype=torch.float64) * 2 + 1
    c_hr = torch.arange(2 * n_lr, dtype=torch.float64) + 0.5 + hr_shift
    lr = _smooth(c_lr[:, None], c_lr[None, :], wavelength)[None, None]
    hr = _smooth(c_hr[:, None], c_hr[None, :], wavelength)[None, None]
    up = bicubic_upscale(lr, 2) if mode == "bicubic" else F.interpolate(lr, scale_factor=2, mode=mode)
    return (up - hr)[..., 4:-4, 4:-4].abs().max().item()


def test_bicubic_of_smooth_function_matches_analytic() -> None:
    err = _bicubic_error(40.0)
    assert err < 5e-3
    assert err < _bicubic_error(40.0, hr_shift=0.5) / 4  # the grids are aligned as align_corners=False says
    assert err < _bicubic_error(40.0, mode="nearest") / 4
    assert _bicubic_error(80.0) < 0.6 * err  # converges as the function gets smoother


def _keys(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (PyTorch's bicubic, a = -0.75)."""
    t = np.abs(t)
    return np.where(
        t <= 1,
        (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )


def test_bicubic_equals_cubic_convolution_formula() -> None:
    """Separable Keys kernel, source x = (j + 0.5) / 2 - 0.5, border indices clamped."""
    rng = np.random.default_rng(3)
    lr = rng.uniform(0, 1, (7, 6))

    def matrix(n: int) -> np.ndarray:
        m = np.zeros((2 * n, n))
        for j in range(2 * n):
            x = (j + 0.5) / 2 - 0.5
            i0 = int(np.floor(x))
            for i in range(i0 - 1, i0 + 3):
                m[j, min(max(i, 0), n - 1)] += _keys(np.array(x - i))
        return m

    expected = matrix(7) @ lr @ matrix(6).T
    got = bicubic_upscale(torch.from_numpy(lr)[None, None], 2)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_evaluate_pairs_model_and_bicubic() -> None:
    _, hr = _pairs("lensing", n=3)
    lr = F.avg_pool2d(hr, 2)
    model, bic = evaluate_pairs(lr, hr, bicubic_upscale(lr, 2))
    assert model == bic and model["n"] == 3
    better, bic2 = evaluate_pairs(lr, hr, hr + 0.001)
    assert better["psnr"] > bic2["psnr"]


def test_ssim_in_chunks_equals_one_image_at_a_time() -> None:
    from hpc_sr.eval.metrics import SSIM_CHUNK, ssim_per_image

    g = torch.Generator().manual_seed(3)
    hr = torch.rand(2 * SSIM_CHUNK + 3, 1, 16, 16, generator=g, dtype=torch.float64)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    whole = ssim_per_image(sr, hr)
    single = torch.cat([ssim_per_image(sr[i : i + 1], hr[i : i + 1]) for i in range(hr.shape[0])])
    torch.testing.assert_close(whole, single, rtol=1e-12, atol=1e-12)
