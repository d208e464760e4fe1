"""`hpc-sr cv`: k-fold cross-validation, every fold one run, here one after another or as one SLURM job array.

    hpc-sr cv configs/quickstart_cpu.yaml --folds 5 data.path=data/few train.early_stop_patience=3
    hpc-sr cv configs/deeplense_srresnet.yaml --folds 5 --slurm --gpus-per-node 4 --time 4:00:00 [--dry-run]
    hpc-sr runs runs/<log.name> --by data.fold          # per fold, then mean +- std over the folds

Fold k trains with ``data.folds=K data.fold=k`` (:mod:`hpc_sr.data.folds`) in its own run directory
``<log.runs_dir>/<log.name>/fold_<k>`` (the names a sweep gives its points: a fold sweep is the grid
``data.fold: [0, ..., K-1]`` with ``data.folds=K`` fixed). Locally, folds whose run is complete (its latest
checkpoint at ``train.steps``, or at the step where it stopped early) are skipped and the others resume from
their latest checkpoint, so the command can be run again after an interruption; at the end it prints the
per-fold best validation PSNR/SSIM and their mean +- std over the folds. ``--slurm`` submits the K runs as one
job array through :func:`hpc_sr.launch.slurm.submit` (each task resumes and requeues like any training job).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_sr.config import Config, ConfigError, load_config
from hpc_sr.errors import HpcSrError
from hpc_sr.launch.slurm import add_slurm_arguments, slurm_flags, submit, sweep_points

FOLD_SWEEP = "fold"  # the sweep name: runs fold_0 .. fold_<K-1>
SUMMARY_COLUMNS = ["data.fold", "run", "status", "step", "best_step", "best_psnr", "best_ssim", "final_psnr"]


# ----------------------------------------------------------------------------------------------- plan
def check_folds_count(folds: int) -> None:
    if folds < 2:
        raise ConfigError(f"--folds {folds}: k-fold cross-validation needs K >= 2 folds")


def cv_root(cfg: Config) -> Path:
    """Where the fold runs of ``cfg`` go: ``<log.runs_dir>/<log.name>``."""
    return Path(cfg.log.runs_dir) / cfg.log.name


def fold_sweep(folds: int) -> dict[str, Any]:
    """The sweep of a K-fold cross-validation: a grid over ``data.fold``."""
    return {"name": FOLD_SWEEP, "grid": {"data.fold": list(range(folds))}}


def common_overrides(config_path: str | None, overrides: list[str], folds: int) -> tuple[Config, list[str]]:
    """(base config, the overrides every fold shares: the user's, ``data.folds=K`` and the runs folder)."""
    check_folds_count(folds)
    base = load_config(config_path, [*overrides, f"data.folds={folds}", "data.fold=0"])
    return base, [*overrides, f"data.folds={folds}", f"log.runs_dir={cv_root(base)}"]


def fold_configs(config_path: str | None, overrides: list[str], folds: int) -> list[tuple[int, Config]]:
    """``[(k, config of fold k), ...]``, each loaded and checked (a bad key fails before any training)."""
    from hpc_sr.train.components import check_config

    _, common = common_overrides(config_path, overrides, folds)
    out = []
    for k, (name, extra) in enumerate(sweep_points(fold_sweep(folds), FOLD_SWEEP)):
        cfg = load_config(config_path, [*common, *extra, f"log.name={name}"])
        check_config(cfg)
        out.append((k, cfg))
    return out


def fold_done(cfg: Config) -> str | None:
    """``"finished"`` or ``"early-stopped"`` when the run of ``cfg`` is complete, else None.

    Complete: its latest checkpoint is at ``train.steps``, or at the step of the run's last "early_stop"
    record (metrics.jsonl), so an interrupted fold is resumed, not skipped.
    """
    from hpc_sr.apps.runs import read_run
    from hpc_sr.models.checkpoint_layout import latest_step

    latest = latest_step(cfg.run_dir / "checkpoints")
    if latest is None:
        return None
    step = int(latest.name.rsplit("_", 1)[-1])
    if step >= cfg.train.steps:
        return "finished"
    if (cfg.run_dir / "metrics.jsonl").is_file():
        stop = read_run(cfg.run_dir).early_stop
        if stop is not None and int(stop.get("step", -1)) == step:
            return "early-stopped"
    return None


# ----------------------------------------------------------------------------------------------- local
def run_folds(
    config_path: str | None,
    overrides: list[str] | None,
    folds: int,
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> int:
    """Train folds 0..K-1 one after another in this process (or under torchrun: every rank runs this),
    skipping complete ones; then print the summary. Returns 0, or the first non-zero training exit code
    (REQUEUE_EXIT_CODE after a stop signal: run the command again to go on)."""
    from hpc_sr.dist.env import DistEnv
    from hpc_sr.train.entry import run_training

    plan = fold_configs(config_path, list(overrides or []), folds)
    main = DistEnv.from_environment().is_main
    say = echo if main else (lambda _text: None)
    for k, cfg in plan:
        done = fold_done(cfg)
        if done is not None:
            say(f"fold {k}/{folds}: {cfg.run_dir} {done}, skipped")
            continue
        if dry_run:
            say(f"fold {k}/{folds}: would train {cfg.run_dir} (data.folds={folds} data.fold={k})")
            continue
        say(f"fold {k}/{folds}: training {cfg.run_dir}")
        code = run_training(cfg, resume="auto")
        if code != 0:
            say(f"fold {k}/{folds}: training exited with {code}; run the same command again to resume")
            return code
    if main and not dry_run:
        echo(summary_text([cfg.run_dir for _, cfg in plan]))
    return 0


def summary_rows(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one row per fold run that exists, the mean/std over them) from the runs' metrics."""
    from hpc_sr.apps.runs import overall, read_config, read_run, summarize

    rows = []
    for run in run_dirs:
        if not (run / "metrics.jsonl").is_file():
            continue
        cfg = read_config(run)
        row = summarize(run, read_run(run), cfg)
        row["data.fold"] = cfg.get("data.fold")
        rows.append(row)
    return rows, overall(rows)


def summary_text(run_dirs: list[Path]) -> str:
    """The per-fold table and the mean +- std line, as `hpc-sr runs DIR --by data.fold` prints them."""
    from hpc_sr.apps.runs import FORMATS, overall_line, to_markdown

    rows, stats = summary_rows(run_dirs)
    if not rows:
        return "no fold has logged anything yet"

    def cell(col: str, v: Any) -> Any:
        return format(v, FORMATS[col]) if isinstance(v, float) and col in FORMATS else v

    cells = [[cell(c, r.get(c)) for c in SUMMARY_COLUMNS] for r in rows]
    return to_markdown(SUMMARY_COLUMNS, cells) + "\n" + overall_line(stats).replace("runs:", "folds:", 1)


# ----------------------------------------------------------------------------------------------- SLURM
def submit_folds(
    config_path: str | None,
    overrides: list[str] | None,
    folds: int,
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    **submit_kwargs: Any,
) -> list[str]:
    """Submit the K folds as one SLURM job array (``hpc-sr cv --slurm``, ``hpc-sr submit --folds K``);
    job files under ``<runs_dir>/<log.name>/slurm``. Returns the job ids ([] for ``dry_run``)."""
    if config_path:
        config_path = str(Path(config_path).resolve())
    base, common = common_overrides(config_path, list(overrides or []), folds)
    fold_configs(config_path, list(overrides or []), folds)  # every fold's config checked before submitting
    root = cv_root(base)
    ids = submit(
        config_path,
        common,
        sweep=fold_sweep(folds),
        dry_run=dry_run,
        echo=echo,
        job_name=f"{base.log.name}-cv",
        job_folder=root / "slurm",
        **submit_kwargs,
    )
    echo(f"# {folds} folds -> {root}/{FOLD_SWEEP}_<k>; when done: hpc-sr runs {root} --by data.fold")
    return ids


# ----------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpc-sr cv",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] key=value",
        help="the experiment YAML (optional: the defaults), then dotted overrides",
    )
    p.add_argument("--config", default=None, help="the experiment YAML (instead of the first argument)")
    p.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (>= 2)")
    p.add_argument("--slurm", action="store_true", help="submit the folds as one SLURM job array")
    add_slurm_arguments(p)  # job resources for --slurm; --dry-run: print the plan (the sbatch with --slurm)
    return p


def split_items(items: list[str], config: str | None) -> tuple[str | None, list[str]]:
    """(config path, overrides): the first item is the config unless it is an override (``key=value``)."""
    if items and "=" not in items[0]:
        if config:
            raise ConfigError(f"give the config once: --config {config} or {items[0]}")
        return items[0], items[1:]
    return config, items


def main(argv: list[str] | None = None) -> int:
    """`hpc-sr cv ...` (options and overrides in any order); an HpcSrError is ``error: ...`` and exit 2."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        return _command(args)
    except HpcSrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    config, overrides = split_items(args.items, args.config)
    if args.slurm:
        submit_folds(
            config,
            overrides,
            args.folds,
            tasks_per_node=args.tasks_per_node,
            dry_run=args.dry_run,
            **slurm_flags(args),
        )
        return 0
    given = [f"--{k.replace('_', '-')}" for k, v in slurm_flags(args).items() if v is not None]
    if given:
        raise ConfigError(f"{' '.join(given)}: SLURM resources need --slurm")
    return run_folds(config, overrides, args.folds, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
