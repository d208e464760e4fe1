"""Helpers for the reliability tests: start real training processes, wait with deadlines, read run files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env
from tests.conftest import torchrun_cmd as _torchrun_cmd

WORKER = REPO / "tests" / "reliability" / "worker.py"


def torchrun_cmd(nproc: int, out_dir: Path, overrides: list[str]) -> list[str]:
    """torchrun (standalone, this host) running the marker-writing worker with ``overrides``."""
    return _torchrun_cmd(nproc, WORKER, str(out_dir), *overrides)


def start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so a test can kill the whole tree), output to ``log``."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=subprocess_env(**env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(proc: subprocess.Popen, timeout_s: float, log: Path) -> int:
    """Wait for ``proc`` with a deadline; on expiry kill its process group and fail showing the log tail."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"{proc.args[:6]}... did not finish within {timeout_s:.0f} s:\n{tail(log)}")
        raise  # unreachable; keeps type checkers happy


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this test started (start_new_session=True) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def rows(run_dir: Path, kind: str | None = None) -> list[dict]:
    """metrics.jsonl records (a half-written last line, from a killed writer, is ignored)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in out if kind is None or r["kind"] == kind]


def last_train_step(run_dir: Path) -> int:
    steps = [r["step"] for r in rows(run_dir, "train")]
    return max(steps) if steps else 0


def loss_curve(run_dir: Path) -> dict[int, tuple[float, float]]:
    """step -> (G pixel loss, D loss) from the train records; a step logged twice must agree."""
    curve: dict[int, tuple[float, float]] = {}
    for r in rows(run_dir, "train"):
        value = (r["loss_g_pixel"], r.get("loss_d", 0.0))
        assert curve.setdefault(r["step"], value) == value, f"step {r['step']} logged twice, differently"
    return curve


def step_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
