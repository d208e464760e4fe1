"""Two real `hpc-sr train` runs on one run directory: the second stops at once naming the first; the first's
files are exactly those of a lone run. A run killed with SIGKILL leaves a stale lock; the next run takes it
over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from hpc_sr.train.checkpoint import CheckpointManager
from tests.conftest import PYTHON, REPO, subprocess_env, tiny_overrides, wait_for

pytestmark = pytest.mark.slow  # real `hpc-sr train` processes


def _train(overrides: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "hpc_sr", "train", *overrides],
        cwd=REPO,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(run: Path) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_second_run_on_the_same_directory_is_refused(tiny_shards: Path, tmp_path: Path) -> None:
    over = tiny_overrides(
        tiny_shards, tmp_path, name="shared", steps=8, pretrain=8, **{"log.tensorboard": "false"}
    )
    first = _train(over, HPC_SR_FAULT_STEP_SLEEP="0.5")
    lock = tmp_path / "shared" / ".lock"
    wait_for(
        lambda: lock.is_file() and (tmp_path / "shared" / "metrics.jsonl").is_file(), 120, "the first run"
    )
    second = _train(over)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert "another run is writing" in err and f"pid {first.pid}" in err and os.uname().nodename in err
    out, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    lone = tiny_overrides(
        tiny_shards, tmp_path, name="lone", steps=8, pretrain=8, **{"log.tensorboard": "false"}
    )
    assert (
        subprocess.run(
            [PYTHON, "-m", "hpc_sr", "train", *lone],
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            timeout=300,
        ).returncode
        == 0
    )
    assert _rows(tmp_path / "shared") == _rows(tmp_path / "lone")  # one start record, steps 1..8 once each
    steps = sorted(p.name for p in (tmp_path / "shared" / "checkpoints").glob("step_*"))
    assert steps == sorted(p.name for p in (tmp_path / "lone" / "checkpoints").glob("step_*"))
    assert not lock.exists()  # released on the clean exit


def test_sigkilled_holder_leaves_a_stale_lock_that_the_next_run_takes_over(
    tiny_shards: Path, tmp_path: Path
) -> None:
    over = tiny_overrides(
        tiny_shards, tmp_path, name="killed", steps=12, pretrain=12, **{"log.tensorboard": "false"}
    )
    first = _train(over, HPC_SR_FAULT_STEP_SLEEP="0.5")
    run = tmp_path / "killed"
    wait_for(lambda: any(run.glob("checkpoints/step_*")), 120, "a first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert (run / ".lock").is_file()  # a crash leaves the lock behind
    latest = CheckpointManager(run).latest()  # what the next run must resume from
    assert latest is not None and latest.name.startswith("step_")
    again = subprocess.run(
        [PYTHON, "-m", "hpc_sr", "train", *over],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    # taken over at once because the holder's pid is gone, not after the heartbeat ages out (120 s default)
    assert f"took over the stale run lock {run / '.lock'}: its process (host " in again.stderr, again.stderr
    assert f"pid {first.pid}) is gone" in again.stderr
    starts = [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "start"
    ]
    assert [s["resumed_from"] for s in starts] == [
        None,
        str(latest),
    ]  # resumed from the killed run's checkpoint
