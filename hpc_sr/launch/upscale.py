"""`hpc-sr submit-upscale`: run `hpc-sr upscale` as a SLURM job through submitit, requeued on USR2.

    submit_upscale(["--checkpoint", "G.pt", "--out", "sr/", "cutouts/"], nodes=2, gpus_per_node=4,
                   time="04:00:00")
    submit_upscale(common, array="parts.txt")   # a job array: one task per line (its own inputs and --out)
    submit_upscale(argv, dry_run=True)           # print the sbatch script, submit nothing

Every SLURM task runs exactly ``hpc-sr upscale ARGS`` (``hpc_sr.cli:main``) as one rank of the job
(RANK/WORLD_SIZE/LOCAL_RANK exported from the SLURM task, :class:`hpc_sr.launch.requeue.RequeueingJob`), in
the directory it was submitted from. The job is submitted like training (``hpc-sr submit``):
``--signal=USR2@90 --requeue``; the upscale runner stops at a batch boundary on USR2/SIGTERM, records what
it finished in the output directory's ledger and returns ``REQUEUE_EXIT_CODE``; rank 0 requeues the job and
the next run, with the same arguments (less ``--overwrite``: that was for the first run), resumes from the
ledger. Job files and logs go to ``--logs`` (default ``<out>/.slurm/``; for an array, ``.slurm/`` in the
outputs' common folder).
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_sr.config import SlurmConfig
from hpc_sr.dist.envvars import env_int
from hpc_sr.dist.slurm import MAX_REQUEUES_VAR
from hpc_sr.errors import HpcSrError
from hpc_sr.launch.requeue import RequeueingJob, resolve_entry
from hpc_sr.launch.slurm import add_slurm_arguments, job_parameters, sbatch_text, slurm_flags

DEFAULT_UPSCALE_ENTRY = "hpc_sr.cli:main"  # called with ["upscale", *args]: the `hpc-sr upscale` command
LOGS = ".slurm"


class SlurmUpscaleJob(RequeueingJob):
    """``entry(["upscale", *argv])`` in every task, from ``cwd``; requeued when it stopped on a signal."""

    saved = "its finished outputs in the ledger"

    def __init__(self, argv: list[str], max_requeues: int = 3, entry: str = DEFAULT_UPSCALE_ENTRY,
                 cwd: str | None = None) -> None:
        self.argv = list(argv)
        self.max_requeues = max_requeues
        self.entry = entry
        self.cwd = cwd

    def run(self) -> int:
        if self.cwd:
            os.chdir(self.cwd)
        argv = self.argv
        os.environ[MAX_REQUEUES_VAR] = str(self.max_requeues)  # the runner's time-out requeue limit
        if env_int("SLURM_RESTART_COUNT", 0):  # a requeued run resumes: --overwrite was for the first one
            argv = [a for a in argv if a != "--overwrite"]
        return int(resolve_entry(self.entry)(["upscale", *argv]) or 0)


class _ArgumentError(HpcSrError):
    """Upscale arguments that `hpc-sr upscale` would refuse."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # raise, not exit: checked when submitting, named as upscale's
        raise _ArgumentError(f"upscale arguments: {message}")


def parse_upscale_argv(argv: list[str]) -> argparse.Namespace:
    """``hpc-sr upscale`` arguments parsed as that command does (HpcSrError when it would refuse them)."""
    from hpc_sr.apps.upscale import add_upscale_arguments

    parser = _Parser(prog="hpc-sr upscale", add_help=False)
    add_upscale_arguments(parser)
    return parser.parse_args(argv)


def array_argvs(common: list[str], array: str | Path) -> list[list[str]]:
    """One argv per array task: ``common`` + the shell-split arguments of each line of ``array`` (blank
    lines and ``#`` comments skipped)."""
    try:
        lines = Path(array).read_text().splitlines()
    except OSError as exc:
        raise HpcSrError(f"--array {array}: {exc}") from None
    try:
        extra = [shlex.split(line, comments=True) for line in lines]
    except ValueError as exc:
        raise HpcSrError(f"--array {array}: {exc}") from None
    argvs = [[*common, *e] for e in extra if e]
    if not argvs:
        raise HpcSrError(f"--array {array}: no task (one line of upscale arguments per task)")
    return argvs


def submit_upscale(upscale_argv: list[str], *, array: str | Path | None = None,
                   logs: str | Path | None = None, job_name: str = "hpc_sr_upscale", tasks_per_node: int = 1,
                   dry_run: bool = False, entry: str = DEFAULT_UPSCALE_ENTRY,
                   echo: Callable[[str], None] = print, **slurm: Any) -> list[str]:
    """Submit ``hpc-sr upscale upscale_argv`` (or a job array, one task per line of ``array``); return the
    SLURM job ids ([] for ``dry_run``).

    ``slurm``: the fields of :class:`hpc_sr.config.SlurmConfig` (nodes, gpus_per_node, time, partition,
    account, qos, constraint, mem, cpus_per_task, max_requeues; None or absent: its default).
    """
    scfg = SlurmConfig(**{k: v for k, v in slurm.items() if v is not None})
    argvs = array_argvs(upscale_argv, array) if array else [list(upscale_argv)]
    outs = [Path(parse_upscale_argv(a).out).resolve() for a in argvs]
    if len(set(outs)) < len(outs):
        raise HpcSrError("--array: every task needs its own --out (two tasks would share a ledger)")
    folder = Path(logs).resolve() if logs else Path(os.path.commonpath(outs)) / LOGS
    params = job_parameters(scfg, job_name, tasks_per_node)
    if dry_run:
        echo(sbatch_text(folder, params, array_size=len(argvs) if array else None))
        for i, a in enumerate(argvs):
            echo(f"# task {i}: hpc-sr upscale {shlex.join(a)}")
        return []

    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=scfg.max_requeues)
    except RuntimeError as exc:
        raise HpcSrError(f"cannot submit: {exc}") from exc
    executor.update_parameters(**params)
    cwd = os.getcwd()
    tasks = [SlurmUpscaleJob(a, scfg.max_requeues, entry, cwd) for a in argvs]
    if array:
        with executor.batch():
            jobs = [executor.submit(t) for t in tasks]
    else:
        jobs = [executor.submit(tasks[0])]
    for job, out in zip(jobs, outs):
        echo(f"submitted job {job.job_id}: hpc-sr upscale -> {out}")
        echo(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    return [job.job_id for job in jobs]


# ----------------------------------------------------------------------------------------------- CLI
def add_submit_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `hpc-sr submit-upscale`: the job's (as `hpc-sr submit` takes them), then ``--`` and the
    arguments of `hpc-sr upscale`."""
    add_slurm_arguments(parser)
    parser.add_argument("--job-name", default="hpc_sr_upscale")
    parser.add_argument("--array", default=None,
                        help="a job array: one task per line of this file, each line's upscale arguments "
                             "(its inputs and its own --out) added to those after --")
    parser.add_argument("--logs", default=None,
                        help=f"submitit's job files and logs; None: <out>/{LOGS}/")
    parser.add_argument("--entry", default=DEFAULT_UPSCALE_ENTRY, help=argparse.SUPPRESS)
    parser.add_argument("upscale", nargs="*", metavar="-- UPSCALE_ARGS",
                        help="the `hpc-sr upscale` arguments, after -- (e.g. -- --checkpoint G.pt --out sr/ "
                             "cutouts/)")


def run_submit_upscale(args: argparse.Namespace) -> int:
    """Handler of `hpc-sr submit-upscale`."""
    if not args.upscale:
        raise HpcSrError("no upscale arguments: hpc-sr submit-upscale [job options] -- --checkpoint G.pt "
                         "--out DIR INPUTS...")
    submit_upscale(args.upscale, array=args.array, logs=args.logs, job_name=args.job_name,
                   tasks_per_node=args.tasks_per_node, dry_run=args.dry_run, entry=args.entry,
                   **slurm_flags(args))
    return 0
