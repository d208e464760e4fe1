"""Two real gloo ranks: one rank's stop signal, or one rank's non-finite loss, decides the step on both.

The collective-count test sees that one all-reduce happens, not what is done with its result; here rank 1
alone is signalled (step 1) and alone gets a NaN loss (step 2), and both ranks must report the same decisions
and keep identical weights. Run as ``python -m tests.mutations.test_step_agreement RANK STORE`` it is the
worker (a file store, no ports).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import PYTHON, REPO, subprocess_env

pytestmark = pytest.mark.slow  # two real gloo ranks

STOP = 10  # the signal number rank 1 reports (SIGUSR1 on Linux; any non-zero value will do)


def _worker(rank: int, store: str) -> int:
    import torch.distributed as dist

    from hpc_sr.config import load_config
    from hpc_sr.models.losses import build_losses
    from hpc_sr.train.backends.ddp import DDPBackend
    from hpc_sr.train.step import StepOptions, optimizer_step

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different data per rank; DDP broadcasts rank 0's initial weights
        backend = DDPBackend(load_config(None, []), torch.device("cpu"), world_size=2)
        backend.add("g", torch.nn.Conv2d(1, 1, 3, padding=1), lr=1e-2)
        terms = build_losses([{"term": "pixel", "kind": "l1", "weight": 1.0}])
        batch = (torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
        out = []
        for stop, poison in [(STOP if rank == 1 else 0, False), (0, rank == 1)]:
            res = optimizer_step(backend, terms, lambda: batch, StepOptions(poison=poison), stop_signal=stop)
            weights = [float(v.double().sum()) for v in backend.module("g").state_dict().values()]
            out.append({"stop": res.stop_signal, "skipped": res.skipped, "weights": weights})
        print(json.dumps(out), flush=True)
        dist.barrier()  # neither rank tears gloo down while the other still talks (CI saw an abort at exit)
        return 0
    finally:
        dist.destroy_process_group()


def test_one_ranks_stop_signal_and_nan_loss_decide_the_step_on_both_ranks(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cmd = [PYTHON, "-m", "tests.mutations.test_step_agreement"]
    procs = [subprocess.Popen([*cmd, str(r), str(store)], cwd=REPO, env=subprocess_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, steps in enumerate(outs):
        assert [(s["stop"], s["skipped"]) for s in steps] == [(STOP, False), (0, True)], (rank, steps)
    assert outs[0][0]["weights"] == outs[1][0]["weights"]  # step 1 was taken on both
    assert outs[0][1]["weights"] == outs[1][1]["weights"] == outs[0][0]["weights"]  # step 2 skipped on both


if __name__ == "__main__":
    sys.exit(_worker(int(sys.argv[1]), sys.argv[2]))
