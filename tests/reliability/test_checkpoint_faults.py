"""SIGKILL during a checkpoint write, at every stage of the save (hpc_sr.train.faults.SAVE_STAGES):
``latest`` still
loads the previous good checkpoint, a partial directory is never taken for a checkpoint, and the stale temp
directory is removed by the next save."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.models.checkpoint_layout import is_complete
from hpc_sr.train.checkpoint import CheckpointManager
from hpc_sr.train.faults import SAVE_PAUSE as FAULT_PAUSE
from hpc_sr.train.faults import SAVE_STAGES as FAULT_STAGES
from hpc_sr.train.trainer import Trainer
from tests.conftest import PYTHON, tiny_overrides, wait_for
from tests.reliability.reli_util import kill_group, rows, start, tail

pytestmark = pytest.mark.slow  # real training processes SIGKILLed while saving


def test_sigkill_at_each_save_stage_keeps_the_previous_checkpoint(tiny_shards: Path, tmp_path: Path) -> None:
    def ov(stage: str, steps: int) -> list[str]:
        return tiny_overrides(
            tiny_shards,
            tmp_path,
            name=stage,
            steps=steps,
            pretrain=3,
            **{"train.ckpt_every": 3, "train.val_every": 100, "log.image_every": 0},
        )

    procs = {}
    for stage in FAULT_STAGES:  # all four runs at once: each pauses in its second save (step 6)
        procs[stage] = start(
            [PYTHON, "-m", "hpc_sr", "train", *ov(stage, 6)],
            tmp_path / f"{stage}.log",
            **{FAULT_PAUSE: f"{stage}@6"},
        )
    try:
        for stage, proc in procs.items():
            marker = tmp_path / stage / "checkpoints" / f".fault-{stage}-6"
            wait_for(lambda m=marker, p=proc: m.exists() or p.poll() is not None, 150, f"save stage {stage}")
            assert marker.exists(), f"{stage}: run ended without pausing:\n{tail(tmp_path / f'{stage}.log')}"
            kill_group(proc)  # SIGKILL in the middle of the save
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill_group(proc)

    for stage in FAULT_STAGES:
        ckdir = tmp_path / stage / "checkpoints"
        manager = CheckpointManager(tmp_path / stage)
        good = ckdir / "step_00000003"
        assert manager.latest() == good, f"{stage}: latest must stay on the previous good checkpoint"
        assert manager.load(good)["step"] == 3
        leftovers = sorted(p.name for p in ckdir.iterdir() if p.name.startswith((".tmp-", ".pruned-")))
        if stage == "renamed":  # the directory was complete and renamed; only `latest` was not yet updated
            assert is_complete(ckdir / "step_00000006") and not leftovers
        else:
            assert leftovers == [".tmp-step_00000006"], f"{stage}: {leftovers}"
            assert not (ckdir / "step_00000006").exists()
            assert [p.name for p in manager.steps()] == [
                "step_00000003"
            ]  # the partial one is not a checkpoint

        # The restarted run resumes from step 3, re-saves step 6 and clears the stale directories.
        trainer = Trainer(load_config(None, ov(stage, 7)), DistEnv(), torch.device("cpu"), resume="auto")
        assert trainer.step == 3 and trainer.resumed_from == good
        assert trainer.run() == 0
        assert not [p for p in ckdir.iterdir() if p.name.startswith((".tmp-", ".pruned-"))], stage
        assert (ckdir / "latest").read_text().strip() == "step_00000007"
        assert [r["step"] for r in rows(tmp_path / stage, "start")] == [0, 3]
