"""A superseded writer stops: `hpc-sr train` runs as SLURM job 77 restart 0, a second `hpc-sr train` on the
same run directory as job 77 restart 1 takes the lock over (a requeued incarnation), and the first exits
non-zero naming the new holder without publishing anything more (no metrics line, step directory or
``latest``) and without touching the new holder's lock; the new holder then resumes from the first's last
checkpoint.

Attribution: the new holder is frozen (SIGSTOP) the moment its lock appears, so whatever changes in the run
directory until the first exits is the first's. Also with 2 bare ranks (no launcher to stop rank 1): rank 1
must not hang once rank 0 has stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LAUNCHER_ENV, PYTHON, REPO, subprocess_env, tiny_overrides, wait_for
from tests.reliability.reli_util import finish, kill_group, rows, step_dirs, tail

pytestmark = pytest.mark.slow

HOST = socket.gethostname()
STEPS = 120
STEP_SLEEP_S = "1.0"  # the first run checks its lock at every step (one metrics line per step)


def _published(run: Path) -> tuple[bytes, list[str], str]:
    """What a writer publishes: the metrics file, the step directories, ``latest``."""
    latest = run / "checkpoints" / "latest"
    pointer = latest.read_text() if latest.exists() else ""
    return (run / "metrics.jsonl").read_bytes(), step_dirs(run), pointer


def _lock_pid(run: Path) -> int | None:
    try:
        return int(json.loads((run / ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _start(cmd: list[str], log: Path, job: str, restart: int, **extra: str) -> subprocess.Popen:
    """Start ``cmd`` as SLURM job ``job``, incarnation ``restart`` (no other SLURM or launcher variable leaks
    in), in its own session, output to ``log``."""
    env = {k: v for k, v in subprocess_env(**extra).items()
           if not k.startswith("SLURM_") and (k in extra or k not in LAUNCHER_ENV)}
    env.update(SLURM_JOB_ID=job, SLURM_RESTART_COUNT=str(restart))
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("ranks", [1, 2], ids=["one_rank", "two_bare_ranks"])
def test_superseded_run_stops_publishing_and_names_the_new_holder(
    ranks: int, tiny_shards: Path, tmp_path: Path, free_port: int
) -> None:
    run = tmp_path / "run"
    over = tiny_overrides(
        tiny_shards, tmp_path, name="run", steps=STEPS, pretrain=STEPS,
        **{"train.ckpt_every": 2, "train.val_every": 1000, "log.image_every": 0, "log.tensorboard": "false",
           "dist.timeout_s": 60},
    )
    cmd = [PYTHON, "-m", "hpc_sr", "train", *over]
    first = []
    for rank in range(ranks):
        launcher = {"RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port)} if ranks > 1 else {}
        first.append(_start(cmd, tmp_path / f"first{rank}.log", "77", 0, HPC_SR_FAULT_STEP_SLEEP=STEP_SLEEP_S,
                            **launcher))
    second: subprocess.Popen | None = None
    try:
        wait_for(lambda: len(rows(run, "train")) >= 3 and step_dirs(run), 180, "the first run's checkpoint")
        second = _start(cmd, tmp_path / "second.log", "77", 1)
        took = time.monotonic()
        while _lock_pid(run) != second.pid:  # the takeover: freeze the new holder at once
            assert second.poll() is None, tail(tmp_path / "second.log")
            assert first[0].poll() is None, "ended before the takeover:\n" + tail(tmp_path / "first0.log")
            assert time.monotonic() - took < 180, "no takeover within 180 s"
            time.sleep(0.002)
        os.kill(second.pid, signal.SIGSTOP)
        at_takeover = _published(run)
        code = finish(first[0], 120, tmp_path / "first0.log")
        log0 = (tmp_path / "first0.log").read_text()
        assert _published(run) == at_takeover, "the superseded run published after the takeover"
        assert _lock_pid(run) == second.pid  # the new holder's lock, neither removed nor rewritten
        stopped = time.monotonic()
        others = [finish(p, 120, tmp_path / f"first{r}.log") for r, p in enumerate(first[1:], 1)]
        others_s = time.monotonic() - stopped  # gloo sees rank 0's closed connections: no collective timeout
        assert _published(run) == at_takeover
        os.kill(second.pid, signal.SIGCONT)
        code2 = finish(second, 300, tmp_path / "second.log")
    finally:
        for p in [*first, *([second] if second else [])]:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)  # a stopped process must be able to die
                kill_group(p)
    assert code == 2, log0[-4000:]
    new_holder = f"it was taken over by host {HOST}, pid {second.pid}, SLURM job 77 restart 1, started "
    assert f"hpc-sr train: error: lost the run lock of {run}: {new_holder}" in log0, log0
    assert "Traceback" not in log0, log0
    assert all(c != 0 for c in others), [tail(tmp_path / f"first{r}.log") for r in range(1, ranks)]
    if others:
        print(f"the other ranks exited {others_s:.1f} s after rank 0")
        assert others_s < 60  # dist.timeout_s: they fail at their next collective, they do not wait it out
    log2 = (tmp_path / "second.log").read_text()
    assert code2 == 0, log2[-4000:]
    assert "earlier incarnation of this SLURM job 77 (restart 0 -> 1" in log2
    metrics, _, latest = at_takeover
    final = (run / "metrics.jsonl").read_bytes()
    assert final.startswith(metrics)
    appended = [json.loads(x) for x in final[len(metrics):].decode().splitlines()]  # all the second's
    start_row, *steps = appended
    resumed = int(latest.strip().removeprefix("step_"))
    assert start_row["kind"] == "start"
    assert start_row["resumed_from"] == str(run / "checkpoints" / latest.strip())
    assert [r["step"] for r in steps if r["kind"] == "train"] == list(range(resumed + 1, STEPS + 1))
    assert not (run / ".lock").exists()  # released by the new holder at its clean end
