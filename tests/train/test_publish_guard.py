"""A writer that has lost the run directory publishes nothing: the checkpoint manager and the run logger call
their guard before each step directory, ``latest`` and metrics line, and stop when it raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hpc_sr.config import Config, LogConfig
from hpc_sr.errors import TrainingError
from hpc_sr.models.checkpoint_layout import LATEST, complete_steps
from hpc_sr.train.backends.ddp import DDPBackend
from hpc_sr.train.checkpoint import CheckpointManager
from hpc_sr.train.logger import RunLogger


class Superseded(TrainingError):
    pass


class CountingGuard:
    """Passes its first ``allowed`` checks, then raises as a lost run lock would."""

    def __init__(self, allowed: int) -> None:
        self.allowed, self.calls = allowed, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.allowed:
            raise Superseded("run directory taken over by host h pid 1 (job 77 restart 1)")


def backend() -> DDPBackend:
    b = DDPBackend(Config(), torch.device("cpu"), world_size=1)
    b.add("g", nn.Conv2d(1, 1, 3, padding=1), 1e-3)
    return b


def save(manager: CheckpointManager, step: int) -> Path:
    return manager.save(step, backend(), {"step": step}, {"rng": None}, {"val": {}}, torch.device("cpu"))


@pytest.mark.parametrize("allowed", [0, 1, 2])
def test_a_lost_guard_at_any_publication_point_leaves_the_previous_checkpoint_latest(
    tmp_path: Path, allowed: int
) -> None:
    first = save(CheckpointManager(tmp_path, guard=CountingGuard(10)), 1)
    guard = CountingGuard(allowed)  # 0: before anything; 1: before the rename; 2: before `latest`
    with pytest.raises(Superseded, match="taken over by host h pid 1"):
        save(CheckpointManager(tmp_path, guard=guard), 2)
    assert guard.calls == allowed + 1
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / LATEST).read_text().strip() == first.name
    published = [p.name for p in complete_steps(checkpoints)]
    assert published == (["step_00000001"] if allowed < 2 else ["step_00000001", "step_00000002"])


def test_logger_writes_no_metrics_line_after_its_guard_raises(tmp_path: Path) -> None:
    guard = CountingGuard(2)
    log = RunLogger(LogConfig(tensorboard=False), tmp_path, rank=0, world_size=1, guard=guard)
    log.record("train", 1, {"loss": 1.0})
    log.record("train", 2, {"loss": 1.0})
    with pytest.raises(Superseded):
        log.record("train", 3, {"loss": 1.0})
    log.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_other_ranks_loggers_never_call_the_guard(tmp_path: Path) -> None:
    guard = CountingGuard(0)
    log = RunLogger(LogConfig(tensorboard=False), tmp_path, rank=1, world_size=2, guard=guard)
    log.record("train", 1, {})
    assert guard.calls == 0 and not (tmp_path / "metrics.jsonl").exists()
