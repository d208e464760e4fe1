"""Job-side SLURM plumbing: the distributed environment of a task and the callable that submitit runs.

``SlurmTrainJob`` is pickled by ``hpc-sr submit``; inside each SLURM task it installs our stop flag
(replacing submitit's USR2 handler, which would checkpoint inside the handler), exports
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, calls the training entry with ``resume="auto"``
and, when the entry returns ``REQUEUE_EXIT_CODE``, makes sure the job is requeued (from normal code) and
leaves without a submitit result file so that the client keeps waiting for the requeued run.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable

from hpc_sr.dist.env import env_int, first_host, port_from_job_id
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, install_stop_flag, requeue_self
from hpc_sr.errors import HpcSrError, TrainingError

DEFAULT_ENTRY = "hpc_sr.train.entry:train_main"
EntryFn = Callable[..., int]


def master_port(job_id: str | int) -> int:
    """The port every task of a job derives alike (:func:`hpc_sr.dist.env.port_from_job_id`)."""
    return port_from_job_id(int(job_id))


def slurm_dist_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """torch.distributed env:// variables for this SLURM task (one process per task)."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        raise HpcSrError("not inside a SLURM task: SLURM_JOB_ID is not set")
    job_id = env["SLURM_JOB_ID"]
    env_int("SLURM_JOB_ID", 0, environ=env)  # validated: the master port derives from it
    world = env_int("SLURM_NTASKS", 1, minimum=1, environ=env) or 1
    nodes_var = "SLURM_JOB_NUM_NODES" if "SLURM_JOB_NUM_NODES" in env else "SLURM_NNODES"
    nodes = env_int(nodes_var, 1, minimum=1, environ=env) or 1
    rank = env_int("SLURM_PROCID", 0, environ=env) or 0
    local = env_int("SLURM_LOCALID", 0, environ=env) or 0
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    master = first_host(nodelist) if nodelist else socket.gethostname()
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(max(1, world // max(1, nodes))), "MASTER_ADDR": master,
            "MASTER_PORT": str(master_port(job_id))}


def export_slurm_dist_env() -> dict[str, str]:
    """Put :func:`slurm_dist_env` into ``os.environ`` (overwriting what the submitting shell passed on)."""
    env = slurm_dist_env()
    os.environ.update(env)
    return env


def resolve_entry(spec: str) -> EntryFn:
    """``"package.module:function"`` -> the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise HpcSrError(f"entry {spec!r} is not of the form package.module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise HpcSrError(f"cannot import training entry {spec!r}: {exc}") from exc
    return fn


class SlurmTrainJob:
    """What submitit runs in every task: ``entry(config_path, overrides, resume="auto")`` with requeue."""

    def __init__(self, config_path: str | None, overrides: list[str], max_requeues: int = 3,
                 entry: str = DEFAULT_ENTRY) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.max_requeues = max_requeues
        self.entry = entry

    def __call__(self) -> int:
        flag = install_stop_flag()  # after submitit installed its own USR2 handler: ours wins
        if "SLURM_JOB_ID" in os.environ:
            export_slurm_dist_env()
        rc = int(resolve_entry(self.entry)(self.config_path, self.overrides, resume="auto"))
        if rc == REQUEUE_EXIT_CODE:
            asked = requeue_self(self.max_requeues, flag)  # the trainer may have asked already: same answer
            rank = env_int("RANK", 0) or 0
            if rank == 0 and not asked:
                raise TrainingError(f"stopped by {flag.reason or 'a stop request'} with a checkpoint saved, "
                                    f"but not requeued (max_requeues={self.max_requeues}); resubmit to go on")
            # No result file: submitit's client keeps waiting, the requeued run picks the pickle up again.
            raise SystemExit(REQUEUE_EXIT_CODE)
        if rc != 0:
            raise TrainingError(f"training entry {self.entry} returned exit code {rc}")
        return rc
