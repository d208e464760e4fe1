"""Driver for tests/dist/test_teardown.py: the end of a 2-rank gloo run, repeated.

Imports torch once, then per round forks two ranks that do what a training run does at its end: start the
group (:func:`hpc_sr.dist.env.init_distributed`: gloo over TCP, rank 0 hosting the TCPStore), wrap a model in
DDP (every ``DDP_EVERY``-th round: it pins the group through torch.distributed.nn unless that was imported
before the group existed), all-reduce, ``shutdown_distributed(wait_for_peers=True)``, then leave through the
normal interpreter finalization (no ``os._exit``). Each rank writes ``<out>/<round>.<rank>.json`` (whether
its group was released, which gloo threads were still running after the shutdown, and when it tore its
backend down and returned); the driver prints one JSON line: every rank's exit status.

    python tests/dist/teardown_worker.py <rounds> <out_dir>
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

GLOO_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop", "pt_tcpstore_uv")
DDP_EVERY = 4  # rounds 0, 4, 8, ... wrap a model in DDP, the others only all-reduce


def thread_names() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            continue  # exited meanwhile
    return names


def rank_main(rank: int, port: int, out: Path, ddp: bool) -> None:
    from hpc_sr.dist import teardown
    from hpc_sr.dist.env import DistEnv, init_distributed, shutdown_distributed

    times: dict[str, float] = {}
    destroy = teardown._destroy

    def timed_destroy() -> bool:  # when this rank tore its backend down (CLOCK_MONOTONIC: one clock per host)
        times["destroy_start"] = time.monotonic()
        try:
            return destroy()
        finally:
            times["destroy_end"] = time.monotonic()

    teardown._destroy = timed_destroy

    env = DistEnv(rank=rank, world_size=2, local_rank=rank, master_port=port, launcher="torchrun")
    init_distributed(env, torch.device("cpu"), timeout_s=60)
    if ddp:  # ~1 s more per rank (DDP's first use imports torch._dynamo)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
        model(torch.randn(2, 4)).sum().backward()
        del model
    total = torch.ones(1)
    torch.distributed.all_reduce(total)
    assert total.item() == 2
    released = shutdown_distributed(wait_for_peers=True)
    times["returned"] = time.monotonic()
    alive = [n for n in thread_names() if n in GLOO_THREADS]
    out.write_text(json.dumps({"released": released, "gloo_threads": alive, **times}))


def main(rounds: int, out_dir: Path) -> None:
    from tests.conftest import reserved_port

    out_dir.mkdir(parents=True, exist_ok=True)
    status: list[list[int]] = []
    t0 = time.monotonic()
    for r in range(rounds):
        with reserved_port() as port:
            pids = []
            for rank in range(2):
                pid = os.fork()
                if pid == 0:  # the rank: its exit code is the test's verdict
                    log = os.open(out_dir / f"{r}.{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    try:
                        rank_main(rank, port, out_dir / f"{r}.{rank}.json", ddp=r % DDP_EVERY == 0)
                    except BaseException:
                        import traceback

                        traceback.print_exc()
                        sys.exit(1)
                    sys.exit(0)  # through Py_FinalizeEx, C++ static destructors and exit()
                pids.append(pid)
            status.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids])
    print(json.dumps({"status": status, "seconds": time.monotonic() - t0}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
