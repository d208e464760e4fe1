"""Compare training runs: one row per run from metrics.jsonl (TensorBoard events when it is missing).

    hpc-sr runs runs/sweep                      # Markdown table of every run below
    hpc-sr runs runs/a runs/b --format csv      # or --json
    hpc-sr runs runs/sweep --by train.lr_g      # mean/std of best PSNR per value
    hpc-sr runs runs/cv --by data.fold          # k-fold runs: per fold, then mean +- std over all folds
    hpc-sr runs runs/sweep --plot curves.png    # loss and val PSNR curves

A run may have several segments (one "start" record each, after a requeue or resume). A segment that resumed
from step ``s`` makes the earlier records with step > s orphans: they are dropped, and a step that is logged
again keeps its last value. A truncated last line (a run still writing) is skipped. Wall time is summed over
segments; device-hours = wall x world_size / 3600 per segment.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from hpc_sr.apps.cli_common import run_cli
from hpc_sr.atomic import atomic_open
from hpc_sr.config import closest, flatten
from hpc_sr.errors import HpcSrError

IGNORED_KEYS = {"log.name"}  # always differs between runs; the run column names it already
STALE_AFTER_S = 900.0  # a run whose metrics.jsonl is older than this and not finished is "stopped"


@dataclass
class Segment:
    """One process lifetime of a run (from a "start" record to the next)."""

    start_step: int
    wall: float = 0.0
    world_size: int = 1


@dataclass
class RunHistory:
    """What one run logged, orphans removed: step -> last record per kind."""

    train: dict[int, dict[str, Any]] = field(default_factory=dict)
    val: dict[int, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    early_stop: dict[str, Any] | None = None  # the "early_stop" record of the last segment, if it stopped so
    last_kind: str | None = None
    bad_lines: int = 0
    source: str = "metrics.jsonl"

    @property
    def last_step(self) -> int:
        steps = [*self.train, *self.val, *self.checkpoints]
        steps += [s.start_step for s in self.segments]
        return max(steps, default=0)


# ----------------------------------------------------------------------------------------------- reading
def reduce_records(records: list[dict[str, Any]]) -> RunHistory:
    """Fold records in file order into a history: segments, last value per step, orphans dropped."""
    h = RunHistory()
    per_kind = {"train": h.train, "val": h.val, "checkpoint": h.checkpoints}
    for rec in records:
        kind, step = rec.get("kind"), int(rec.get("step", 0))
        if kind == "start" or not h.segments:
            h.segments.append(Segment(start_step=step if kind == "start" else 0))
            if kind == "start":
                h.early_stop = None  # a resumed run stops early again (and says so) or trains on
                for table in per_kind.values():
                    for orphan in [s for s in table if s > step]:
                        del table[orphan]
        seg = h.segments[-1]
        seg.wall = max(seg.wall, float(rec.get("wall", 0.0)))
        seg.world_size = int(rec.get("world_size", seg.world_size))
        if kind in per_kind:
            per_kind[kind][step] = rec
        elif kind == "early_stop":
            h.early_stop = rec
        h.last_kind = kind
    return h


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a metrics.jsonl and the number of unreadable lines (a truncated last line is expected)."""
    records, bad = [], 0
    lines = path.read_text(errors="replace").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            if i < len(lines) - 1:  # not the last, partial line of a run still writing
                print(f"warning: {path}:{i + 1}: unreadable line skipped", file=sys.stderr)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def _world_size_from_checkpoints(run_dir: Path) -> int:
    from hpc_sr.models.checkpoint_layout import latest_step, read_meta

    latest = latest_step(run_dir / "checkpoints")
    return int(read_meta(latest).get("world_size", 1)) if latest is not None else 1


def tensorboard_records(run_dir: Path) -> list[dict[str, Any]]:
    """Records like metrics.jsonl's from tb/ event files, one segment per file (one SummaryWriter each).

    TensorBoard does not know the world size: it is taken from the latest checkpoint's meta.json (else 1).
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    files = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    if not files:
        raise HpcSrError(f"{run_dir}: neither metrics.jsonl nor TensorBoard events under {run_dir / 'tb'}")
    world = _world_size_from_checkpoints(run_dir)
    accumulators = []
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
        acc.Reload()
        accumulators.append(acc)
    records: list[dict[str, Any]] = []
    for acc in sorted(accumulators, key=lambda a: a.FirstEventTimestamp()):  # names may not sort by time
        t0 = acc.FirstEventTimestamp()
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for tag in acc.Tags()["scalars"]:
            prefix, _, key = tag.partition("/")
            kind = {"train": "train", "val": "val", "val_bicubic": "val"}.get(prefix)
            if kind is None:
                continue
            for ev in acc.Scalars(tag):
                row = rows.setdefault((kind, ev.step), {"kind": kind, "step": ev.step, "world_size": world,
                                                        "wall": 0.0})
                row["wall"] = max(row["wall"], ev.wall_time - t0)
                if prefix == "train":
                    row[key] = ev.value
                else:
                    row.setdefault("model" if prefix == "val" else "bicubic", {})[key] = ev.value
        ordered = sorted(rows.values(), key=lambda r: (r["step"], r["wall"]))
        first = min((r["step"] for r in ordered if r["kind"] == "train"), default=1)
        records.append({"kind": "start", "step": max(0, first - 1), "wall": 0.0, "world_size": world})
        records.extend(ordered)
    return records


def read_run(run_dir: str | Path) -> RunHistory:
    """History of one run directory: metrics.jsonl, or tb/ events when metrics.jsonl is missing."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.is_file():
        records, bad = read_jsonl(jsonl)
        history = reduce_records(records)
        history.bad_lines = bad
        return history
    history = reduce_records(tensorboard_records(run_dir))
    history.source = "tensorboard"
    return history


def read_config(run_dir: Path) -> dict[str, Any]:
    """Flattened resolved config of a run ({} when config.yaml is missing)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HpcSrError(f"{path}: not valid YAML: {exc}") from None
    return flatten(data) if isinstance(data, dict) else {}


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "config.yaml").is_file() or (path / "tb").is_dir()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories given directly or found below sweep directories (sorted, no duplicates)."""

    def below(d: Path) -> list[Path]:
        if is_run_dir(d):
            return [d]  # never look inside a run (checkpoints/, tb/)
        subdirs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
        return [r for c in subdirs for r in below(c)]

    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise HpcSrError(f"{p}: not a directory")
        found = below(p)
        if not found:
            raise HpcSrError(f"{p}: no run directories (metrics.jsonl, config.yaml or tb/) below it")
        runs.extend(found)
    return list(dict.fromkeys(r.resolve() for r in runs))


# ----------------------------------------------------------------------------------------------- summary
def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def summarize(run_dir: Path, history: RunHistory, config: dict[str, Any],
              stale_after_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """One row of numbers for a run (None where the run has not logged it)."""
    total = config.get("train.steps")
    last = history.last_step
    if total is not None and last >= int(total):
        status = "finished"
    elif history.early_stop is not None:
        status = "early-stopped"  # done: train.early_stop_patience validations without a gain
    elif history.last_kind == "stop":
        status = "stopped"
    else:
        jsonl = run_dir / "metrics.jsonl"
        fresh = jsonl.is_file() and time.time() - jsonl.stat().st_mtime < stale_after_s
        status = "running" if fresh else "stopped"
    val_steps = sorted(history.val)
    psnrs = {s: _num(history.val[s].get("model", {}).get("psnr")) for s in val_steps}
    psnrs = {s: v for s, v in psnrs.items() if v is not None}
    final = history.val[val_steps[-1]] if val_steps else {}
    final_psnr = _num(final.get("model", {}).get("psnr"))
    bicubic = _num(final.get("bicubic", {}).get("psnr"))
    best_step = max(psnrs, key=lambda s: (psnrs[s], -s)) if psnrs else None
    ips = [v for r in history.train.values() if (v := _num(r.get("images_per_s"))) is not None]
    wall = sum(seg.wall for seg in history.segments)
    return {
        "run": run_dir.name,
        "status": status,
        "step": last,
        "steps": total,
        "segments": len(history.segments),
        "final_step": val_steps[-1] if val_steps else None,
        "final_psnr": final_psnr,
        "final_ssim": _num(final.get("model", {}).get("ssim")),
        "best_step": best_step,
        "best_psnr": psnrs[best_step] if best_step is not None else None,
        "best_ssim": _num(history.val[best_step].get("model", {}).get("ssim")) if psnrs else None,
        "bicubic_psnr": bicubic,
        "gain_db": final_psnr - bicubic if final_psnr is not None and bicubic is not None else None,
        "images_per_s": statistics.median(ips) if ips else None,
        "wall_s": wall,
        "device_hours": sum(seg.wall * seg.world_size for seg in history.segments) / 3600.0,
        "source": history.source,
        "path": str(run_dir),
    }


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose value is not the same in every run (missing counts as a value)."""
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if k not in IGNORED_KEYS and len({json.dumps(c.get(k)) for c in configs}) > 1]


def aggregate(paths: list[str | Path],
              stale_after_s: float = STALE_AFTER_S) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, differing config keys) for the runs under ``paths``; each row holds its config values too."""
    runs = find_runs(paths)
    configs = [read_config(r) for r in runs]
    keys = differing_keys(configs)
    rows = []
    for run, cfg in tqdm(list(zip(runs, configs)), desc="read runs", unit="run", disable=len(runs) < 10):
        row = summarize(run, read_run(run), cfg, stale_after_s)
        row["config"] = {k: cfg.get(k) for k in keys}
        row["_all_config"] = cfg
        rows.append(row)
    return rows, keys


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for no values; std None for one value)."""
    mean = statistics.fmean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def group_by(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Mean and sample std of best PSNR and SSIM (and final PSNR) per value of a config key."""
    if not any(key in r["_all_config"] for r in rows):
        known = sorted(set().union(*(r["_all_config"] for r in rows)))
        hint = closest(key, known)
        suggestion = f" (did you mean {hint}?)" if hint else ""
        raise HpcSrError(f"--by {key}: no run has this config key{suggestion}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["_all_config"].get(key)), []).append(r)
    out = []
    for value, members in sorted(groups.items(), key=lambda kv: _sort_key(json.loads(kv[0]))):
        best = [r["best_psnr"] for r in members if r["best_psnr"] is not None]
        ssim = [r["best_ssim"] for r in members if r.get("best_ssim") is not None]
        final = [r["final_psnr"] for r in members if r["final_psnr"] is not None]
        (best_mean, best_std), (ssim_mean, ssim_std) = _mean_std(best), _mean_std(ssim)
        out.append({key: json.loads(value), "runs": len(members),
                    "best_psnr_mean": best_mean, "best_psnr_std": best_std,
                    "best_ssim_mean": ssim_mean, "best_ssim_std": ssim_std,
                    "final_psnr_mean": _mean_std(final)[0],
                    "members": " ".join(r["run"] for r in members)})
    return out


def overall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over all runs (of a ``--by`` grouping: over every fold of a cross-validation) of
    the best val PSNR and the SSIM at that step."""
    best = [r["best_psnr"] for r in rows if r["best_psnr"] is not None]
    ssim = [r["best_ssim"] for r in rows if r.get("best_ssim") is not None]
    (best_mean, best_std), (ssim_mean, ssim_std) = _mean_std(best), _mean_std(ssim)
    return {"runs": len(rows), "with_val": len(best), "best_psnr_mean": best_mean, "best_psnr_std": best_std,
            "best_ssim_mean": ssim_mean, "best_ssim_std": ssim_std}


def overall_line(stats: dict[str, Any]) -> str:
    """``over all 3 runs: best val PSNR 27.123 +- 0.456 dB, SSIM 0.8123 +- 0.0101``."""

    def pm(mean: float | None, std: float | None, fmt: str) -> str:
        if mean is None:
            return "-"
        return format(mean, fmt) + (f" +- {format(std, fmt)}" if std is not None else "")

    return (f"over all {stats['runs']} runs: best val PSNR "
            f"{pm(stats['best_psnr_mean'], stats['best_psnr_std'], '.3f')} dB, SSIM "
            f"{pm(stats['best_ssim_mean'], stats['best_ssim_std'], '.4f')}"
            + (f" ({stats['with_val']} with validations)" if stats["with_val"] != stats["runs"] else ""))


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) and not isinstance(value, bool) else (1, str(value))


# ----------------------------------------------------------------------------------------------- output
COLUMNS = ["status", "step", "steps", "segments", "final_step", "final_psnr", "final_ssim", "best_step",
           "best_psnr", "best_ssim", "bicubic_psnr", "gain_db", "images_per_s", "wall_s", "device_hours"]
FORMATS = {"final_psnr": ".3f", "best_psnr": ".3f", "bicubic_psnr": ".3f", "gain_db": "+.3f",
           "final_ssim": ".4f", "best_ssim": ".4f", "images_per_s": ".1f", "wall_s": ".1f",
           "device_hours": ".4f", "best_psnr_mean": ".3f", "best_psnr_std": ".3f", "final_psnr_mean": ".3f",
           "best_ssim_mean": ".4f", "best_ssim_std": ".4f"}


def table(rows: list[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and raw cells: run, differing config keys, metrics."""
    header = ["run", *keys, *COLUMNS]
    cells = [[r["run"], *(r["config"].get(k) for k in keys), *(r[c] for c in COLUMNS)] for r in rows]
    return header, cells


def to_markdown(header: list[str], cells: list[list[Any]]) -> str:
    def fmt(col: str, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float) and col in FORMATS:
            return format(v, FORMATS[col])
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(h, v) for h, v in zip(header, row)) + " |" for row in cells]
    return "\n".join(lines)


def to_csv(header: list[str], cells: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in cells:  # floats in full precision (repr round-trips)
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue().rstrip("\n")


def plot_curves(paths: list[str | Path], out: str | Path) -> Path:
    """PNG with the pixel loss and val PSNR (model solid, bicubic dashed) of every run, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone

    out = Path(out)
    fig = Figure(figsize=(10, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax_loss, ax_psnr = fig.subplots(1, 2)
    for i, run in enumerate(find_runs(paths)):
        h = read_run(run)
        color = f"C{i % 10}"
        steps = sorted(h.train)
        loss_key = "loss_g_pixel" if any("loss_g_pixel" in h.train[s] for s in steps) else next(
            (k for s in steps for k in h.train[s] if k.startswith("loss_")), None)
        if loss_key:
            pts = [(s, v) for s in steps if (v := _num(h.train[s].get(loss_key))) is not None and v > 0]
            if pts:
                ax_loss.plot(*zip(*pts), color=color, lw=1.2, label=run.name)
        vsteps = sorted(h.val)
        for part, style in (("model", "-o"), ("bicubic", "--")):
            pts = [(s, v) for s in vsteps if (v := _num(h.val[s].get(part, {}).get("psnr"))) is not None]
            if pts:
                main_curve = part == "model"
                ax_psnr.plot(*zip(*pts), style, color=color, lw=1.2, ms=3,
                             label=run.name if main_curve else None, alpha=1.0 if main_curve else 0.5)
    ax_loss.set(xlabel="step", ylabel="G pixel loss", yscale="log", title="training loss")
    ax_psnr.set(xlabel="step", ylabel="PSNR [dB]", title="validation PSNR (dashed: bicubic)")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
    handles, labels = ax_psnr.get_legend_handles_labels()
    if handles:
        ax_psnr.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png")
    return out


# ----------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpc-sr runs", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories or sweep directories")
    p.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument("--by", metavar="KEY", help="group runs by a config key (train.lr_g, data.fold): PSNR and "
                   "SSIM mean/std per value; Markdown adds the mean +- std over all runs (all folds)")
    p.add_argument("--plot", metavar="OUT.png", help="also write loss and val PSNR curves of all runs")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="S",
                   help="an unfinished run idle for over S seconds is 'stopped', else 'running'")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _command, argv)


def _command(args: argparse.Namespace) -> int:
    rows, keys = aggregate(args.paths, args.stale_after)
    if args.by:
        groups = group_by(rows, args.by)
        header = list(groups[0])
        cells = [[g[h] for h in header] for g in groups]
        data: list[dict[str, Any]] = groups
    else:
        header, cells = table(rows, keys)
        data = [{k: v for k, v in r.items() if k != "_all_config"} for r in rows]
    if args.format == "json":
        print(json.dumps(data, indent=2))
    elif args.format == "csv":
        print(to_csv(header, cells))
    else:
        print(to_markdown(header, cells))
        if args.by:
            print(overall_line(overall(rows)))
    if args.plot:
        print(f"wrote {plot_curves(args.paths, args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
