"""Markdown report of a benchmark folder (what tools/bench_gpu.sh writes): one table per bench JSON found.

    python tools/bench_report.py OUT    # reads OUT/<bench>.json (env, loader, ..., scaling, upscale)
                                            # writes OUT/REPORT.md and OUT/summary.json

A missing or unreadable JSON is listed as not measured; the report never invents a figure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.atomic import atomic_write_text  # noqa: E402

BENCHES = ("env", "loader", "simulate", "train", "train_compile", "scaling", "upscale")


def load(folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The parsed JSON of every bench (by name) and why the others are missing."""
    found: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in BENCHES:
        path = folder / f"{name}.json"
        if not path.is_file():
            missing[name] = "no result file"
            continue
        try:
            found[name] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            missing[name] = f"{path.name} is not JSON ({exc})"
    return found, missing


def cell(value: Any, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return format(value, fmt) if fmt else str(value)
    except (TypeError, ValueError):
        return str(value)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown table of ``rows`` with ``columns`` = [(key, header, format)]; numbers right-aligned."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    align = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return [head, align, *body, ""]


def env_section(env: dict[str, Any]) -> list[str]:
    gpus = ", ".join(env.get("gpu_names") or []) or "none"
    return [f"Device `{env.get('device')}`; GPUs: {env.get('gpus')} ({gpus}); torch {env.get('torch')}, CUDA "
            f"{env.get('cuda')}, NCCL {env.get('nccl')}; host {env.get('host')}, {env.get('cpus')} CPUs; "
            f"LensingSimulator.sample_windows: {cell(env.get('sample_windows'))}.", ""]  # fmt: skip


def loader_section(res: dict[str, Any]) -> list[str]:
    s = res["sizes"]
    out = [f"{s['num']} pairs, HR {s['hr_size']} px, LR patch {s['lr_patch']} + 8 flips/rotations; pairs/s "
           f"per process (medians of {res['timing']['rounds']} interleaved windows); ratio v1 = vs the v1 "
           f"whole-image in-memory read of the same batch. Alternatives match crop_and_augment: "
           f"{res.get('alternatives_match_current')}.", ""]  # fmt: skip
    return out + table(res["rows"], [
        ("batch", "batch", "d"), ("reader", "reader", ""), ("pairs_per_s", "pairs/s", ",.0f"),
        ("ratio_v1", "ratio v1", ".2f"), ("ratio_memory", "ratio memory", ".2f"), ("spread", "spread", ".2f"),
    ])  # fmt: skip


def simulate_section(res: dict[str, Any]) -> list[str]:
    rows = [{"path": "whole images (sample)", "pairs_per_s": res.get("torch_pairs_per_s"),
             "batch": res.get("num")}]  # fmt: skip
    if res.get("window"):
        rows += [
            {"path": f"whole + crop to {res['window']}", "batch": res.get("window_batch"),
             "pairs_per_s": res.get("window_full_crop_pairs_per_s")},
            {"path": f"windows {res['window']} (sample_windows)", "batch": res.get("window_batch"),
             "pairs_per_s": res.get("window_pairs_per_s"), "ratio": res.get("window_speedup")},
        ]  # fmt: skip
    head = [f"Preset {res.get('preset')}, HR {res.get('hr_size')} px, device {res.get('device')}.", ""]
    return head + table(
        rows,
        [
            ("path", "path", ""),
            ("batch", "pairs timed / batch", "d"),
            ("pairs_per_s", "pairs/s", ",.1f"),
            ("ratio", "window speed-up", ".2f"),
        ],
    )


def train_section(res: dict[str, Any]) -> list[str]:
    s = res["sizes"]
    out = [f"G {s['g_arch']} {s['g_options'] or '(defaults)'}, D {s['d_arch']} "
           f"{s['d_options'] or '(defaults)'}; "
           f"batch {s['batch']}, LR {s['lr_patch']}; ratio vs {res['timing']['baseline']} of the same phase; "
           f"{res['memory_method']}.", ""]  # fmt: skip
    out += table(res["rows"], [
        ("config", "config", ""), ("phase", "phase", ""), ("images_per_s", "img/s", ",.1f"),
        ("ratio", "ratio", ".2f"), ("spread", "spread", ".2f"), ("peak_mem_mb", "peak MB", ",.1f"),
        ("mem_ratio", "mem ratio", ".2f"), ("mfu", "MFU", ".1%"), ("compile_s", "compile s", ".1f"),
    ])  # fmt: skip
    for phase, v in (res.get("simulate_share") or {}).items():
        out.append(f"- simulation share of a {phase} step: {cell(v.get('share'), '.1%')} "
                   f"(simulator {v.get('simulate_pairs_per_s')} pairs/s)")  # fmt: skip
    for name, err in (res.get("errors") or {}).items():
        out.append(f"- {name}: not measured: {err[:200]}")
    return out + [""]


def scaling_section(res: dict[str, Any]) -> list[str]:
    out = [f"Weak scaling, {res['sizes']['batch']} images per process; ddp/indep = DDP over the summed rate "
           f"of as many independent processes run at the same time. Replicas identical: "
           f"{cell(res.get('replicas_identical'))}.", ""]  # fmt: skip
    out += table(res["rows"], [
        ("job", "job", ""), ("phase", "phase", ""), ("images_per_s", "img/s", ",.1f"),
        ("efficiency", "efficiency", ".0%"), ("ddp_over_indep", "ddp/indep", ".0%"),
        ("step_ms", "step ms", ".1f"), ("allreduce_ms", "all-reduce ms", ".2f"),
    ])  # fmt: skip
    for prof in res.get("profile") or []:
        for phase, v in prof.items():
            out.append(f"- profile {phase}: {v['wall_ms_per_step']} ms/step, collectives "
                       f"{v['comm_total_ms_per_step']} ms/step")  # fmt: skip
    return out + [""]


def upscale_section(res: dict[str, Any]) -> list[str]:
    out = [f"`hpc-sr upscale` on {res['sizes']['num']} cutouts of {res['sizes']['side']} px with "
           f"{res['checkpoint']}; ratio to the stack at the first batch size.", ""]  # fmt: skip
    out += table(res["rows"], [("config", "config", ""), ("cutouts_per_s", "cutouts/s", ",.1f"),
                               ("ratio", "ratio", ".2f")])  # fmt: skip
    if res.get("process_rows"):
        out += ["", *table(res["process_rows"], [("config", "processes", ""),
                                                 ("cutouts_per_s", "cutouts/s", ",.1f"),
                                                 ("ratio", "ratio", ".2f")])]  # fmt: skip
    return out + [""]


SECTIONS = {
    "loader": ("Training streams", loader_section),
    "simulate": ("Simulator", simulate_section),
    "train": ("Training step", train_section),
    "train_compile": ("Training step with torch.compile (cold inductor cache)", train_section),
    "scaling": ("DDP scaling", scaling_section),
    "upscale": ("Survey inference (hpc-sr upscale)", upscale_section),
}


def render(folder: Path) -> str:
    found, missing = load(folder)
    lines = ["# Benchmark report", ""]
    if "env" in found:
        lines += env_section(found["env"])
    for name, (title, fn) in SECTIONS.items():
        lines += [f"## {title}", ""]
        if name in found:
            try:
                lines += fn(found[name])
            except (KeyError, TypeError) as exc:
                lines += [f"Not shown: {name}.json lacks {exc}.", ""]
        else:
            lines += [f"Not measured ({missing[name]}).", ""]
    notes = [p.read_text().strip() for p in (folder / "notes.txt", folder / "errors.txt") if p.is_file()]
    notes = [n for n in notes if n]
    if notes:
        lines += ["## Notes and errors", "", *(f"- {x}" for n in notes for x in n.splitlines()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tools/bench_report.py OUT", file=sys.stderr)
        return 2
    folder = Path(args[0])
    if not folder.is_dir():
        print(f"{folder}: not a folder", file=sys.stderr)
        return 2
    found, missing = load(folder)
    atomic_write_text(folder / "REPORT.md", render(folder))
    atomic_write_text(folder / "summary.json", json.dumps({"results": found, "missing": missing}) + "\n")
    print(f"wrote {folder / 'REPORT.md'} ({len(found)} result(s), {len(missing)} missing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
