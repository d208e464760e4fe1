"""Validation during training scores the EMA generator (what is exported and evaluated), not the raw one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.eval.loop import evaluate_batches
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


def test_validation_metrics_are_those_of_the_ema_generator(tiny_shards: Path, tmp_path: Path) -> None:
    over = tiny_overrides(tiny_shards, tmp_path, steps=3, pretrain=3, **{
        "train.val_every": 3, "train.ema_decay": 0.9, "log.tensorboard": "false", "log.image_every": 0,
    })
    trainer = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="never")
    assert trainer.run() == 0
    rows = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r["kind"] == "val"][-1]
    assert logged["step"] == 3  # the last update of the EMA came before this validation

    def psnr(model: torch.nn.Module) -> float:
        model.eval()
        return evaluate_batches(model, trainer.val_loader, trainer.scale, torch.device("cpu")).model["psnr"]

    ema, raw = psnr(trainer.ema.module), psnr(trainer.backend.module("g"))
    assert abs(ema - raw) > 1e-4  # the two differ after 3 steps, so the check below can tell them apart
    assert logged["model"]["psnr"] == pytest.approx(ema, rel=0, abs=1e-9)
