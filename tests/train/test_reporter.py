"""The step line: means over the window, images/s counting only trained steps, cadence of log.log_every."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.config import LogConfig
from hpc_sr.train.logger import RunLogger
from hpc_sr.train.reporter import TrainReporter
from hpc_sr.train.step import StepResult


def test_report_writes_means_lrs_and_skips_then_starts_a_new_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = RunLogger(LogConfig(tensorboard=False), tmp_path, rank=0, world_size=1)
    rep = TrainReporter(log, every=2, last_step=5, device=torch.device("cpu"))
    assert [s for s in range(1, 6) if rep.due(s)] == [2, 4, 5]
    rep.add(StepResult(losses={"loss_g": torch.tensor(1.0)}, grad_norms={"g": torch.tensor(2.0)}), images=4)
    rep.add(StepResult(losses={"loss_g": torch.tensor(3.0)}, skipped=True), images=4)
    rep.report(2, "pretrain", {"g": 1e-3}, skipped_total=1)
    rep.add(StepResult(losses={"loss_g": torch.tensor(5.0)}), images=4)
    rep.report(3, "gan", {"g": 1e-3, "d": 5e-4}, skipped_total=1)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, second = rows
    got = (first["loss_g"], first["grad_norm_g"], first["skipped_total"], first["lr_g"])
    assert got == (1.0, 2.0, 1, 1e-3)
    assert first["images_per_s"] > 0 and first["phase"] == "pretrain"
    assert second["loss_g"] == 5.0 and "grad_norm_g" not in second and second["lr_d"] == 5e-4
    out = capsys.readouterr().out
    assert "step 2/5 [pretrain] g 1 |" in out and "eta" in out
