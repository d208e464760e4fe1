"""``out_dir/upscale_report.json``: what became of every input of a run, from the plan and the ledger.

    report = build_report(plan, ledger.status(), out_dir, extra_failed)
    write_report(report, out_dir)          # atomic; callers hold the ledger lock (the last writer knows most)
    summary_line(report, this_run)         # one line for stderr

Lists: ``done`` (unit, outputs), ``skipped`` (holds no image: not a failure), ``failed`` (reason), ``pending``
(no record yet: another rank still at work, or a stopped run). Counts beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpc_sr.apps.inference.plan import Plan
from hpc_sr.atomic import atomic_write_text

REPORT = "upscale_report.json"


def build_report(
    plan: Plan,
    status: dict[str, dict[str, Any]],
    out_dir: str | Path,
    extra_failed: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The report of ``plan`` given the ledger's ``status`` (unit id -> deciding record)."""
    done, skipped, failed, pending = [], [], [], []
    for path, reason in plan.skipped:
        skipped.append({"path": path, "reason": reason})
    for path, reason in [*plan.failed, *(extra_failed or [])]:
        failed.append({"path": path, "reason": reason})
    for unit in plan.units:
        rec = status.get(unit.id)
        if rec is None:
            pending.append(unit.id)
        elif rec["status"] == "done":
            done.append({"unit": unit.id, "outputs": [o["path"] for o in rec.get("outputs", [])]})
        else:
            (skipped if rec["status"] == "skipped" else failed).append(
                {"unit": unit.id, "path": str(unit.src), "reason": rec.get("reason", "")}
            )
    counts = {
        "planned": len(plan.units),
        "done": len(done),
        "skipped": len(skipped),
        "failed": len(failed),
        "pending": len(pending),
    }
    return {
        "out_dir": str(out_dir),
        "counts": counts,
        "failed": failed,
        "skipped": skipped,
        "pending": pending,
        "done": done,
    }


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / REPORT
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")
    return path


def summary_line(report: dict[str, Any], wrote: int, path: Path) -> str:
    c = report["counts"]
    line = (
        f"{c['done']} of {c['planned']} unit(s) done (wrote {wrote} file(s) to {report['out_dir']} in this "
        f"run), {c['skipped']} skipped, {c['failed']} failed"
    )
    if c["pending"]:
        line += f", {c['pending']} pending"
    return f"{line}; report: {path}"
