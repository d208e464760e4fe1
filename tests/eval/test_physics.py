"""Per-image physics and the accumulator (hpc_sr.eval.physics), on simulated images and their truth."""

from __future__ import annotations

import math

import pytest
import torch

from hpc_sr.data.truth import simulation_truth
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.eval.morphology import ARC_K, arc_mask, lr_consistency_residual, masked_psnr, ring_radius
from hpc_sr.eval.physics import PhysicsAccumulator, per_image_physics
from hpc_sr.eval.spectra import band_power_ratios


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


def test_per_image_physics_arc_mask_from_hr_when_no_truth(sim_batch: tuple) -> None:
    hr, lr, params = sim_batch
    truth = simulation_truth(params, "wide", 32)
    with_truth = per_image_physics(hr, hr, lr, 2, **truth.as_kwargs())
    without = per_image_physics(hr, hr, lr, 2)
    assert set(with_truth) - set(without) == {"band_vs_clean", "flux_err_vs_clean", "ring_clean", "theta_e"}
    assert float(with_truth["arc_fraction"].min()) > 0 and float(without["arc_fraction"].min()) > 0
