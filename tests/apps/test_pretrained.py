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
