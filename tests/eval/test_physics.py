"""Physics metrics: spectra, arc mask, LR consistency, ring radius, the accumulator and the noise ceiling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator, gaussian_blur
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.errors import DataError
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale
from hpc_sr.eval.physics import (
    ARC_K,
    PhysicsAccumulator,
    arc_mask,
    band_power_ratios,
    band_powers,
    clean_images,
    estimate_noise_rms,
    lens_centre_pixels,
    lr_consistency_residual,
    lr_consistent_projection,
    masked_psnr,
    noise_ceiling_estimate,
    per_image_physics,
    radial_power_spectrum,
    ring_profile,
    ring_radius,
    simulation_truth,
    theta_e_pixels,
)

P = {name: i for i, name in enumerate(PARAM_NAMES)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ring(n: int, size: int, radius: float, centre: tuple[float, float], width: float = 1.2) -> torch.Tensor:
    i = torch.arange(size, dtype=torch.float64)
    r = torch.sqrt((i[:, None] - centre[0]) ** 2 + (i[None, :] - centre[1]) ** 2)
    return torch.exp(-0.5 * ((r - radius) / width) ** 2).expand(n, 1, size, size).clone()


# ----------------------------------------------------------------------------------------------- spectra
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


def test_lens_centre_follows_the_simulator_pixel_convention() -> None:
    sim = LensingSimulator("wide", hr_size=32, dtype=torch.float64)
    p = sim.sample_params(2, _gen(5))
    p[:, P["src_amp"]] = 0.0  # lens light only: its centre is the brightest pixel
    p[:, P["ll_R"]], p[:, P["ll_amp"]] = 0.3, 5.0
    p[:, P["lens_x"]] = torch.tensor([0.225, -0.175], dtype=torch.float64)  # pixel centres: columns 20, 12
    p[:, P["lens_y"]] = torch.tensor([-0.125, 0.275], dtype=torch.float64)  # rows 13, 21
    p[:, P["hr_peak_flux"]] = 1.0
    img = sim.render(p, noise=False)
    centre = lens_centre_pixels(p, "wide", 32)
    assert torch.allclose(centre, torch.tensor([[13.0, 20.0], [21.0, 12.0]], dtype=torch.float64))
    brightest = img.flatten(1).argmax(1)
    assert torch.equal(torch.stack((brightest // 32, brightest % 32), 1), centre.round().long())
    assert torch.allclose(theta_e_pixels(p, "wide"), p[:, P["theta_E"]] / 0.05)


# ----------------------------------------------------------------------------------------------- accumulator
@pytest.fixture(scope="module")
def sim_batch() -> tuple[torch.Tensor, ...]:
    sim = LensingSimulator("wide", hr_size=32)
    b = sim.sample(8, _gen(6))
    return b.hr, b.lr, b.params


def test_accumulator_merge_equals_whole_and_matches_direct_computation(sim_batch: tuple) -> None:
    hr, lr, params = sim_batch
    truth = simulation_truth(params, "wide", 32)
    sr = bicubic_upscale(lr, 2)
    whole, a, b = PhysicsAccumulator(2), PhysicsAccumulator(2), PhysicsAccumulator(2)
    halves = [slice(0, 3), slice(3, 8)]
    for s in halves:
        kw = {k: v[s] for k, v in truth.as_kwargs().items()}
        whole.update(sr[s], hr[s], lr[s], **kw)
    a.update(
        sr[halves[0]], hr[halves[0]], lr[halves[0]], **{k: v[halves[0]] for k, v in truth.as_kwargs().items()}
    )
    b.update(
        sr[halves[1]], hr[halves[1]], lr[halves[1]], **{k: v[halves[1]] for k, v in truth.as_kwargs().items()}
    )
    assert torch.equal(a.merge(b).state(), whole.state())
    got = whole.compute()
    assert got["n"] == got["n_clean"] == got["n_theta"] == 8
    # direct
    s = sr.double().clamp(0, 1)
    h = hr.double()
    ratios = band_power_ratios(s, truth.clean)
    assert got["band_ratio_high_vs_clean"] == pytest.approx(float(ratios[:, 2].log().mean().exp()), rel=1e-12)
    assert got["band_ratio_low_vs_hr"] == pytest.approx(
        float(band_power_ratios(s, h)[:, 0].log().mean().exp()), rel=1e-12
    )
    assert got["lr_residual"] == pytest.approx(float(lr_consistency_residual(s, lr, 2).mean()), rel=1e-12)
    arc = masked_psnr(s, h, arc_mask(truth.clean, ARC_K * truth.noise_rms))
    assert got["arc_n"] == int(torch.isfinite(arc).sum()) > 0
    assert got["arc_psnr"] == pytest.approx(float(arc[torch.isfinite(arc)].mean()), rel=1e-12)
    flux = ((s.sum((1, 2, 3)) - h.sum((1, 2, 3))).abs() / h.sum((1, 2, 3))).mean()
    assert got["flux_err"] == pytest.approx(float(flux), rel=1e-12)
    ref = ring_radius(truth.clean, truth.centre)
    r_sr = ring_radius(s, truth.centre, near=ref)
    r_hr = ring_radius(h, truth.centre, near=ref)
    assert got["ring_err_vs_clean"] == pytest.approx(float((r_sr - ref).abs().mean()), rel=1e-12)
    assert got["ring_err_vs_hr"] == pytest.approx(float((r_sr - r_hr).abs().mean()), rel=1e-12)
    assert got["ring_err_hr_vs_theta_e"] == pytest.approx(
        float((r_hr - truth.theta_e).abs().mean()), rel=1e-12
    )
    # HR against itself: ratios 1, no residual, no ring error
    self_acc = PhysicsAccumulator(2)
    self_acc.update(hr, hr, lr, **truth.as_kwargs())
    me = self_acc.compute()
    assert me["band_ratio_mid_vs_hr"] == pytest.approx(1.0) and me["ring_err_vs_hr"] == 0.0
    assert me["arc_psnr"] == pytest.approx(100.0) and me["lr_residual"] < 1e-7


def test_accumulator_without_truth_and_state_round_trip(sim_batch: tuple) -> None:
    hr, lr, _ = sim_batch
    acc = PhysicsAccumulator(2)
    per = acc.update(bicubic_upscale(lr, 2), hr, lr)
    assert set(per) == {
        "band_vs_hr",
        "lr_residual",
        "flux_err",
        "arc_psnr",
        "arc_fraction",
        "ring_sr",
        "ring_hr",
    }
    got = acc.compute()
    assert got["n"] == 8 and got["n_clean"] == 0 and math.isnan(got["band_ratio_high_vs_clean"])
    assert math.isnan(got["ring_err_vs_theta_e"]) and got["band_ratio_high_vs_hr"] < 1.0
    other = PhysicsAccumulator(2)
    other.load_state(acc.state())
    assert other.compute() == pytest.approx(got, nan_ok=True)
    with pytest.raises(ValueError, match="expected shape"):
        other.load_state(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="different"):
        other.merge(PhysicsAccumulator(2, bands=((0.0, 0.25), (0.25, 0.5))))
    empty = PhysicsAccumulator(2).compute()
    assert empty["n"] == 0 and math.isnan(empty["arc_psnr"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accumulator_on_cuda_matches_cpu(sim_batch: tuple) -> None:
    hr, lr, params = sim_batch
    truth = simulation_truth(params, "wide", 32)
    cpu, gpu = PhysicsAccumulator(2), PhysicsAccumulator(2)
    cpu.update(bicubic_upscale(lr, 2), hr, lr, **truth.as_kwargs())
    g = {k: v.cuda() for k, v in simulation_truth(params.cuda(), "wide", 32).as_kwargs().items()}
    gpu.update(bicubic_upscale(lr.cuda(), 2), hr.cuda(), lr.cuda(), **g)
    assert torch.allclose(gpu.state(), cpu.state(), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------- ceiling
@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("physics") / "data"
    simulate_to_shards(
        out, num=24, preset="deeplense_sr", seed=7, shard_size=10, hr_size=32, split=(0.5, 0.25, 0.25)
    )
    return out


def _old_ceiling(lr: torch.Tensor, hr: torch.Tensor, params: torch.Tensor) -> dict[str, dict[str, float]]:
    """The method of tools/noise_ceiling.py before it called the library (float32 projection)."""
    sim = LensingSimulator("deeplense_sr", hr_size=hr.shape[-1], scale=2, dtype=torch.float64)
    p = params.double()
    clean = (sim.render(p, noise=False) / p[:, -1].reshape(-1, 1, 1, 1)).clamp(0, 1).float()
    ceil = clean + F.interpolate(lr - F.avg_pool2d(clean, 2), scale_factor=2, mode="nearest")
    out = {}
    for name, x in (("bicubic", bicubic_upscale(lr, 2)), ("noise_free", clean), ("ceiling", ceil)):
        acc = MetricAccumulator()
        acc.update(x, hr)
        out[name] = acc.compute()
    return out


def test_noise_ceiling_beats_bicubic_and_equals_the_old_tool(
    shards: Path, capsys: pytest.CaptureFixture
) -> None:
    from tools.noise_ceiling import ceiling, main, read_split

    lr, hr, params, scale = read_split(str(shards), "train", 0)
    assert scale == 2 and len(lr) == 12
    est = noise_ceiling_estimate(lr, params, "deeplense_sr", 2, param_names=PARAM_NAMES)
    assert est.dtype == torch.float64 and est.shape == hr.shape
    assert float(lr_consistency_residual(est, lr, 2).max()) < 1e-12
    acc = MetricAccumulator()
    acc.update(est, hr)
    lib = acc.compute()
    old = _old_ceiling(lr, hr, params)
    assert lib["psnr"] > old["bicubic"]["psnr"] + 0.1
    assert lib["psnr"] == pytest.approx(old["ceiling"]["psnr"], abs=1e-5)
    assert lib["ssim"] == pytest.approx(old["ceiling"]["ssim"], abs=1e-7)
    tool = ceiling(str(shards), split="train", batch=5)  # preset read from the manifest
    for name in ("bicubic", "noise_free", "ceiling"):
        assert tool[name]["n"] == 12
        assert tool[name]["psnr"] == pytest.approx(old[name]["psnr"], abs=1e-5), name
        assert tool[name]["mse"] == pytest.approx(old[name]["mse"], rel=1e-6), name
    assert tool["ceiling"]["psnr"] == pytest.approx(lib["psnr"], abs=1e-9)
    assert main([str(shards), "--split", "train"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["split"] == "train" and last["ceiling"]["psnr"] == pytest.approx(tool["ceiling"]["psnr"])
    var = ceiling(str(shards), split="train", batch=5, weighting="variance")  # the conditional mean: higher
    assert var["bicubic"] == tool["bicubic"] and var["ceiling"]["psnr"] > tool["ceiling"]["psnr"]
    assert main([str(shards), "--split", "train", "--weighting", "variance"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["ceiling"]["psnr"] == pytest.approx(var["ceiling"]["psnr"])


def test_variance_weighted_ceiling_is_consistent_and_equal_weighting_for_uniform_noise(shards: Path) -> None:
    from tools.noise_ceiling import read_split

    lr, _, params, _ = read_split(str(shards), "train", 4)
    var = noise_ceiling_estimate(lr, params, "deeplense_sr", 2, weighting="variance")
    eq = noise_ceiling_estimate(lr, params, "deeplense_sr", 2)
    assert float(lr_consistency_residual(var, lr, 2).max()) < 1e-12
    assert float((var - eq).abs().max()) > 1e-4  # brighter pixels take more of the residual
    flat = params.clone()
    flat[:, P["exposure_time"]] = 1e30  # no Poisson term: the same variance everywhere
    uniform = noise_ceiling_estimate(lr, flat, "deeplense_sr", 2, weighting="variance")
    assert torch.allclose(uniform, eq, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="weighting"):
        noise_ceiling_estimate(lr, params, "deeplense_sr", 2, weighting="poisson")


def test_clean_images_check_their_inputs(sim_batch: tuple) -> None:
    _, _, params = sim_batch
    clean = clean_images(params, "wide", 32)
    assert clean.dtype == torch.float64 and float(clean.min()) >= 0 and float(clean.max()) <= 1
    with pytest.raises(DataError, match="param_names"):
        clean_images(params, "wide", 32, param_names=["theta_E"])
    bad = params.clone()
    bad[1, -1] = float("nan")
    with pytest.raises(DataError, match=r"params\[1\] has hr_peak_flux"):
        clean_images(bad, "wide", 32)
    with pytest.raises(DataError, match="unknown lensing preset"):
        clean_images(params, "nope", 32)
    with pytest.raises(DataError, match="shape"):
        clean_images(params[:, :5], "wide", 32)


def test_per_image_physics_arc_mask_from_hr_when_no_truth(sim_batch: tuple) -> None:
    hr, lr, params = sim_batch
    truth = simulation_truth(params, "wide", 32)
    with_truth = per_image_physics(hr, hr, lr, 2, **truth.as_kwargs())
    without = per_image_physics(hr, hr, lr, 2)
    assert set(with_truth) - set(without) == {"band_vs_clean", "flux_err_vs_clean", "ring_clean", "theta_e"}
    assert float(with_truth["arc_fraction"].min()) > 0 and float(without["arc_fraction"].min()) > 0
