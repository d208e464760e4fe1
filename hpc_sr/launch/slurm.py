"""`hpc-sr submit`: submit training to SLURM through submitit (one task per GPU, requeue on USR2).

    ids = submit("configs/deeplense_srgan.yaml", ["train.steps=20000"], nodes=2, gpus_per_node=4,
                 time="12:00:00")
    submit(cfg, [], sweep="sweeps/lr.yaml")   # one job array, one run directory per grid point
    submit(cfg, [], dry_run=True)             # print the sbatch script, submit nothing

Job files and logs go to ``<runs_dir>/<name>/slurm/``. The jobs run :class:`SlurmTrainJob`, which calls
the training entry with ``resume="auto"`` and requeues the job when it stopped on a signal.
A sweep file is YAML, either ``{name: base, grid: {"train.lr_g": [1e-4, 2e-4], "model.blocks": [4, 8]}}``
(the cartesian product) or a list of override sets (``[["train.lr_g=1e-4"], {"model.blocks": 8}]``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hpc_sr.config import Config, ConfigError, SlurmConfig, load_config
from hpc_sr.dist.signals import parse_slurm_time
from hpc_sr.errors import HpcSrError
from hpc_sr.launch.requeue import DEFAULT_ENTRY, SlurmTrainJob

SIGNAL_DELAY_S = 90


# ----------------------------------------------------------------------------------------------- sweeps
def _fmt(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def sweep_points(sweep: str | Path | dict | list, base_name: str) -> list[tuple[str, list[str]]]:
    """``[(run name, overrides), ...]`` for a sweep file or its parsed content; names ``<base>_<i>``."""
    data: Any = sweep
    where = "sweep"
    if isinstance(sweep, str | Path):
        where = str(sweep)
        try:
            data = yaml.safe_load(Path(sweep).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read sweep file {sweep}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{sweep}: not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        unknown = set(data) - {"name", "grid"}
        if unknown or "grid" not in data or not isinstance(data["grid"], dict) or not data["grid"]:
            raise ConfigError(f"{where}: expected {{name: ..., grid: {{key: [values]}}}}; "
                              f"got keys {sorted(data)}")
        base_name = str(data.get("name") or base_name)
        keys = list(data["grid"])
        values = [v if isinstance(v, list) else [v] for v in data["grid"].values()]
        sets = [[f"{k}={_fmt(v)}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]
    elif isinstance(data, list) and data:
        sets = []
        for i, item in enumerate(data):
            if isinstance(item, dict):
                sets.append([f"{k}={_fmt(v)}" for k, v in item.items()])
            elif isinstance(item, list) and all(isinstance(x, str) for x in item):
                sets.append(list(item))
            else:
                raise ConfigError(f"{where}: item {i} must be a mapping or a list of key=value strings: "
                                  f"{item!r}")
    else:
        raise ConfigError(f"{where}: expected a mapping with 'grid' or a non-empty list of override sets")
    return [(f"{base_name}_{i}", s) for i, s in enumerate(sets)]


# ----------------------------------------------------------------------------------------------- parameters
def _minutes(time: str) -> int:
    seconds = parse_slurm_time(time)
    if seconds is None or seconds <= 0:
        raise ConfigError(f"slurm time {time!r} is not a SLURM duration like 90, 01:30:00 or 1-00:00:00")
    return max(1, math.ceil(seconds / 60))


def slurm_parameters(cfg: Config, tasks_per_node: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for ``cfg.slurm``: one task per GPU, else ``tasks_per_node``."""
    return job_parameters(cfg.slurm, cfg.log.name, tasks_per_node)


def job_parameters(s: SlurmConfig, job_name: str, tasks_per_node: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of a job: one task per GPU (else ``tasks_per_node``), USR2 90 s
    before the time limit, requeueable."""
    tasks = s.gpus_per_node if s.gpus_per_node > 0 else tasks_per_node
    if tasks < 1 or s.nodes < 1:
        raise ConfigError(f"need at least one node and one task per node; got nodes={s.nodes}, tasks={tasks}")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": _minutes(s.time),
        "nodes": s.nodes,
        "ntasks_per_node": tasks,
        "cpus_per_task": s.cpus_per_task,
        "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": {"requeue": True},
        "setup": [f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{s.cpus_per_task}}}"],
    }
    if s.gpus_per_node > 0:
        params["gpus_per_node"] = s.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    return params


def _flag_overrides(**flags: Any) -> list[str]:
    return [f"slurm.{k}={v}" for k, v in flags.items() if v is not None]


def sbatch_text(folder: Path, params: dict[str, Any], array_size: int | None = None,
                python: str | None = None) -> str:
    """The sbatch script submitit would write (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = python or shlex.quote(sys.executable)
    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)


# ----------------------------------------------------------------------------------------------- submit
def submit(config_path: str | None, overrides: list[str] | None = None, *, nodes: int | None = None,
           gpus_per_node: int | None = None, tasks_per_node: int = 1, partition: str | None = None,
           time: str | None = None, account: str | None = None, qos: str | None = None,
           constraint: str | None = None, mem: str | None = None, cpus_per_task: int | None = None,
           sweep: str | Path | dict | list | None = None, dry_run: bool = False,
           max_requeues: int | None = None, entry: str = DEFAULT_ENTRY, echo: Callable[[str], None] = print,
           job_name: str | None = None, job_folder: str | Path | None = None) -> list[str]:
    """Submit one job (or one job array for ``sweep``: a file or its parsed content); return the SLURM job ids
    ([] for ``dry_run``).

    Command-line values override the config's ``slurm`` section (and are recorded in the run's config).
    ``job_name`` / ``job_folder``: the SLURM job name and the folder of its files (default: the run or sweep
    name, ``<runs_dir>/<that name>/slurm``).
    """
    overrides = list(overrides or [])
    overrides += _flag_overrides(nodes=nodes, gpus_per_node=gpus_per_node, partition=partition, time=time,
                                 account=account, qos=qos, constraint=constraint, mem=mem,
                                 cpus_per_task=cpus_per_task, max_requeues=max_requeues)
    config_path = str(Path(config_path).resolve()) if config_path else None
    cfg = load_config(config_path, overrides)
    points = sweep_points(sweep, cfg.log.name) if sweep else [(cfg.log.name, [])]
    runs = []
    for name, extra in points:
        run_overrides = overrides + extra + ([f"log.name={name}"] if sweep else [])
        load_config(config_path, run_overrides)  # fail here, not in the queue, on a bad grid key/value
        runs.append((name, run_overrides))
    base = points[0][0].rsplit("_", 1)[0] if sweep else cfg.log.name
    folder = Path(job_folder or Path(cfg.log.runs_dir) / base / "slurm").resolve()
    params = slurm_parameters(cfg, tasks_per_node)
    params["job_name"] = job_name or base
    if dry_run:
        echo(sbatch_text(folder, params, array_size=len(runs) if sweep else None))
        for name, run_overrides in runs:
            echo(f"# run {name}: {' '.join(run_overrides) or '(no overrides)'}")
        return []

    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.slurm.max_requeues)
    except RuntimeError as exc:
        raise HpcSrError(f"cannot submit: {exc}") from exc
    executor.update_parameters(**params)
    jobs = []
    if sweep:
        with executor.batch():
            for _, run_overrides in runs:
                jobs.append(executor.submit(SlurmTrainJob(config_path, run_overrides, cfg.slurm.max_requeues,
                                                          entry)))
    else:
        jobs.append(executor.submit(SlurmTrainJob(config_path, runs[0][1], cfg.slurm.max_requeues, entry)))
    for job, (name, run_overrides) in zip(jobs, runs):
        echo(f"submitted job {job.job_id}: run {name} -> {Path(cfg.log.runs_dir) / name}")
        echo(f"  overrides: {' '.join(run_overrides) or '(none)'}")
        echo(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    logdir = Path(cfg.log.runs_dir) / (runs[0][0] if len(runs) == 1 else "")
    echo(f"TensorBoard: tensorboard --logdir {logdir / 'tb' if len(runs) == 1 else logdir} "
         f"--host 127.0.0.1 --port 6006")
    echo("  from your laptop: ssh -L 6006:127.0.0.1:6006 <user>@<login-node>, then open http://127.0.0.1:6006")
    return [job.job_id for job in jobs]


# ----------------------------------------------------------------------------------------------- CLI
SLURM_FLAGS = ("nodes", "gpus_per_node", "partition", "time", "account", "qos", "constraint", "mem",
               "cpus_per_task", "max_requeues")  # the flags that set ``slurm`` (SlurmConfig) fields


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's resources and requeue limit (``SLURM_FLAGS``), ``--tasks-per-node`` and ``--dry-run``."""
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--gpus-per-node", type=int, default=None, help="one task per GPU")
    parser.add_argument("--tasks-per-node", type=int, default=1, help="ranks per node when --gpus-per-node 0")
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time", default=None, help="time limit, e.g. 12:00:00")
    parser.add_argument("--account", default=None)
    parser.add_argument("--qos", default=None)
    parser.add_argument("--constraint", default=None)
    parser.add_argument("--mem", default=None, help="memory per node, e.g. 64G")
    parser.add_argument("--max-requeues", type=int, default=None, help="time-outs before giving up")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")


def slurm_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SLURM_FLAGS`` values of parsed :func:`add_slurm_arguments` (None: not given)."""
    return {k: getattr(args, k) for k in SLURM_FLAGS}


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `hpc-sr submit` (defaults come from the config's ``slurm`` section)."""
    parser.add_argument("--config", default=None, help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_slurm_arguments(parser)
    parser.add_argument("--sweep", default=None, help="YAML grid or list of override sets: one job array")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="k-fold cross-validation: one job array over data.fold=0..K-1 (as `hpc-sr cv "
                        "--slurm`), runs in <runs_dir>/<log.name>/fold_<k>")
    parser.add_argument("--entry", default=DEFAULT_ENTRY, help=argparse.SUPPRESS)


def run_submit(args: argparse.Namespace) -> int:
    """Handler of `hpc-sr submit`."""
    if args.folds is not None:
        from hpc_sr.launch.cv import submit_folds

        if args.sweep:
            raise ConfigError("give --sweep or --folds (a fold sweep is a grid over data.fold), not both")
        submit_folds(args.config, args.overrides, args.folds, tasks_per_node=args.tasks_per_node,
                     dry_run=args.dry_run, entry=args.entry, **slurm_flags(args))
        return 0
    submit(args.config, args.overrides, tasks_per_node=args.tasks_per_node, sweep=args.sweep,
           dry_run=args.dry_run, entry=args.entry, **slurm_flags(args))
    return 0
