"""The generator shipped in the package: loads by name, records how it was made, and beats bicubic on a
freshly
simulated split it never saw."""

from __future__ import annotations

import json

import torch

import hpc_sr
from hpc_sr.data.lensing import LensingSimulator
from hpc_sr.models.artifacts import PRETRAINED_DIR, load_generator_payload


def test_shipped_generator_is_small_and_documented() -> None:
    assert "deeplense-small" in hpc_sr.pretrained_names()
    path = PRETRAINED_DIR / "deeplense-small.pt"
    assert path.stat().st_size < 1_000_000
    payload = load_generator_payload("deeplense-small")
    record = payload["pretrained"]
    assert record == json.loads(path.with_suffix(".json").read_text())
    assert record["trained_with"].startswith("hpc-sr train") and record["test"]["gain_db"] > 0
    assert 0 < record["test"]["ceiling_fraction"] <= 1.05


def test_shipped_generator_beats_bicubic_on_a_fresh_simulated_split() -> None:
    g = hpc_sr.load_generator("deeplense-small")
    sim = LensingSimulator("deeplense_sr", hr_size=150)
    batch = sim.sample(24, generator=torch.Generator().manual_seed(20261202))  # not the training seed (0)
    sr = hpc_sr.upscale(g, batch.lr.numpy())
    result = hpc_sr.evaluate_arrays(sr, batch.hr.numpy(), lr=batch.lr.numpy())
    assert result["gain_db"] > 0.2, result
    assert result["model"]["ssim"] > result["bicubic"]["ssim"]


def test_the_ground_to_space_model_beats_bicubic_and_wiener_on_fresh_pairs() -> None:
    """The shipped two-instrument model on ground_space pairs it never saw (other seed), against bicubic and
    Wiener deconvolution told each image's PSFs and shift (which the model is not)."""
    from hpc_sr.data.lensing import lr_kernels
    from hpc_sr.data.presets import PRESETS, SAMPLED_NAMES
    from hpc_sr.eval.deconvolution import wiener
    from hpc_sr.imaging import psf_kernels_2d

    assert "ground-to-space-small" in hpc_sr.pretrained_names()
    record = load_generator_payload("ground-to-space-small")["pretrained"]
    assert record["data"]["provenance"]["preset"] == "ground_space" and "seeing" in record["values"]
    assert not record["generator"]["lr_consistent"]  # refused on LR that is not the block mean of HR
    g = hpc_sr.load_generator("ground-to-space-small")
    sim = LensingSimulator("ground_space", hr_size=96)
    batch = sim.sample(12, generator=torch.Generator().manual_seed(20261207))
    sr = hpc_sr.upscale(g, batch.lr.numpy())
    result = hpc_sr.evaluate_arrays(sr, batch.hr.numpy(), lr=batch.lr.numpy())
    assert result["gain_db"] > 3.0, result
    p = batch.params.double()
    ps = PRESETS["ground_space"].pixel_scale
    fwhm = p[:, SAMPLED_NAMES.index("psf_fwhm")] / ps
    w = wiener(batch.lr, lr_kernels(p, ps, 2), psf_kernels_2d(fwhm, torch.zeros_like(fwhm)), 2)
    wiener_result = hpc_sr.evaluate_arrays(w.numpy(), batch.hr.numpy(), lr=batch.lr.numpy())
    assert result["model"]["psnr"] > wiener_result["model"]["psnr"] + 1.0
    assert result["model"]["ssim"] > wiener_result["model"]["ssim"]
