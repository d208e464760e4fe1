"""Job-side SLURM plumbing: the distributed environment of a task and the callable that submitit runs.

``SlurmTrainJob`` is pickled by ``hpc-sr submit`` (``SlurmUpscaleJob``, in :mod:`hpc_sr.launch.upscale`, by
``hpc-sr submit-upscale``); inside each SLURM task a :class:`RequeueingJob` installs our stop flag (replacing
submitit's USR2 handler, which would checkpoint inside the handler), exports
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, runs its entry (training: with ``resume="auto"``) and,
when the entry returns ``REQUEUE_EXIT_CODE``, makes sure the job is requeued (from normal code) and leaves
without a submitit result file so that the client keeps waiting for the requeued run.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable

from hpc_sr.dist.envvars import env_int
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, install_stop_flag, requeue_self
from hpc_sr.dist.slurm import SlurmTask, port_from_job_id, scontrol_job_id
from hpc_sr.errors import HpcSrError, TrainingError

DEFAULT_ENTRY = "hpc_sr.train.entry:train_main"
EntryFn = Callable[..., int]


def master_port(job_id: str | int) -> int:
    """The port every task of a job derives alike (:func:`hpc_sr.dist.slurm.port_from_job_id`)."""
    return port_from_job_id(int(job_id))


def slurm_dist_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """torch.distributed env:// variables for this SLURM task (one process per task)."""
    if scontrol_job_id(environ) is None:
        raise HpcSrError("not inside a SLURM task: SLURM_JOB_ID is not set")
    task = SlurmTask.from_environ(environ)
    return {"RANK": str(task.rank), "WORLD_SIZE": str(task.ntasks), "LOCAL_RANK": str(task.local_rank),
            "LOCAL_WORLD_SIZE": str(max(1, task.ntasks // max(1, task.nodes))),
            "MASTER_ADDR": task.master_host(socket.gethostname()), "MASTER_PORT": str(task.master_port)}


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
        raise HpcSrError(f"cannot import entry {spec!r}: {exc}") from exc
    return fn


class RequeueingJob:
    """What submitit runs in every task: :meth:`run` under our stop flag, in the task's distributed env;
    a run that returns ``REQUEUE_EXIT_CODE`` (stopped on a signal, its progress saved) is requeued."""

    max_requeues: int
    entry: str
    saved = "its progress saved"  # what the stopped run left behind (in the error when not requeued)
    error: type[HpcSrError] = HpcSrError

    def run(self) -> int:
        raise NotImplementedError

    def __call__(self) -> int:
        flag = install_stop_flag()  # after submitit installed its own USR2 handler: ours wins
        if scontrol_job_id() is not None:
            export_slurm_dist_env()
        rc = int(self.run())
        if rc == REQUEUE_EXIT_CODE:
            asked = requeue_self(self.max_requeues, flag)  # the entry may have asked already: same answer
            rank = env_int("RANK", 0) or 0
            if rank == 0 and not asked:
                raise self.error(f"stopped by {flag.reason or 'a stop request'} with {self.saved}, but not "
                                 f"requeued (max_requeues={self.max_requeues}); resubmit to go on")
            # No result file: submitit's client keeps waiting, the requeued run picks the pickle up again.
            raise SystemExit(REQUEUE_EXIT_CODE)
        if rc != 0:
            raise self.error(f"entry {self.entry} returned exit code {rc}")
        return rc


class SlurmTrainJob(RequeueingJob):
    """``entry(config_path, overrides, resume="auto")`` in every task; requeued when stopped on a signal."""

    saved = "a checkpoint saved"
    error = TrainingError

    def __init__(self, config_path: str | None, overrides: list[str], max_requeues: int = 3,
                 entry: str = DEFAULT_ENTRY) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.max_requeues = max_requeues
        self.entry = entry

    def run(self) -> int:
        return int(resolve_entry(self.entry)(self.config_path, self.overrides, resume="auto"))
