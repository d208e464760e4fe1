"""Preemption / timeout signals: set a flag, nothing else; the loop stops at a step boundary.

    flag = StopFlag().install()          # SIGUSR2 (SLURM --signal=USR2@90, submitit) and SIGTERM
    ...
    if agree(flag.requested(), device):  # every rank takes the same decision at the same step
        save_checkpoint(...)
        requeue_self(cfg.slurm.max_requeues)
        return REQUEUE_EXIT_CODE

Timeout vs preemption follows submitit's rule: a signal that arrives after the job ran for at least
``min(0.8 * limit, limit - 10 min)`` is a time-out (so with limits under 10 minutes every signal counts
as a time-out); anything earlier is a preemption. Time-outs count against ``max_requeues``,
preemptions always requeue.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass

from hpc_sr.dist.envvars import env_int
from hpc_sr.dist.slurm import scontrol_job_id, slurm_procid, slurm_restart_count

REQUEUE_EXIT_CODE = 3
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM)


@dataclass
class StopRequest:
    """Which signal arrived and when (``time.time()``)."""

    signum: int
    at: float

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopFlag:
    """Signal handlers that only record the first stop request; read it from normal code."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.started_at = time.time()  # like submitit: the process start stands for the job start
        self.request: StopRequest | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        # Nothing but bookkeeping here: no I/O, no locks, no collectives.
        self.count += 1
        if self.request is None:
            self.request = StopRequest(signum, time.time())

    def install(self) -> StopFlag:
        """Replace the handlers of ``self.signals`` (e.g. submitit's USR2 handler) with ours."""
        for sig in self.signals:
            self._previous[int(sig)] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, old in self._previous.items():
            signal.signal(signum, old)  # type: ignore[arg-type]
        self._previous.clear()

    def requested(self) -> bool:
        return self.request is not None

    @property
    def reason(self) -> str:
        """``""`` (no request), ``"SIGUSR2"`` or ``"SIGTERM"``."""
        return self.request.name if self.request else ""

    def timed_out(self, limit_s: float | None = None) -> bool:
        """True when the stop request (or now) falls in the job's last stretch (see module doc).

        ``limit_s`` defaults to the running SLURM job's time limit; without one nothing is a time-out.
        """
        if limit_s is None:
            limit_s = slurm_time_limit_s()
        if limit_s is None:
            return False
        at = self.request.at if self.request else time.time()
        return is_timeout(at - self.started_at, limit_s)


_process_flag: StopFlag | None = None


def install_stop_flag() -> StopFlag:
    """The process-wide :class:`StopFlag`, installed on first call (the launcher and the trainer share it,
    so a signal that arrives while the trainer is still starting up is not lost)."""
    global _process_flag
    if _process_flag is None:
        _process_flag = StopFlag().install()
    return _process_flag


def is_timeout(elapsed_s: float, limit_s: float) -> bool:
    """submitit's rule: time-out once ``elapsed >= min(0.8 * limit, limit - 600 s)``."""
    return elapsed_s >= min(0.8 * limit_s, limit_s - 600.0)


def agree(flag: bool | StopFlag, device: object = "cpu") -> bool:
    """True on every rank when any rank has the flag set (all-reduce MAX); local value otherwise."""
    import torch

    from hpc_sr.dist.collectives import any_rank

    local = flag.requested() if isinstance(flag, StopFlag) else bool(flag)
    return any_rank(local, torch.device(device))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- SLURM
_TIME_RE = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_slurm_time(text: str) -> float | None:
    """SLURM durations (``[D-]HH:MM:SS``, ``MM:SS``, ``MM``) in seconds; None for UNLIMITED/unknown."""
    text = text.strip()
    if text.isdigit():
        return float(int(text) * 60)
    m = _TIME_RE.match(text)
    if not m:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def slurm_time_limit_s(job_id: str | None = None) -> float | None:
    """The time limit of a SLURM job (this one by default) from ``scontrol show job``; None if unknown."""
    job_id = job_id or scontrol_job_id()
    if not job_id:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bTimeLimit=(\S+)", out)
    return parse_slurm_time(m.group(1)) if m else None


def _global_rank() -> int:
    if "RANK" in os.environ:
        return env_int("RANK", 0) or 0
    return slurm_procid()


_requeue_decision: bool | None = None  # one decision per process: the trainer and the launcher may both ask


def requeue_self(max_requeues: int, flag: StopFlag | None = None, timed_out: bool | None = None) -> bool:
    """On global rank 0 of a SLURM job, ``scontrol requeue`` this job; return whether it was asked.

    A time-out is not requeued once ``SLURM_RESTART_COUNT >= max_requeues`` (that count includes
    earlier preemptions, so it errs on the safe side); a preemption always is. ``timed_out`` defaults
    to ``flag.timed_out()``, ``flag`` to the process-wide flag of :func:`install_stop_flag` (no flag:
    a preemption). Other ranks and non-SLURM runs return False.
    Calling it again in the same process returns the first answer without asking SLURM twice.
    """
    global _requeue_decision
    if _requeue_decision is not None:
        return _requeue_decision
    job_id = scontrol_job_id()
    if not job_id or _global_rank() != 0:
        return False
    flag = flag if flag is not None else _process_flag
    if timed_out is None:
        timed_out = flag.timed_out() if flag is not None else False
    restarts = slurm_restart_count()
    case = "timed-out" if timed_out else "preempted"
    if timed_out and restarts >= max_requeues:
        print(f"[hpc_sr] job {job_id} {case}; not requeued: {restarts} restarts >= max_requeues "
              f"{max_requeues}", file=sys.stderr, flush=True)
        _requeue_decision = False
        return False
    try:
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60, capture_output=True,
                       text=True)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", "") or exc
        print(f"[hpc_sr] job {job_id}: scontrol requeue failed: {err}", file=sys.stderr, flush=True)
        _requeue_decision = False
        return False
    print(f"[hpc_sr] job {job_id} {case}; requeued (restart {restarts + 1}, max_requeues {max_requeues})",
          file=sys.stderr, flush=True)
    _requeue_decision = True
    return True
