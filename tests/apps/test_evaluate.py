"""`hpc-sr evaluate`: checkpoints and exported generators agree; exact reduction over ranks; self-ensemble."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from hpc_sr.apps.evaluate import evaluate
from hpc_sr.cli import main
from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.models.artifacts import export_generator
from hpc_sr.train.trainer import Trainer
from tests.conftest import REPO, subprocess_env, tiny_overrides, torchrun_cmd


@pytest.fixture(scope="module")
def trained_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    trainer = Trainer(
        load_config(None, tiny_overrides(tiny_shards, runs, steps=4, pretrain=4)),
        DistEnv(),
        torch.device("cpu"),
        resume="never",
    )
    assert trainer.run() == 0
    return runs / "tiny"


def test_evaluate_checkpoint_and_exported_generator_agree(
    trained_run: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(trained_run),
            "--data",
            str(tiny_shards),
            "--json",
            str(out),
            "--save-images",
            "2",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "bicubic" in table and "gain over bicubic" in table
    result = json.loads(out.read_text())
    assert result["n"] == 5 and set(result["model"]) >= {"psnr", "psnr_pooled", "ssim", "mse", "flux_err"}
    assert list((tmp_path / "images").glob("test_*.png"))
    g_file = export_generator(trained_run, tmp_path / "G.pt")
    again = evaluate(g_file, tiny_shards, quiet=True)
    assert again["model"] == pytest.approx(result["model"], rel=1e-6)
    assert again["bicubic"] == result["bicubic"]


@pytest.mark.slow  # a real 2-rank torchrun job
def test_evaluate_under_torchrun_reduces_exactly(
    trained_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    single = evaluate(trained_run, tiny_shards, split="train", quiet=True)
    out = tmp_path / "dist.json"
    cmd = torchrun_cmd(
        2,
        "-m",
        "hpc_sr",
        "evaluate",
        "--checkpoint",
        str(trained_run),
        "--data",
        str(tiny_shards),
        "--split",
        "train",
        "--json",
        str(out),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dist = json.loads(out.read_text())
    assert dist["n"] == single["n"] == 38
    for who in ("model", "bicubic"):
        assert dist[who] == pytest.approx(single[who], rel=1e-9)


def test_self_ensemble_flag_changes_the_result_of_a_trained_model(
    trained_run: Path, tiny_shards: Path
) -> None:
    plain = evaluate(trained_run, tiny_shards, quiet=True)
    ens = evaluate(trained_run, tiny_shards, quiet=True, ensemble=True)
    assert ens["self_ensemble"] and not plain["self_ensemble"]
    assert ens["bicubic"] == plain["bicubic"]
    assert ens["model"]["mse"] != pytest.approx(plain["model"]["mse"], rel=1e-6)


def test_several_checkpoints_are_evaluated_as_their_mean(
    trained_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    from hpc_sr.apps.evaluate import EvaluateError

    g = export_generator(trained_run, tmp_path / "G.pt")
    plain = evaluate(trained_run, tiny_shards, quiet=True)
    twice = evaluate([trained_run, g], tiny_shards, quiet=True)  # the mean of one model with itself
    assert twice["checkpoint"] == [str(trained_run), str(g)]
    assert twice["model"]["psnr"] == pytest.approx(plain["model"]["psnr"], abs=1e-6)
    assert main(["evaluate", "--checkpoint", str(trained_run), str(g), "--data", str(tiny_shards),
                 "--limit", "2"]) == 0  # fmt: skip
    from hpc_sr.models.artifacts import generator_payload
    from hpc_sr.models.registry import generator_from_spec, generator_spec

    g_cfg = {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}}
    x4 = generator_from_spec(generator_spec(g_cfg), 4)
    torch.save(generator_payload({"g": g_cfg}, 4, x4.state_dict(), "test", 0), tmp_path / "G4.pt")
    with pytest.raises(EvaluateError, match="an ensemble needs one scale"):
        evaluate([g, tmp_path / "G4.pt"], tiny_shards, quiet=True)


def test_simulated_split_reports_physics_and_the_noise_ceiling(
    trained_run: Path, tiny_shards: Path, capsys: pytest.CaptureFixture
) -> None:
    result = evaluate(trained_run, tiny_shards, split="test")
    table = capsys.readouterr().out
    assert "noise ceiling" in table and "arc PSNR" in table and "power high/HR" in table
    assert result["ceiling"]["psnr"] > result["bicubic"]["psnr"]  # knowing the noise-free sky beats bicubic
    from hpc_sr.studies.ceiling import ceiling

    reference = ceiling(str(tiny_shards), split="test")["ceiling"]
    assert result["ceiling"]["psnr"] == pytest.approx(reference["psnr"], abs=1e-6)  # the study's method
    gain = result["model"]["psnr"] - result["bicubic"]["psnr"]
    assert result["ceiling_fraction"] == pytest.approx(gain / result["ceiling_gain_db"])
    phys = result["physics"]
    assert phys["model"]["n"] == phys["bicubic"]["n"] == 5 and phys["model"]["n_clean"] == 5
    assert 0 < phys["bicubic"]["band_ratio_high_vs_hr"] < 1  # bicubic lacks high-frequency power
    json.dumps(result)  # the JSON output stays serialisable
