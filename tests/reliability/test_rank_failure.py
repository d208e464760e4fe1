"""One rank lost mid-run, with no launcher to tear the job down (ranks started like srun tasks): after a
SIGKILL the surviving rank fails at once (gloo sees the closed connection); after a SIGSTOP (a hung rank) it
fails when the collective timeout ``dist.timeout_s`` expires. Either way with a clear message, within a
deadline, and a restart resumes from ``latest``."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, tiny_overrides, wait_for
from tests.reliability.reli_util import (
    WORKER,
    finish,
    kill_group,
    last_train_step,
    rows,
    start,
    step_dirs,
    tail,
    torchrun_cmd,
)

pytestmark = pytest.mark.slow  # real 2-rank jobs with a rank killed or hung

TIMEOUT_S = 12  # dist.timeout_s of the test config
# After the failure is detected the surviving rank raises, writes its marker and tears down. Deadlines below
# are TIMEOUT_S-based: the killed case must end before one collective timeout (gloo sees the closed socket),
# the hung case within one timeout of its last collective plus this allowance for a loaded 2-core machine.
DETECT_GRACE_S = 30
STEP_SLEEP_S = 0.2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_lost_rank_fails_the_job_in_time_and_restart_resumes(
    sig: signal.Signals, tiny_shards: Path, tmp_path: Path, free_port: int
) -> None:
    run = tmp_path / "run"
    ov = tiny_overrides(
        tiny_shards,
        tmp_path,
        name="run",
        steps=40,
        pretrain=40,
        **{"train.ckpt_every": 2, "train.val_every": 100, "log.image_every": 0, "dist.timeout_s": TIMEOUT_S},
    )
    port = str(free_port)
    procs = []
    for rank in (0, 1):
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RELI_STEP_SLEEP": str(STEP_SLEEP_S),
        }
        procs.append(start([PYTHON, str(WORKER), str(tmp_path), *ov], tmp_path / f"rank{rank}.log", **env))
    try:
        wait_for(lambda: last_train_step(run) >= 3 and step_dirs(run), 120, "step 3 and a first checkpoint")
        os.kill(procs[1].pid, sig)
        killed_at = time.time()
        code = finish(procs[0], 2 * TIMEOUT_S + DETECT_GRACE_S + 30, tmp_path / "rank0.log")
        if sig == signal.SIGKILL:
            assert procs[1].wait(timeout=10) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)
    log0 = tail(tmp_path / "rank0.log", 6000)
    marker = tmp_path / "exit_rank0"
    assert code != 0 and marker.is_file(), log0
    message = marker.read_text()
    took = marker.stat().st_mtime - killed_at  # when the error reached the entry, before the teardown
    print(f"surviving rank exited {code}; its error {took:.1f} s after the signal: {message[:300]}")
    # the entry's user-facing message, not a raw RuntimeError/DistBackendError
    latest = run / "checkpoints" / "latest"
    assert message.startswith("TrainingError: rank 0: a collective operation failed ("), message
    assert f"dist.timeout_s={TIMEOUT_S}" in message and message.endswith(f"resumes from {latest}"), message
    cause = message.split("(", 1)[1].lower()
    if sig == signal.SIGKILL:
        # gloo says "Connection closed by peer" or "Read error ...: Connection reset by peer"
        assert re.search(r"connection (closed|reset) by peer", cause), message
        assert took < TIMEOUT_S, f"a dead peer was noticed only after {took:.1f} s: {message}"
    else:  # only the collective timeout can end the wait on a live but silent peer
        assert "timed out" in cause, message
        # rank 0 entered its last collective at most one step before the signal (steps are logged)
        walls = [r["wall"] for r in rows(run, "train")]
        step_s = max((b - a for a, b in zip(walls, walls[1:])), default=STEP_SLEEP_S) + STEP_SLEEP_S
        assert TIMEOUT_S - step_s <= took < TIMEOUT_S + DETECT_GRACE_S, (took, step_s, message)
    assert last_train_step(run) < 40
    if sig == signal.SIGSTOP:
        return  # the restart is the same as after a SIGKILL

    # A restart (here under torchrun) resumes from the newest complete checkpoint.
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    log = tmp_path / "restart.log"
    saved = int(latest.name.split("_")[1])
    proc = start(torchrun_cmd(2, tmp_path, [*ov, "dist.timeout_s=60", f"train.steps={saved + 2}"]), log)
    assert finish(proc, 180, log) == 0, tail(log)
    starts = rows(run, "start")
    assert starts[-1]["resumed_from"] == str(latest) and starts[-1]["step"] == saved
    assert [r["step"] for r in rows(run, "train")][-2:] == [saved + 1, saved + 2]
