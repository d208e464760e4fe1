"""Where am I running? torchrun, SLURM (srun, one task per GPU) or a single process.

``DistEnv.from_environment()`` reads the launcher's variables (validated: an empty or non-numeric value is an
:class:`~hpc_sr.errors.EnvironmentVariableError` naming the variable and the value); ``init_distributed``
starts the process group (nccl on GPU, bound to this rank's device; gloo on CPU) with a collective timeout so
that a dead rank fails the job instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hpc_sr.dist.envvars import env_float as env_float  # re-exported: the launcher-variable readers
from hpc_sr.dist.envvars import env_int
from hpc_sr.dist.slurm import SlurmTask
from hpc_sr.dist.teardown import shutdown_distributed as shutdown_distributed  # re-exported: init's other end
from hpc_sr.errors import EnvironmentVariableError


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
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            task = SlurmTask.from_environ(env)
            if task.ntasks > 1:
                port = get_int("MASTER_PORT", 0, minimum=1) if env.get("MASTER_PORT") else task.master_port
                return cls(
                    rank=task.rank,
                    world_size=task.ntasks,
                    local_rank=task.local_rank,
                    master_addr=env.get("MASTER_ADDR") or task.master_host("127.0.0.1"),
                    master_port=port,
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
    # Before the group exists: torch.distributed.nn.functional (imported lazily by DDP) binds the default
    # group as a default argument, which would keep it alive past destroy_process_group (see dist.teardown).
    import torch.distributed.nn  # noqa: F401
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


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
