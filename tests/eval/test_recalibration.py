"""Post-hoc spread recalibration: fitted scales undo a known mis-scaling per bin and calibrate fresh data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.eval.recalibration import SpreadScaleFitter, SpreadScales, required_scale
from hpc_sr.eval.uncertainty import CalibrationAccumulator, central_interval


def miscaled(seed: int, n: int = 16, images: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples 2x too narrow on a faint left half and 2x too wide on a bright right half: truth and
    samples share a centre; the truth's spread is 0.01 everywhere."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.full((images, 1, size, size), 0.02)
    centre[..., size // 2 :] = 0.3
    sample_sd = torch.full_like(centre, 0.005)
    sample_sd[..., size // 2 :] = 0.02
    truth = centre + 0.01 * torch.randn(centre.shape, generator=g)
    raw = centre + sample_sd * torch.randn((n, *centre.shape), generator=g)
    return raw, truth


def test_fitted_scales_undo_a_known_miscaling_per_bin() -> None:
    fitter = SpreadScaleFitter(edges=(0.1,))
    for seed in range(6):
        fitter.update(*miscaled(seed))
    scales = fitter.compute()
    assert scales.scales[0] == pytest.approx(2.0, rel=0.08)  # faint half: samples 2x too narrow
    assert scales.scales[1] == pytest.approx(0.5, rel=0.08)  # bright half: 2x too wide
    assert scales.pixels == (6 * 4 * 32 * 16, 6 * 4 * 32 * 16)
    raw, truth = miscaled(100)  # fresh images: the raw samples are off, the scaled ones on 68 %
    for samples, ok in ((raw, False), (scales.apply(raw), True)):
        cal = CalibrationAccumulator(edges=(0.1,), names=("faint", "bright"))
        cal.update(samples.clamp(0, 1), truth.clamp(0, 1))
        coverage = [b["coverage"] for b in cal.compute()["bins"]]
        assert all(abs(c - 0.68) < 0.04 for c in coverage) is ok, coverage


def test_scaling_keeps_the_sample_mean_and_every_block_mean() -> None:
    torch.manual_seed(0)
    base = torch.rand(1, 1, 16, 16) * 0.2
    dev = torch.randn(8, 1, 1, 16, 16) * 0.01
    block_means = F.interpolate(F.avg_pool2d(dev.flatten(0, 1), 2), scale_factor=2).view_as(dev)
    dev = dev - block_means  # every sample keeps its block means
    dev = dev - dev.mean(0)
    raw = base + dev
    scales = SpreadScales(edges=(0.005, 0.05, 0.1), scales=(0.5, 1.5, 3.0, 0.8), block=2)
    out = scales.apply(raw)
    assert not torch.allclose(out, raw)
    torch.testing.assert_close(out.mean(0), raw.mean(0), atol=1e-7, rtol=0)
    torch.testing.assert_close(F.avg_pool2d(out.flatten(0, 1), 2), F.avg_pool2d(raw.flatten(0, 1), 2),
                               atol=1e-7, rtol=0)


def test_per_pixel_scales_follow_each_pixel_not_its_block() -> None:
    centre = torch.tensor([[0.001, 0.2], [0.001, 0.001]]).view(1, 1, 2, 2)
    per_pixel = SpreadScales(edges=(0.05,), scales=(1.0, 3.0)).scale_map(centre)
    per_block = SpreadScales(edges=(0.05,), scales=(1.0, 3.0), block=2).scale_map(centre)
    assert per_pixel.flatten().tolist() == [1.0, 3.0, 1.0, 1.0]
    assert per_block.flatten().tolist() == [3.0] * 4  # the block mean 0.05075 is bright


def test_required_scale_is_the_smallest_scale_that_covers() -> None:
    torch.manual_seed(1)
    raw = torch.rand(16, 1, 1, 4, 4) * 0.1 + 0.2
    hr = torch.rand(1, 1, 4, 4) * 0.2 + 0.15
    r = required_scale(raw, hr)
    centre = raw.mean(0)
    for k, ok in ((0.999, False), (1.001, True)):
        lo, hi = central_interval(centre + k * r * (raw - centre))
        covered = (hr >= lo) & (hr <= hi)
        assert bool(covered[r > 0].all()) is ok


def test_required_scale_respects_the_clamp_at_zero() -> None:
    raw = torch.tensor([-0.02, -0.01, 0.0, 0.01] * 4).view(16, 1, 1, 1, 1) - 0.01  # centre -0.01
    assert float(required_scale(raw, torch.zeros(1, 1, 1, 1))) == 0.0  # clamped samples cover 0 at any scale
    assert float(required_scale(raw, torch.full((1, 1, 1, 1), 0.05))) > 1.0


def test_fitter_sums_merge_exactly_over_shards() -> None:
    whole, a, b = SpreadScaleFitter(), SpreadScaleFitter(), SpreadScaleFitter()
    for seed in range(2):
        whole.update(*miscaled(seed))
    a.update(*miscaled(0))
    b.update(*miscaled(1))
    assert a.merge(b).compute() == whole.compute()


def test_spread_scales_round_trip_and_clear_errors(tmp_path: Path) -> None:
    s = SpreadScales(edges=(0.01,), scales=(1.2, 0.9), pixels=(10, 20))
    record = tmp_path / "scales.json"
    record.write_text(json.dumps(s.to_dict()))
    assert SpreadScales.load(record) == s
    wrapped = tmp_path / "eval.json"
    wrapped.write_text(json.dumps({"n": 3, "spread_scales": {**s.to_dict(), "fitted_on": "val"}}))
    assert SpreadScales.load(wrapped) == s
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"edges": [0.01]}))
    with pytest.raises(ValueError, match=r"bad\.json: not a spread-scales record"):
        SpreadScales.load(bad)
    with pytest.raises(ValueError, match="1 edges need 2 scales"):
        SpreadScales(edges=(0.01,), scales=(1.0,))
    with pytest.raises(ValueError, match="finite and > 0"):
        SpreadScales(edges=(0.01,), scales=(1.0, 0.0))


def test_the_fit_is_exact_on_its_own_samples_where_the_clamp_bites() -> None:
    """Sky pixels: samples straddle 0 and HR is clipped there; the fitted bins cover 68 % of the fitting
    pixels, as the calibration table measures them (interval of the raw samples, ends clipped)."""
    g = torch.Generator().manual_seed(3)
    centre = torch.rand((4, 1, 32, 32), generator=g) * 0.01
    raw = centre + 0.004 * torch.randn((16, *centre.shape), generator=g)
    hr = (centre + 0.006 * torch.randn(centre.shape, generator=g)).clamp(0, 1)
    fitter = SpreadScaleFitter(edges=(0.002, 0.005))
    fitter.update(raw, hr)
    scales = fitter.compute()
    scaled = scales.apply(raw)
    cal = CalibrationAccumulator(edges=(0.002, 0.005), names=("a", "b", "c"))
    cal.update(scaled.clamp(0, 1), hr, raw=scaled)
    assert [b["coverage"] for b in cal.compute()["bins"]] == pytest.approx([0.68] * 3, abs=0.002)


def test_a_bin_without_spread_is_a_clear_error() -> None:
    raw = torch.full((16, 1, 1, 4, 4), 0.3)  # every sample the same: no scale widens the interval
    fitter = SpreadScaleFitter(edges=(0.1,))
    fitter.update(raw, torch.full((1, 1, 4, 4), 0.4))
    with pytest.raises(ValueError, match=r"needs a scale above 1000 .*brightness bin \[0\.1, 1\]"):
        fitter.compute()
