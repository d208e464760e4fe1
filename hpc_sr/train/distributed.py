"""Where am I running? torchrun, SLURM (srun, one task per GPU) or a single process.

``DistEnv.from_environment()`` reads the launcher's variables; ``init_distributed`` starts the process group
(nccl on GPU, gloo on CPU) with a collective timeout so that a dead rank fails the job instead of hanging it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import re
import subprocess
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Rank layout of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # single | torchrun | slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> DistEnv:
        """torchrun's variables win; then SLURM's (srun with one task per GPU); else one process."""
        env = dict(os.environ if environ is None else environ)
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(
                rank=int(env["RANK"]),
                world_size=int(env["WORLD_SIZE"]),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT", "29500")),
                launcher="torchrun",
            )
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
            job_id = int(env.get("SLURM_JOB_ID", "0"))
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "127.0.0.1")
            return cls(
                rank=int(env["SLURM_PROCID"]),
                world_size=int(env["SLURM_NTASKS"]),
                local_rank=int(env.get("SLURM_LOCALID", "0")),
                master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
                master_port=int(env.get("MASTER_PORT") or port_from_job_id(job_id)),
                launcher="slurm",
            )
        return cls()

    def export(self) -> None:
        """Set the torchrun-style variables (for libraries such as DeepSpeed that read them)."""
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.local_rank),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def port_from_job_id(job_id: int) -> int:
    """A port in 20000-39999 derived from the SLURM job id, so concurrent jobs on a node do not collide."""
    return 20000 + job_id % 20000


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list (``node[01-04],gpu7`` -> ``node01``); asks scontrol when it can."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.fullmatch(r"(.*?)\[([^\]]+)\](.*)", head)
    if not match:
        return head
    prefix, ranges, suffix = match.groups()
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}{suffix}"


def select_device(env: DistEnv) -> torch.device:
    """cuda:<local_rank> when GPUs exist, else cpu."""
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(env: DistEnv, device: torch.device, timeout_s: int = 600) -> None:
    """Start the default process group (no-op for one process)."""
    if not env.distributed or dist.is_initialized():
        return
    env.export()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shutdown_distributed(wait_for_peers: bool = False) -> None:
    """Destroy the process group; with ``wait_for_peers`` (after a clean finish) all ranks leave together.

    A rank that tears down its connections while a peer is still in its last collective can make that peer
    abort (seen with gloo under torchrun: "terminate called without an active exception"). After an error no
    barrier is tried: a hung peer would make it wait for the whole collective timeout a second time.
    """
    if not dist.is_initialized():
        return
    if wait_for_peers:
        with contextlib.suppress(RuntimeError):
            dist.barrier()
    dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce when distributed; returns the tensor."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_(t, dist.ReduceOp.MAX).item() > 0)


def broadcast_object(obj: object, src: int = 0) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call with base seed + rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, object]:
    """RNG states of python, numpy and torch (CPU and CUDA) as tensors/plain data for weights_only loading."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, object] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, object]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))  # type: ignore[index]
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))  # type: ignore[index,union-attr]
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])  # type: ignore[arg-type]
