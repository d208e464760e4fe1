"""Real 2-rank DDP runs (torchrun, gloo): identical weights across ranks; resume on another world size."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import REPO, subprocess_env, tiny_overrides, torchrun_cmd

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
