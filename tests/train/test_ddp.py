"""Real 2-rank DDP runs (torchrun, gloo): identical weights across ranks; resume on another world size."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import REPO, subprocess_env, tiny_overrides, torchrun_cmd

pytestmark = pytest.mark.slow  # real 2-rank torchrun/gloo jobs

WORKER = REPO / "tests" / "train" / "ddp_worker.py"


def torchrun(
    nproc: int, out_dir: Path, overrides: list[str], timeout: int = 240
) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(nproc, WORKER, str(out_dir), *overrides)
    return subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def test_two_ranks_keep_identical_weights_and_resume_on_one(tiny_shards: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(tiny_shards, tmp_path, name="ddp", steps=6, pretrain=3)
    proc = torchrun(2, tmp_path, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    assert set(w0) == {"g", "d"}
    for name in w0:
        assert all(torch.equal(w0[name][k], w1[name][k]) for k in w0[name]), f"{name} differs across ranks"
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert {r["world_size"] for r in rows if r["kind"] == "train"} == {2}
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 7))

    # The 2-rank checkpoint resumes in one process (another world size) and trains on.
    more = tiny_overrides(tiny_shards, tmp_path, name="ddp", steps=9, pretrain=3)
    trainer = Trainer(load_config(None, more), DistEnv(), torch.device("cpu"), resume="auto")
    assert trainer.step == 6
    g_saved = trainer.backend.module("g").state_dict()
    assert all(torch.equal(g_saved[k].float(), w0["g"][k]) for k in g_saved)
    assert trainer.run() == 0
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train" and r["world_size"] == 1] == [7, 8, 9]


def test_one_rank_checkpoint_resumes_on_two_ranks_at_the_same_sample_offset(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """1 rank x micro 4 x 4 batches = 16 samples consumed; on 2 ranks (micro 2) the stream goes on at
    position 16 / (2 x 2) = 4 of the same epoch, not at 0."""
    first = tiny_overrides(tiny_shards, tmp_path, name="grow", steps=4, pretrain=4, **{"train.ckpt_every": 4})
    trainer = Trainer(load_config(None, first), DistEnv(), torch.device("cpu"), resume="never")
    assert trainer.run() == 0
    saved = torch.load(tmp_path / "grow" / "checkpoints" / "step_00000004" / "trainer.pt", weights_only=True)
    assert saved["data"] == {"epoch": 0, "position": 4, "micro_batch": 4, "world_size": 1}

    more = tiny_overrides(tiny_shards, tmp_path, name="grow", steps=6, pretrain=4, **{"train.ckpt_every": 2})
    proc = torchrun(2, tmp_path, more)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "grow" / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if r["kind"] == "start"]
    step4 = tmp_path / "grow" / "checkpoints" / "step_00000004"
    assert [(s["step"], s["resumed_from"]) for s in starts] == [(0, None), (4, str(step4))]
    assert [(r["step"], r["world_size"]) for r in rows if r["kind"] == "train"][4:] == [(5, 2), (6, 2)]
    step6 = tmp_path / "grow" / "checkpoints" / "step_00000006"
    state = torch.load(step6 / "trainer.pt", weights_only=True)
    assert state["data"] == {"epoch": 0, "position": 6, "micro_batch": 2, "world_size": 2}
    for rank in (0, 1):
        rank_state = torch.load(step6 / "rng" / f"rank_{rank:05d}.pt", weights_only=True)
        assert rank_state["stream"] == {"epoch": 0, "position": 6}, rank
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    assert all(torch.equal(w0["g"][k], w1["g"][k]) for k in w0["g"])
