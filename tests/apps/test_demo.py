"""`hpc-sr demo`: the embedded quick start equals configs/quickstart_cpu.yaml; a tiny demo runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hpc_sr.apps.demo import QUICKSTART
from hpc_sr.cli import main
from tests.conftest import REPO, bicubic_psnr, read_shards


def test_demo_embedded_quickstart_equals_the_config_file() -> None:
    assert yaml.safe_load((REPO / "configs" / "quickstart_cpu.yaml").read_text()) == QUICKSTART


def test_demo_runs_end_to_end_at_tiny_size(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    work = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--workdir",
            str(work),
            "--num",
            "40",
            "--steps",
            "4",
            "--hr-size",
            "32",
            "data.batch_size=4",
            "data.patch_size=8",
            "model.g.options.channels=4",
            "model.g.options.blocks=1",
            "train.val_every=4",
            "train.ckpt_every=4",
            "log.log_every=2",
            "log.tensorboard=false",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "gain over bicubic" in out and "[demo] done" in out
    result = json.loads((work / "runs" / "quickstart" / "eval_test.json").read_text())
    lr, hr, _ = read_shards(work / "data", split="test")  # 40 pairs, 80/10/10: 4 test images
    assert result["n"] == len(hr) == 4
    assert result["bicubic"]["psnr"] == pytest.approx(bicubic_psnr(lr, hr), abs=1e-6)
    assert list((work / "runs" / "quickstart" / "images").glob("test_*.png"))
