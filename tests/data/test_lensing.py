"""Tests of the torch lensing simulator (hpc_sr.data.lensing), including agreement with lenstronomy."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator, SimBatch, WindowBatch, simulate
from hpc_sr.data.presets import PRESETS, LensPreset, Prior
from hpc_sr.errors import DataError
from hpc_sr.imaging import gaussian_blur

REFS = Path(__file__).parent / "refs" / "lenstronomy_refs.npz"
TOOLS = Path(__file__).resolve().parents[2] / "tools"
IDX = {n: i for i, n in enumerate(PARAM_NAMES)}


@pytest.fixture(scope="module")
def refs() -> dict[str, np.ndarray]:
    with np.load(REFS) as z:
        return {k: z[k] for k in z.files}


def _peak_err(img: torch.Tensor, ref: np.ndarray) -> np.ndarray:
    """Max |img - ref| per image, relative to the reference's peak."""
    a, b = img[:, 0].double().numpy(), ref
    return np.abs(a - b).max(axis=(1, 2)) / b.max(axis=(1, 2))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_matches_lenstronomy_references(refs, dtype, tol):
    assert tuple(refs["param_names"]) == PARAM_NAMES
    size = refs["images"].shape[-1]
    sim = LensingSimulator("model_i", hr_size=size, supersample=int(refs["supersample"]), dtype=dtype)
    assert sim.preset.pixel_scale == float(refs["pixel_scale"])
    img = sim.render(torch.from_numpy(refs["params"]), noise=False)
    assert img.dtype == dtype and img.shape == (len(refs["params"]), 1, size, size)
    err = _peak_err(img, refs["images"])
    assert (err < tol).all(), err


@pytest.mark.lenstronomy
def test_live_lenstronomy_random_params():
    pytest.importorskip("lenstronomy")
    sys.path.insert(0, str(TOOLS))
    try:
        from make_lenstronomy_refs import render_lenstronomy
    finally:
        sys.path.remove(str(TOOLS))
    sim = LensingSimulator("wide", hr_size=40, supersample=2, dtype=torch.float64)
    params = sim.sample_params(4, torch.Generator().manual_seed(7))
    ref = render_lenstronomy(params.numpy(), 40, sim.preset.pixel_scale, 2)
    assert (_peak_err(sim.render(params, noise=False), ref) < 1e-6).all()
    sim32 = LensingSimulator("wide", hr_size=40, supersample=2, dtype=torch.float32)
    assert (_peak_err(sim32.render(params, noise=False), ref) < 1e-4).all()


@pytest.mark.parametrize("sigma", [0.3, 0.74, 1.6, 3.2])
def test_gaussian_blur_matches_scipy(sigma):
    from scipy.ndimage import gaussian_filter

    img = torch.rand(2, 1, 23, 31, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = torch.tensor([sigma, sigma / 2], dtype=torch.float64)  # each image its own sigma
    out = gaussian_blur(img, sig)
    for k in range(2):
        ref = gaussian_filter(img[k, 0].numpy(), float(sig[k]), mode="nearest", truncate=5.0)
        np.testing.assert_allclose(out[k, 0].numpy(), ref, rtol=0, atol=1e-12)


MEAN_LR_PRESETS = sorted(n for n, p in PRESETS.items() if p.lr_is_mean)


@pytest.mark.parametrize("preset", MEAN_LR_PRESETS)
def test_shapes_range_and_lr_is_mean_of_hr(preset):
    b = simulate(5, preset=preset, seed=3, hr_size=48)
    assert isinstance(b, SimBatch)
    assert b.hr.shape == (5, 1, 48, 48) and b.lr.shape == (5, 1, 24, 24)
    assert b.params.shape == (5, len(PARAM_NAMES))
    assert b.hr.dtype == b.lr.dtype == b.params.dtype == torch.float32
    assert torch.isfinite(b.hr).all() and torch.isfinite(b.lr).all() and torch.isfinite(b.params).all()
    assert b.hr.min() >= 0 and b.hr.max() <= 1 and b.lr.min() >= 0 and b.lr.max() <= 1
    torch.testing.assert_close(b.hr.amax(dim=(1, 2, 3)), torch.ones(5))
    assert torch.equal(b.lr, F.avg_pool2d(b.hr, 2))


def test_other_scale_and_sizes():
    b = simulate(2, seed=0, hr_size=30, scale=3, supersample=1)
    assert b.lr.shape == (2, 1, 10, 10)
    assert torch.equal(b.lr, F.avg_pool2d(b.hr, 3))


def test_seed_determinism():
    a = simulate(4, seed=11, hr_size=40)
    b = simulate(4, seed=11, hr_size=40)
    c = simulate(4, seed=12, hr_size=40)
    assert torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr) and torch.equal(a.params, b.params)
    assert not torch.equal(a.hr, c.hr) and not torch.equal(a.params, c.params)


def test_params_recorded_and_consistent():
    sim = LensingSimulator("deeplense_sr", hr_size=48)
    b = sim.sample(6, torch.Generator().manual_seed(5))
    # every sampled value lies in its prior's support
    for i, prior in enumerate(sim.preset.priors()):
        lo, hi = prior.support
        col = b.params[:, i].double()
        assert ((col >= lo * (1 - 1e-6) - 1e-9) & (col <= hi * (1 + 1e-6) + 1e-9)).all(), PARAM_NAMES[i]
    # the recorded params and generator reproduce the noisy image; hr_peak_flux is its maximum
    g = torch.Generator().manual_seed(5)
    params = sim.sample_params(6, g)
    torch.testing.assert_close(params[:, :-1], b.params[:, :-1], rtol=0, atol=0)
    noisy = sim.render(b.params, noise=True, generator=g)
    peak = b.params[:, IDX["hr_peak_flux"]]
    torch.testing.assert_close(noisy.amax(dim=(1, 2, 3)), peak)
    torch.testing.assert_close((noisy / peak.reshape(-1, 1, 1, 1)).clamp(0, 1), b.hr)
    # the clean image, scaled the same way, differs from HR by noise only (a few % of the peak)
    clean = sim.render(b.params, noise=False) / peak.reshape(-1, 1, 1, 1)
    rms = (clean - b.hr).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert (rms < 0.03).all() and (rms > 1e-4).all(), rms


def test_model_i_fixed_values_are_recorded():
    b = simulate(3, preset="model_i", seed=1, hr_size=40)
    fixed = {"theta_E": 1.28, "lens_e1": 0.1, "gamma1": 0.05, "src_amp": 20.0, "src_R": 0.25, "src_n": 1.0,
             "psf_fwhm": 0.087, "background_rms": 1e-2}  # fmt: skip
    for name, value in fixed.items():
        torch.testing.assert_close(b.params[:, IDX[name]], torch.full((3,), value))
    t = b.params[:, IDX["exposure_time"]]
    assert ((t >= 10**3 * 0.999) & (t <= 10**3.5 * 1.001)).all()
    assert (b.params[:, IDX["src_x"]].abs() <= 0.35).all()


def test_unknown_preset_and_bad_sizes():
    with pytest.raises(DataError, match=r"'nope'.*deeplense_sr.*model_i.*wide"):
        LensingSimulator("nope")
    with pytest.raises(DataError, match="nope"):
        simulate(1, preset="nope")
    with pytest.raises(DataError, match="hr_size=151"):
        LensingSimulator(hr_size=151)
    with pytest.raises(DataError, match="lr_mode"):
        LensingSimulator(lr_mode="other")
    with pytest.raises(DataError):
        dataclasses.replace(PRESETS["wide"], poisson="sometimes")


def test_float64_path_and_custom_preset():
    preset = dataclasses.replace(PRESETS["deeplense_sr"], name="custom", background_rms=Prior(0.0, 0.0))
    assert isinstance(preset, LensPreset)
    sim64 = LensingSimulator(preset, hr_size=32, dtype=torch.float64)
    b = sim64.sample(3, torch.Generator().manual_seed(2))
    assert b.hr.dtype == b.lr.dtype == b.params.dtype == torch.float64
    assert b.params[:, IDX["background_rms"]].eq(0).all()
    sim32 = LensingSimulator(preset, hr_size=32, dtype=torch.float32)
    c32 = sim32.render(b.params, noise=False)
    c64 = sim64.render(b.params, noise=False)
    assert ((c32.double() - c64).abs().amax() / c64.amax()) < 1e-5


def test_lr_mode_independent():
    sim = LensingSimulator("deeplense_sr", hr_size=48, lr_mode="independent")
    b = sim.sample(4, torch.Generator().manual_seed(9))
    assert b.lr.shape == (4, 1, 24, 24) and b.lr.min() >= 0 and b.lr.max() <= 1
    mean_lr = F.avg_pool2d(b.hr, 2)
    assert not torch.equal(b.lr, mean_lr)  # its own PSF and noise
    # same flux scale as HR: the 2x2 mean of HR and the independent LR agree to a few % of the peak
    err = (b.lr - mean_lr).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert (err < 0.05).all(), err
    torch.testing.assert_close(b.lr.mean(dim=(1, 2, 3)), mean_lr.mean(dim=(1, 2, 3)), atol=0.01, rtol=0.05)


def test_exact_poisson_noise_scales_with_exposure():
    base = dataclasses.replace(PRESETS["model_i"], background_rms=Prior(0.0, 0.0))
    sim_lo = LensingSimulator(dataclasses.replace(base, exposure_time=Prior(100.0, 100.0)), hr_size=40)
    sim_hi = LensingSimulator(dataclasses.replace(base, exposure_time=Prior(1e4, 1e4)), hr_size=40)
    p = sim_lo.sample_params(4, torch.Generator().manual_seed(0))
    clean = sim_lo.render(p, noise=False)
    lo = sim_lo.render(p, generator=torch.Generator().manual_seed(1)) - clean
    p[:, IDX["exposure_time"]] = 1e4
    hi = sim_hi.render(p, generator=torch.Generator().manual_seed(1)) - clean
    ratio = lo.std() / hi.std()
    assert 7 < ratio < 13, ratio  # sqrt(100) for Poisson noise


def test_deeplense_sr_bicubic_psnr_band():
    """The default preset is calibrated so that bicubic x2 scores as on the real DeepLense SR set."""
    b = simulate(64, seed=0)
    up = F.interpolate(b.lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    psnr = -10 * torch.log10((up - b.hr).pow(2).mean(dim=(1, 2, 3)))
    assert 40.5 < psnr.mean().item() < 43.0, psnr.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_noise_free():
    params = LensingSimulator(hr_size=48).sample_params(3, torch.Generator().manual_seed(0))
    cpu = LensingSimulator(hr_size=48, dtype=torch.float64).render(params.double(), noise=False)
    gpu = LensingSimulator(hr_size=48, device="cuda", dtype=torch.float64).render(
        params.double(), noise=False
    )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    b = simulate(4, seed=1, hr_size=48, device="cuda")
    assert b.hr.device.type == "cuda" and torch.equal(b.lr, F.avg_pool2d(b.hr, 2))


# ----------------------------------------------------------------------------------------------- windows
def _noise_free(preset: str) -> LensPreset:
    """A preset whose noise is negligible (1e-15 of the flux), so that sample() is its clean image."""
    return dataclasses.replace(
        PRESETS[preset], exposure_time=Prior(1e30, 1e30), background_rms=Prior(0.0, 0.0)
    )


def _crops(img: torch.Tensor, offsets: torch.Tensor, w: int, scale: int = 1) -> torch.Tensor:
    return torch.stack(
        [
            img[i, :, y // scale : (y + w) // scale, x // scale : (x + w) // scale]
            for i, (y, x) in enumerate(offsets.tolist())
        ]
    )


# corners, every border, the interior, odd (unaligned) places; window 12 of a 32 px image
OFFSETS = torch.tensor(
    [[0, 0], [0, 20], [20, 0], [20, 20], [0, 9], [13, 0], [20, 7], [5, 20], [10, 10], [3, 17]]
)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("preset", ["deeplense_sr", "wide"])
def test_render_windows_equal_crops_of_full_render(preset, dtype, tol):
    sim = LensingSimulator(preset, hr_size=32, dtype=dtype)
    params = sim.sample_params(len(OFFSETS), torch.Generator().manual_seed(4))
    if preset == "wide":  # a wide PSF (radius 6 px): the margin and the border padding matter more
        params[::2, IDX["psf_fwhm"]] = 0.15
    full = sim.render(params, noise=False)
    win = sim.render_windows(params, OFFSETS, 12, noise=False)
    assert win.shape == (len(OFFSETS), 1, 12, 12) and win.dtype == dtype
    err = (win - _crops(full, OFFSETS, 12)).abs().amax(dim=(1, 2, 3)) / full.amax(dim=(1, 2, 3))
    assert (err < tol).all(), err
    whole = sim.render_windows(params[:2], torch.zeros(2, 2, dtype=torch.int64), 32, noise=False)
    assert ((whole - full[:2]).abs().amax() / full[:2].amax()) < tol


@pytest.mark.parametrize("lr_mode", ["mean", "independent"])
@pytest.mark.parametrize("preset", ["deeplense_sr", "wide"])
def test_window_pairs_equal_crops_of_full_pairs(preset, lr_mode):
    sim = LensingSimulator(_noise_free(preset), hr_size=32, dtype=torch.float64, lr_mode=lr_mode)
    full = sim.sample(8, torch.Generator().manual_seed(3))
    offsets = OFFSETS[:8] // 2 * 2
    b = sim.window_pairs(full.params, offsets, 12, noise=False)
    assert isinstance(b, WindowBatch) and b.lr.shape == (8, 1, 6, 6) and torch.equal(b.offsets, offsets)
    # the locator finds every image's peak here, so the normalisation is the full render's
    torch.testing.assert_close(b.params, full.params, rtol=1e-12, atol=0)
    torch.testing.assert_close(b.hr, _crops(full.hr, offsets, 12), rtol=0, atol=1e-12)
    torch.testing.assert_close(b.lr, _crops(full.lr, offsets, 12, scale=2), rtol=0, atol=1e-12)
    if lr_mode == "mean":
        assert torch.equal(b.lr, F.avg_pool2d(b.hr, 2))


def test_window_peak_is_the_maximum_over_its_pixels():
    """Noise-free, the normalising peak is the full image's maximum over peak_mask (window and patches)."""
    sim = LensingSimulator("wide", hr_size=32, dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    params, offsets = sim.sample_params(16, g), sim.sample_offsets(16, 8, g)
    mask = sim.peak_mask(params, offsets, 8)
    assert mask.shape == (16, 1, 32, 32) and mask.dtype == torch.bool
    assert torch.equal(
        mask[:, 0].sum(dim=(1, 2)) >= 64, torch.ones(16, dtype=torch.bool)
    )  # the window at least
    assert (mask[:, 0].float().mean(dim=(1, 2)) < 1).all()  # not the whole image
    full = sim.render(params, noise=False)
    b = sim.window_pairs(params, offsets, 8, noise=False)
    expected = full.masked_fill(~mask, -torch.inf).amax(dim=(1, 2, 3))
    torch.testing.assert_close(b.params[:, IDX["hr_peak_flux"]], expected, rtol=1e-12, atol=0)
    assert b.hr.max() <= 1 and b.hr.min() >= 0
    # the whole image as the window: exactly the full render's pairs
    whole = sim.window_pairs(params, torch.zeros(16, 2, dtype=torch.int64), 32, noise=False)
    torch.testing.assert_close(whole.hr, full / full.amax(dim=(1, 2, 3), keepdim=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 4])
def test_sample_windows_offsets_aligned_in_bounds_and_per_sample(scale):
    sim = LensingSimulator("deeplense_sr", hr_size=32, scale=scale)
    b = sim.sample_windows(48, 16, torch.Generator().manual_seed(1))
    assert b.hr.shape == (48, 1, 16, 16) and b.lr.shape == (48, 1, 16 // scale, 16 // scale)
    assert b.offsets.shape == (48, 2) and b.offsets.dtype == torch.int64
    assert (b.offsets % scale == 0).all() and (b.offsets >= 0).all() and (b.offsets <= 16).all()
    assert len({tuple(o) for o in b.offsets.tolist()}) > 10  # each sample its own place
    assert len(set(b.params[:, IDX["src_x"]].tolist())) == 48  # and its own parameters
    assert torch.equal(b.lr, F.avg_pool2d(b.hr, scale))
    assert b.hr.min() >= 0 and b.hr.max() <= 1 and torch.isfinite(b.params).all()
    for i, prior in enumerate(sim.preset.priors()):
        lo, hi = prior.support
        col = b.params[:, i].double()
        assert ((col >= lo * (1 - 1e-6) - 1e-9) & (col <= hi * (1 + 1e-6) + 1e-9)).all(), PARAM_NAMES[i]


def test_sample_windows_deterministic_and_reproducible():
    sim = LensingSimulator("model_i", hr_size=32)
    a = sim.sample_windows(6, 12, torch.Generator().manual_seed(5))
    b = sim.sample_windows(6, 12, torch.Generator().manual_seed(5))
    c = sim.sample_windows(6, 12, torch.Generator().manual_seed(6))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("hr", "lr", "params", "offsets"))
    assert not torch.equal(a.hr, c.hr) and not torch.equal(a.offsets, c.offsets)
    # draws: the parameters, the offsets, then the noise (exact Poisson counts here)
    g = torch.Generator().manual_seed(5)
    params, offsets = sim.sample_params(6, g), sim.sample_offsets(6, 12, g)
    assert torch.equal(params[:, :-1], a.params[:, :-1]) and torch.equal(offsets, a.offsets)
    again = sim.window_pairs(params, offsets, 12, generator=g)
    assert torch.equal(again.hr, a.hr) and torch.equal(again.params, a.params)


@pytest.mark.parametrize("preset", ["deeplense_sr", "model_i"])
def test_window_noise_statistics_match_full_render(preset):
    """(noisy - clean) / expected sigma has variance 1 in windows as in whole images, background alike."""
    sim = LensingSimulator(preset, hr_size=96)  # room for background beyond the Einstein ring
    params = sim.sample_params(48, torch.Generator().manual_seed(2))
    offsets = sim.sample_offsets(48, 32, torch.Generator().manual_seed(3))
    full_clean = sim.render(params, noise=False)
    full = sim.render(params, generator=torch.Generator().manual_seed(4)) - full_clean
    win_clean = sim.render_windows(params, offsets, 32, noise=False)
    win = sim.render_windows(params, offsets, 32, generator=torch.Generator().manual_seed(4)) - win_clean
    assert not torch.equal(win, _crops(full, offsets, 32))  # noise of its own
    t = params[:, IDX["exposure_time"], None, None, None]
    bkg = params[:, IDX["background_rms"], None, None, None]
    z_full = full / (full_clean.clamp_min(0) / t + bkg**2).sqrt()
    z_win = win / (win_clean.clamp_min(0) / t + bkg**2).sqrt()
    assert abs(z_full.var().item() - 1) < 0.05 and abs(z_win.var().item() - 1) < 0.05
    # faint pixels (background-dominated, < 1 expected count) and bright ones (Poisson-dominated)
    for lo, hi in ((0.0, 1.0), (100.0, math.inf)):
        sel_full, sel_win = (
            (full_clean * t >= lo) & (full_clean * t < hi),
            (win_clean * t >= lo) & (win_clean * t < hi),
        )
        assert sel_win.sum() > 5000, (lo, sel_win.sum())  # a variance to ~2 %
        ratio = z_win[sel_win].var().item() / z_full[sel_full].var().item()
        assert abs(ratio - 1) < 0.07, (lo, ratio)


def test_window_normalisation_close_to_full_render():
    """The normalising peak (noisy) exceeds the clean peak by the same few % as the full image's maximum."""
    sim = LensingSimulator("deeplense_sr", hr_size=64)
    g = torch.Generator().manual_seed(0)
    params, offsets = sim.sample_params(96, g), sim.sample_offsets(96, 16, g)
    clean = sim.render(params, noise=False).amax(dim=(1, 2, 3))
    full = sim.render(params, generator=g).amax(dim=(1, 2, 3)) / clean - 1
    win = sim.window_pairs(params, offsets, 16, generator=g).params[:, IDX["hr_peak_flux"]] / clean - 1
    assert 0.01 < full.mean() < 0.1, full.mean()
    assert abs(win.mean() - full.mean()) < 0.01, (win.mean(), full.mean())


def test_window_bad_inputs():
    sim = LensingSimulator("deeplense_sr", hr_size=32)
    params = sim.sample_params(2)
    for bad in (0, 7, 34, 12.0):
        with pytest.raises(DataError, match=f"window={bad!r}"):
            sim.sample_windows(2, bad)
    with pytest.raises(DataError, match="n=0"):
        sim.sample_windows(0, 8)
    with pytest.raises(DataError, match=r"offsets\[1\]=\[3, 0\].*multiples of scale=2"):
        sim.window_pairs(params, torch.tensor([[0, 0], [3, 0]]), 8)
    with pytest.raises(DataError, match=r"offsets\[0\]=\[26, 0\].*\[0, 24\]"):
        sim.render_windows(params, torch.tensor([[26, 0], [0, 0]]), 8)
    with pytest.raises(DataError, match="offsets has shape"):
        sim.render_windows(params, torch.zeros(2, 2), 8)
    with pytest.raises(DataError, match="offsets has shape"):
        sim.render_windows(params, torch.zeros(3, 2, dtype=torch.int64), 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_windows_match_cpu():
    cpu = LensingSimulator(hr_size=48, dtype=torch.float64)
    gpu = LensingSimulator(hr_size=48, device="cuda", dtype=torch.float64)
    params = cpu.sample_params(4, torch.Generator().manual_seed(0))
    offsets = torch.tensor([[0, 0], [24, 24], [10, 30], [30, 0]])
    ref = cpu.window_pairs(params, offsets, 16, noise=False)
    out = gpu.window_pairs(params.cuda(), offsets.cuda(), 16, noise=False)
    torch.testing.assert_close(out.hr.cpu(), ref.hr, rtol=1e-9, atol=1e-12)
    b = gpu.sample_windows(8, 16, torch.Generator(device="cuda").manual_seed(1))
    assert b.hr.device.type == "cuda" and b.offsets.device.type == "cuda"
    assert torch.equal(b.lr, F.avg_pool2d(b.hr, 2))
