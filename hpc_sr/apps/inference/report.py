"""``out_dir/upscale_report.json``: what became of every input of a run, from the plan and the ledger.

    report = build_report(plan, ledger.status(), out_dir, extra_failed, warnings=[tally.to_json(), ...])
    write_report(report, out_dir)          # atomic; callers hold the ledger lock (the last writer knows most)
    summary_line(report, this_run)         # one line for stderr

Its size does not grow with the work done: ``done`` is counts (units, images, output files; the ledger's
rank files name every unit with its outputs and their sha256), ``skipped`` (holds no image: not a failure)
and ``failed`` (reason) list every unit or file, ``pending`` (no record yet: another rank still at work, or a
stopped run) the first :data:`PENDING_LISTED` ids. Counts beside them.

Warnings: a survey's files often raise the same warning each (a BUNIT astropy does not know, blank pixels),
so :class:`WarningTally` counts them by kind (the message without the image's label before its first
``": "``, numbers masked): the first of each kind is shown as it comes, the rest are counted, with a few
example images, and summed over the ranks into the report's ``warnings``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hpc_sr.apps.inference.ledger import LEDGER_DIR
from hpc_sr.apps.inference.plan import Plan
from hpc_sr.atomic import atomic_write_text

REPORT = "upscale_report.json"
PENDING_LISTED = 100  # pending unit ids the report lists (the count is exact)
SHOWN_EACH = 1  # warnings of one kind passed on as they come; the rest are counted
EXAMPLES = 3  # example images kept per kind of warning
MAX_KINDS = 50  # kinds of warning kept apart; the rest are counted together ("other")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


# ----------------------------------------------------------------------------------------------- warnings
def warning_kind(message: str) -> tuple[str, str]:
    """(where, kind) of a per-image warning ``"<label>: <text>"``: the label, and the text with every
    number masked as ``#`` (a message without ``": "``: no label)."""
    where, sep, text = message.partition(": ")
    if not sep:
        where, text = "", message
    return where, _NUMBER.sub("#", text)


class WarningTally:
    """Warnings counted by kind (module docstring), safe to call from the engine's threads.

    ``add(message)`` passes the first :data:`SHOWN_EACH` of each kind to ``forward`` (when given; else
    keeps them in ``shown``) and counts every one; ``repeated()`` says, after the run, which kinds came more
    often than they were shown; ``to_json()`` / :func:`merge_tallies` are the report's ``warnings``.
    """

    def __init__(self, forward: Callable[[str], None] | None = None) -> None:
        self.forward = forward
        self.total = 0
        self.other = 0  # warnings of kinds beyond MAX_KINDS
        self.other_examples: list[str] = []
        self.kinds: dict[str, dict[str, Any]] = {}  # kind -> {message, count, examples}
        self.shown: list[str] = []  # the messages not forwarded (no ``forward``), to be shown by the caller
        self._lock = threading.Lock()

    def add(self, message: str) -> None:
        where, kind = warning_kind(message)
        with self._lock:
            self.total += 1
            entry = self.kinds.get(kind)
            if entry is None and len(self.kinds) >= MAX_KINDS:
                self.other += 1
                if len(self.other_examples) < EXAMPLES:
                    self.other_examples.append(message)
                return
            if entry is None:
                entry = self.kinds[kind] = {"message": message, "count": 0, "examples": []}
            entry["count"] += 1
            if where and len(entry["examples"]) < EXAMPLES:
                entry["examples"].append(where)
            show = entry["count"] <= SHOWN_EACH
            if show and self.forward is None:
                self.shown.append(message)
        if show and self.forward is not None:
            self.forward(message)

    def repeated(self) -> list[str]:
        """One line per kind that came more often than it was shown (and for the ``other`` kinds)."""
        with self._lock:
            entries = sorted(self.kinds.items(), key=lambda kv: -kv[1]["count"])
            lines = [_repeated_line(k, e) for k, e in entries if e["count"] > SHOWN_EACH]
            if self.other:
                lines.append(f"{self.other} more warning(s) of other kinds (see {REPORT})")
        return lines

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self.total,
                "kinds": [{"kind": k, **v, "examples": list(v["examples"])} for k, v in self.kinds.items()],
                "other": self.other,
                "other_examples": list(self.other_examples),
            }


def _repeated_line(kind: str, entry: dict[str, Any]) -> str:
    n, examples = entry["count"], entry["examples"]
    more = f" and {n - len(examples)} more" if n > len(examples) else ""
    where = f" in {', '.join(examples)}{more}" if examples else ""
    first = "the first shown above" if SHOWN_EACH == 1 else f"the first {SHOWN_EACH} shown above"
    return f'{n} warnings "{kind}" ({first}){where}'


def merge_tallies(tallies: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """``to_json`` records (ranks, runs) summed: counts added, examples kept up to :data:`EXAMPLES`, the
    first message of each kind, at most :data:`MAX_KINDS` kinds (most frequent first)."""
    kinds: dict[str, dict[str, Any]] = {}
    total, other, other_examples = 0, 0, []
    for t in tallies:
        if not t:
            continue
        total += int(t.get("total", 0))
        other += int(t.get("other", 0))
        other_examples += list(t.get("other_examples", []))
        for k in t.get("kinds", []):
            entry = kinds.setdefault(k["kind"], {"kind": k["kind"], "message": k["message"], "count": 0,
                                                 "examples": []})  # fmt: skip
            entry["count"] += int(k["count"])
            entry["examples"] = list(dict.fromkeys([*entry["examples"], *k["examples"]]))[:EXAMPLES]
    ordered = sorted(kinds.values(), key=lambda e: (-e["count"], e["kind"]))
    for extra in ordered[MAX_KINDS:]:
        other += extra["count"]
        other_examples.append(extra["message"])
    return {
        "total": total,
        "kinds": ordered[:MAX_KINDS],
        "other": other,
        "other_examples": other_examples[:EXAMPLES],
    }


# ----------------------------------------------------------------------------------------------- report
def build_report(
    plan: Plan,
    status: dict[str, dict[str, Any]],
    out_dir: str | Path,
    extra_failed: list[tuple[str, str]] | None = None,
    warnings: Iterable[dict[str, Any] | None] = (),
) -> dict[str, Any]:
    """The report of ``plan`` given the ledger's ``status`` (unit id -> deciding record) and the warning
    tallies of the ranks (:meth:`WarningTally.to_json`)."""
    skipped, failed, pending = [], [], []
    done = {"units": 0, "images": 0, "outputs": 0}
    n_pending = 0
    for path, reason in plan.skipped:
        skipped.append({"path": path, "reason": reason})
    for path, reason in [*plan.failed, *(extra_failed or [])]:
        failed.append({"path": path, "reason": reason})
    for unit in plan.units:
        rec = status.get(unit.id)
        if rec is None:
            n_pending += 1
            if len(pending) < PENDING_LISTED:
                pending.append(unit.id)
        elif rec["status"] == "done":
            done["units"] += 1
            done["images"] += int(rec.get("images", 0))
            done["outputs"] += len(rec.get("outputs", []))
        else:
            (skipped if rec["status"] == "skipped" else failed).append(
                {"unit": unit.id, "path": str(unit.src), "reason": rec.get("reason", "")}
            )
    counts = {
        "planned": len(plan.units),
        "done": done["units"],
        "skipped": len(skipped),
        "failed": len(failed),
        "pending": n_pending,
    }
    return {
        "out_dir": str(out_dir),
        "counts": counts,
        "failed": failed,
        "skipped": skipped,
        "pending": pending,
        "pending_listed": f"the first {len(pending)} of {n_pending}" if n_pending > len(pending) else "all",
        "done": {**done, "listed_in": f"{LEDGER_DIR}/rank_*.jsonl (each unit, its outputs and their sha256)"},
        "warnings": merge_tallies(warnings),
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
    warned = report.get("warnings", {}).get("total", 0)
    if warned:
        line += f", {warned} warning(s)"
    return f"{line}; report: {path}"
