"""Inference samples of a stochastic generator: mean and sigma, scaled as `evaluate --spread-scales` does."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.apps.evaluate import _Sampler
from hpc_sr.apps.inference.sampling import (
    SamplingError,
    sample_mean_and_sigma,
    spread_scales_of,
    unit_seed,
)
from hpc_sr.eval.recalibration import SpreadScales
from hpc_sr.eval.uncertainty import draw_samples
from hpc_sr.models.artifacts import CALIBRATION_FORMAT
from tests.models.test_stochastic import tiny

# every pixel of the tiny generator's output on rand/4 LR falls in one of these bins
SCALES = SpreadScales(edges=(0.05, 0.1, 0.2), scales=(0.5, 2.0, 3.0, 4.0))


def lr() -> torch.Tensor:
    return torch.rand(3, 1, 8, 10, generator=torch.Generator().manual_seed(1)) / 4


def test_shapes_and_the_raw_spread_of_the_evaluate_draws() -> None:
    g = tiny("srresnet", 1)
    mean, sigma = sample_mean_and_sigma(g, lr(), 8, seed=3)
    assert mean.shape == sigma.shape == (3, 1, 16, 20) and mean.dtype == sigma.dtype == torch.float32
    assert (sigma >= 0).all() and sigma.max() > 0
    raw = draw_samples(g, lr(), 8, 3, clamp=False)  # unclamped: the mean is not biased up in the background
    torch.testing.assert_close(mean, raw.double().mean(0).float(), rtol=0, atol=0)
    torch.testing.assert_close(sigma, raw.double().std(0).float(), rtol=0, atol=0)
    again = sample_mean_and_sigma(g, lr(), 8, seed=3)
    assert torch.equal(again[0], mean) and torch.equal(again[1], sigma)  # seeded
    assert not torch.equal(sample_mean_and_sigma(g, lr(), 8, seed=4)[1], sigma)


def test_a_generator_that_ignores_its_noise_has_zero_sigma() -> None:
    g = tiny("srresnet", 1)
    with torch.no_grad():
        next(m for m in g.modules() if isinstance(m, torch.nn.Conv2d)).weight[:, 1:].zero_()
    mean, sigma = sample_mean_and_sigma(g, lr(), 6)
    assert torch.equal(sigma, torch.zeros_like(sigma))
    with torch.no_grad():
        torch.testing.assert_close(mean, g(lr(), torch.zeros(3, 1, 8, 10)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("antithetic", [False, True])
def test_calibrated_sigma_is_the_spread_of_evaluates_scaled_samples(antithetic: bool) -> None:
    g = tiny("rrdb", 1, noise_centred=antithetic)
    evaluate_sampler = _Sampler(g, 8, 5, torch.device("cpu"), ensemble=False, antithetic=antithetic)
    evaluate_sampler.use_scales(SCALES, "test")
    evaluate_sampler.draw(lr())
    scaled = evaluate_sampler.last  # what evaluate --spread-scales scores
    assert scaled is not None
    record = {
        "format": CALIBRATION_FORMAT,
        "spread_scales": SCALES.to_dict(),
        "fit": {"antithetic": antithetic},
    }
    mean, sigma = sample_mean_and_sigma(g, lr(), 8, record, seed=5)  # antithetic: from the record's fit
    torch.testing.assert_close(sigma, scaled.double().std(0).float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mean, scaled.double().mean(0).float(), rtol=1e-5, atol=1e-7)
    raw_sigma = sample_mean_and_sigma(g, lr(), 8, seed=5, antithetic=antithetic)[1]
    ratio = sigma / raw_sigma  # the scale of each pixel's bin (of the mean)
    bins = torch.bucketize(mean, torch.tensor(SCALES.edges), right=True)
    expect = torch.tensor(SCALES.scales)[bins]
    ok = raw_sigma > 1e-6
    torch.testing.assert_close(ratio[ok], expect[ok], rtol=1e-4, atol=0)
    assert len(set(bins[ok].tolist())) >= 2  # more than one bin exercised


def test_errors_name_samples_and_the_model() -> None:
    with pytest.raises(SamplingError, match=r"--samples 8: model runs/a/G\.pt is deterministic"):
        sample_mean_and_sigma(tiny("edsr", 0), lr(), 8, label="runs/a/G.pt")
    with pytest.raises(SamplingError, match=r"--samples 8: model edsr is deterministic"):
        sample_mean_and_sigma(tiny("edsr", 0), lr(), 8)
    with pytest.raises(SamplingError, match="at least 2 samples"):
        sample_mean_and_sigma(tiny("edsr", 1), lr(), 1)
    record = {"format": CALIBRATION_FORMAT, "spread_scales": SCALES.to_dict(), "fit": {"antithetic": True}}
    with pytest.raises(SamplingError, match="antithetic pairs: an even number"):
        sample_mean_and_sigma(tiny("edsr", 1), lr(), 7, record)
    with pytest.raises(SamplingError, match="expected hpc_sr.spread_calibration"):
        spread_scales_of({"format": "other"})
    with pytest.raises(SamplingError, match="not a spread-scales record"):
        spread_scales_of({"format": CALIBRATION_FORMAT, "spread_scales": {"edges": [0.1]}})


def test_calibration_forms_and_unit_seeds() -> None:
    assert spread_scales_of(None) is None and spread_scales_of(SCALES) is SCALES
    assert spread_scales_of(SCALES.to_dict()) == SCALES
    assert spread_scales_of({"format": CALIBRATION_FORMAT, "spread_scales": SCALES.to_dict()}) == SCALES
    assert unit_seed("a.fits") == unit_seed("a.fits") != unit_seed("b.fits") != unit_seed("a.fits", 1)
    assert 0 <= unit_seed("a.fits") < 2**63
