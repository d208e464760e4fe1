"""The ceiling study: the library's noise ceiling against the study's former method, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.data.truth import noise_ceiling_estimate
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale
from hpc_sr.eval.morphology import lr_consistency_residual
from hpc_sr.studies.ceiling import ceiling, main, read_split


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ceiling") / "data"
    simulate_to_shards(
        out, num=24, preset="deeplense_sr", seed=7, shard_size=10, hr_size=32, split=(0.5, 0.25, 0.25)
    )
    return out


def _old_ceiling(lr: torch.Tensor, hr: torch.Tensor, params: torch.Tensor) -> dict[str, dict[str, float]]:
    """The method of the ceiling study before it called the library (float32 projection)."""
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


def test_command_prints_the_table_and_reports_errors(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(shards), "--split", "val", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["bicubic", "noise_free", "ceiling"]
    assert "n=3" in lines[2] and json.loads(lines[-1])["ceiling"]["n"] == 3
    assert main([str(shards), "--split", "val", "--preset", "nope"]) == 2
    assert "unknown lensing preset 'nope'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
