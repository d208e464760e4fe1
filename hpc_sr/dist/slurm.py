"""What SLURM tells a task about its job, read in one place: job ids, restart count, task layout, node list.

Every reader takes an optional ``environ`` mapping (default ``os.environ``); numbers are validated (a bad
value is an :class:`~hpc_sr.errors.EnvironmentVariableError` naming the variable and the value).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from hpc_sr.dist.envvars import env_int

MAX_REQUEUES_VAR = "HPC_SR_MAX_REQUEUES"  # a job's own time-out requeue limit (submit-upscale, upscale.sbatch)


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def scontrol_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """``SLURM_JOB_ID`` (the id ``scontrol`` takes; each array task has its own), None outside SLURM."""
    return _env(environ).get("SLURM_JOB_ID") or None


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The job as people name it: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``, else None."""
    env = _env(environ)
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return scontrol_job_id(env)


def slurm_restart_count(environ: Mapping[str, str] | None = None) -> int:
    """``SLURM_RESTART_COUNT`` (set by SLURM from the first requeue on), 0 when absent."""
    return env_int("SLURM_RESTART_COUNT", 0, environ=_env(environ)) or 0


def slurm_procid(environ: Mapping[str, str] | None = None) -> int:
    """``SLURM_PROCID``: this task's rank in the job step, 0 when absent."""
    return env_int("SLURM_PROCID", 0, environ=_env(environ)) or 0


@dataclass(frozen=True)
class SlurmTask:
    """The layout of a SLURM job step as one task sees it (srun, one task per GPU)."""

    job_id: int = 0  # SLURM_JOB_ID (numeric: the master port derives from it)
    rank: int = 0  # SLURM_PROCID
    ntasks: int = 1  # SLURM_NTASKS
    local_rank: int = 0  # SLURM_LOCALID
    nodes: int = 1  # SLURM_JOB_NUM_NODES (or SLURM_NNODES)
    nodelist: str = ""  # SLURM_JOB_NODELIST (or SLURM_NODELIST)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SlurmTask:
        """Read and validate the task variables; absent ones take the defaults of a one-task job."""
        env = _env(environ)

        def get(name: str, default: int, minimum: int = 0) -> int:
            value = env_int(name, default, minimum=minimum, environ=env)
            return default if value is None else value

        nodes_var = "SLURM_JOB_NUM_NODES" if "SLURM_JOB_NUM_NODES" in env else "SLURM_NNODES"
        return cls(
            ntasks=get("SLURM_NTASKS", 1, minimum=1),
            rank=get("SLURM_PROCID", 0),
            local_rank=get("SLURM_LOCALID", 0),
            job_id=get("SLURM_JOB_ID", 0),
            nodes=get(nodes_var, 1, minimum=1),
            nodelist=env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "",
        )

    @property
    def master_port(self) -> int:
        return port_from_job_id(self.job_id)

    def master_host(self, default: str) -> str:
        """The first host of the node list (where rank 0 runs), ``default`` without a node list."""
        return first_host(self.nodelist) if self.nodelist else default


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
