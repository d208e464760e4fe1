"""The end of a 2-rank gloo run, repeated: every rank exits 0 every time, and ``shutdown_distributed`` leaves
no gloo thread behind (the group's backend is released there, not by the interpreter's final garbage
collection at an unordered moment; see hpc_sr.dist.teardown)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hpc_sr.dist.teardown import shutdown_distributed
from tests.conftest import PYTHON, REPO, subprocess_env

ROUNDS = 24


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rank_gloo_finish_repeated_every_rank_exits_0(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("teardown_worker.py")
    res = subprocess.run([PYTHON, str(worker), str(ROUNDS), str(tmp_path)], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.splitlines()[-1])
    print(f"{ROUNDS} rounds of 2 ranks in {out['seconds']:.1f} s")
    bad = {f"round {r} rank {k}: exit {code}": (tmp_path / f"{r}.{k}.log").read_text()[-1500:]
           for r, codes in enumerate(out["status"]) for k, code in enumerate(codes) if code != 0}
    assert not bad, bad
    for r in range(ROUNDS):
        rank0, rank1 = (json.loads((tmp_path / f"{r}.{k}.json").read_text()) for k in (0, 1))
        for rec in (rank0, rank1):
            assert rec["released"] is True and rec["gloo_threads"] == [], (r, rec)
        # one backend at a time, rank 0 (the TCPStore's host) last, and it returns after rank 1 has finished
        assert rank1["destroy_end"] <= rank0["destroy_start"] <= rank0["returned"], (r, rank0, rank1)


def test_one_rank_group_is_released(tmp_path: Path) -> None:
    """World size 1: no ordering, and the group is gone after the call (the DDP wrapper released first)."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    del model
    assert shutdown_distributed(wait_for_peers=True) is True
    assert not dist.is_initialized()
    assert shutdown_distributed() is True  # no group: nothing to do
