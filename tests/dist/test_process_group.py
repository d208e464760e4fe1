"""NCCL binding: init_process_group gets this rank's device_id, barriers get device_ids; gloo gets neither.
(CUDA/NCCL itself cannot run here: the argument builders are checked, and barrier/shutdown on real gloo.)"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.distributed as dist

from hpc_sr.dist.collectives import barrier, barrier_options
from hpc_sr.dist.env import DistEnv, process_group_options, shutdown_distributed


def test_nccl_is_bound_to_the_rank_device_and_gloo_is_not() -> None:
    env = DistEnv(rank=1, world_size=4, local_rank=3)
    assert process_group_options("nccl", torch.device("cuda", 2), env) == {
        "device_id": torch.device("cuda", 2)
    }
    assert process_group_options("nccl", torch.device("cuda"), env) == {"device_id": torch.device("cuda", 3)}
    assert process_group_options("gloo", torch.device("cpu"), env) == {}
    assert "device_id" in inspect.signature(dist.init_process_group).parameters  # torch >= 2.3


def test_barrier_options() -> None:
    assert barrier_options("nccl", 3) == {"device_ids": [3]}
    assert barrier_options("gloo", None) == {}
    assert barrier_options("gloo", 0) == {}
    assert "device_ids" in inspect.signature(dist.barrier).parameters


def test_barrier_and_shutdown_on_a_real_gloo_group(tmp_path: Path) -> None:
    barrier()  # no group: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        barrier()
        assert dist.is_initialized()
    finally:
        shutdown_distributed(wait_for_peers=True)
    assert not dist.is_initialized()
