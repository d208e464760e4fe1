"""Helpers for the SLURM tests: read job records from scontrol, wait on them with deadlines, read a run's
metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import wait_for

FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def job_info(jid: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (first record); {} when slurmctld does not know the job."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", jid], capture_output=True, text=True, timeout=30
    ).stdout
    line = out.splitlines()[0] if out.strip() else ""
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def wait_final(jid: str, timeout_s: float = 60) -> dict[str, str]:
    """Wait until job ``jid`` reaches a final state; return its scontrol record."""

    def final() -> dict[str, str] | None:
        info = job_info(jid)
        return info if info.get("JobState") in FINAL_STATES else None

    return wait_for(final, timeout_s, f"job {jid} to finish")  # type: ignore[return-value]


def release_requeued(jid: str) -> None:
    """Start requeued job ``jid`` now rather than after SLURM's requeue delay.

    SLURM holds a requeued job back so that its new launch credential is newer, in whole seconds, than the one
    slurmd revoked when the last incarnation ended; a start within that same second is killed at once with
    "Job credential revoked" (seen on CI). So wait until no node is still completing the last incarnation and
    let the clock pass two more seconds, then release the job.
    """

    def nodes_settled() -> bool:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        return bool(states) and not any(s.startswith("comp") for s in states)

    wait_for(nodes_settled, 60, f"the nodes to finish job {jid}'s last incarnation")
    time.sleep(2.0)
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True, timeout=30)


def metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The run's metrics.jsonl records (of one ``kind``); [] before the file exists."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    return [r for r in records if kind is None or r["kind"] == kind]


def last_step(run_dir: Path) -> int:
    """The last training step rank 0 logged (0 before the first)."""
    steps = [r["step"] for r in metrics(run_dir, "train")]
    return max(steps) if steps else 0
