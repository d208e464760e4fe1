"""The simulator's truth re-derived from recorded parameters (hpc_sr.data.truth)."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator, simulate
from hpc_sr.data.truth import clean_images, lens_centre_pixels, noise_ceiling_estimate, theta_e_pixels
from hpc_sr.errors import DataError
from hpc_sr.eval.morphology import lr_consistency_residual, lr_consistent_projection

P = {name: i for i, name in enumerate(PARAM_NAMES)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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


def test_equal_weighted_ceiling_is_the_lr_consistent_projection_of_the_clean_image() -> None:
    b = simulate(3, "deeplense_sr", seed=7, hr_size=32)
    est = noise_ceiling_estimate(b.lr, b.params, "deeplense_sr", 2, param_names=PARAM_NAMES)
    clean = clean_images(b.params, "deeplense_sr", 32)
    assert est.dtype == torch.float64 and torch.equal(est, lr_consistent_projection(clean, b.lr, 2))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        noise_ceiling_estimate(b.lr[:, 0], b.params, "deeplense_sr", 2)


def test_variance_weighted_ceiling_is_consistent_and_equal_weighting_for_uniform_noise() -> None:
    b = simulate(4, "deeplense_sr", seed=7, hr_size=32)  # LR is the 2x2 mean of HR, as in the shards
    lr, params = b.lr, b.params
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
