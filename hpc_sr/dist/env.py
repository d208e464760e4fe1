"""Where am I running? torchrun, SLURM (srun, one task per GPU) or a single process.

``DistEnv.from_environment()`` reads the launcher's variables (validated: an empty or non-numeric value is an
:class:`~hpc_sr.errors.EnvironmentVariableError` naming the variable and the value); ``init_distributed``
starts the process group (nccl on GPU, bound to this rank's device; gloo on CPU) with a collective timeout so
that a dead rank fails the job instead of hanging it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hpc_sr.dist.collectives import barrier
from hpc_sr.errors import EnvironmentVariableError


def env_int(
    name: str, default: int | None = None, *, minimum: int = 0, environ: Mapping[str, str] | None = None
) -> int | None:
    """Integer value of environment variable ``name`` (``default`` when unset); bad values name the variable.

    A variable that is set but empty counts as bad (some cluster modules leave ``OMP_NUM_THREADS=``).
    """
    env = os.environ if environ is None else environ
    if name not in env:
        return default
    raw = env[name]
    try:
        value = int(raw.strip())
    except ValueError:
        raise EnvironmentVariableError(
            f"environment variable {name}={raw!r} is not an integer; set it to a number >= {minimum} or "
            "unset it"
        ) from None
    if value < minimum:
        raise EnvironmentVariableError(f"environment variable {name}={raw!r} must be >= {minimum}")
    return value


def env_float(
    name: str, default: float, *, positive: bool = True, environ: Mapping[str, str] | None = None
) -> float:
    """Float value of environment variable ``name`` (``default`` when unset); bad values name the variable."""
    env = os.environ if environ is None else environ
    if name not in env:
        return default
    raw = env[name]
    try:
        value = float(raw.strip())
    except ValueError:
        raise EnvironmentVariableError(f"environment variable {name}={raw!r} is not a number") from None
    if positive and not value > 0:
        raise EnvironmentVariableError(f"environment variable {name}={raw!r} must be a positive number")
    return value


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

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise EnvironmentVariableError(
                f"rank {self.rank} is outside world size {self.world_size} (launcher {self.launcher}: check "
                "RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS)"
            )
        if not 0 < self.master_port < 65536:
            raise EnvironmentVariableError(f"MASTER_PORT={self.master_port} is not a TCP port (1-65535)")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """torchrun's variables win; then SLURM's (srun with one task per GPU); else one process."""
        env = dict(os.environ if environ is None else environ)

        def get_int(name: str, default: int, minimum: int = 0) -> int:
            value = env_int(name, default, minimum=minimum, environ=env)
            return default if value is None else value

        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(
                rank=get_int("RANK", 0),
                world_size=get_int("WORLD_SIZE", 1, minimum=1),
                local_rank=get_int("LOCAL_RANK", 0),
                master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
                master_port=get_int("MASTER_PORT", 29500, minimum=1),
                launcher="torchrun",
            )
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and get_int("SLURM_NTASKS", 1, minimum=1) > 1:
            job_id = get_int("SLURM_JOB_ID", 0)
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
            port = (
                get_int("MASTER_PORT", port_from_job_id(job_id), minimum=1)
                if env.get("MASTER_PORT")
                else None
            )
            return cls(
                rank=get_int("SLURM_PROCID", 0),
                world_size=get_int("SLURM_NTASKS", 1, minimum=1),
                local_rank=get_int("SLURM_LOCALID", 0),
                master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
                master_port=port if port is not None else port_from_job_id(job_id),
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


def configure_threads(env: DistEnv) -> None:
    """OMP_NUM_THREADS when set (validated); else one share of the cores per rank on a CPU host
    (one process left at the default ran 7x slower on 2 cores)."""
    threads = env_int("OMP_NUM_THREADS", None, minimum=1)
    if threads is not None:
        torch.set_num_threads(threads)
    elif env.distributed and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, env.world_size)))


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
        **process_group_options(backend, device, env),
    )


def process_group_options(backend: str, device: torch.device, env: DistEnv) -> dict[str, Any]:
    """Extra ``init_process_group`` arguments: NCCL is bound to this rank's GPU (``device_id``, torch >= 2.3),
    so its communicator is created for that device at once instead of on a guessed one at the first collective
    (``device`` itself when it names an index, else ``cuda:<local_rank>``)."""
    if backend != "nccl":
        return {}
    return {"device_id": device if device.index is not None else torch.device("cuda", env.local_rank)}


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
            barrier()
    dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
