"""On the real one-host SLURM cluster: a requeued incarnation of a job takes over its own run-directory lock,
even when the lock still names a live process (a node that lost its job but not its processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tests.launch.launch_slurm_util import (
    job_info,
    last_step,
    metrics,
    release_requeued,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def test_requeued_job_takes_over_its_own_lock(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    steps = 40
    overrides = tiny_overrides(
        None,
        tmp_path,
        name="lk",
        steps=steps,
        pretrain=steps,
        **{"train.val_every": steps, "train.ckpt_every": 2, "log.image_every": 0, "log.tensorboard": "false"},
    )
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "ENTRY": "-m hpc_sr train",
        "RUN": "lk",
        "RUNS_DIR": str(tmp_path),
        "OVERRIDES": " ".join(overrides),
        "HPC_SR_FAULT_STEP_SLEEP": "0.3",
    }
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-o",
            str(tmp_path / "lk-%j.out"),
            "-N1",
            "--ntasks=1",
            "-c1",
            str(REPO / "slurm" / "train.sbatch"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    jid = out.stdout.strip().split(";")[0]
    jobs.append(jid)
    run = tmp_path / "lk"
    wait_for(lambda: last_step(run) >= 4 and (run / ".lock").is_file(), 120, "step 4 and the lock")
    lock = json.loads((run / ".lock").read_text())
    assert lock["job_id"] == jid and lock["restart_count"] == 0
    os.kill(lock["pid"], signal.SIGKILL)  # the task dies without releasing its lock
    wait_for(
        lambda: job_info(jid).get("JobState") in ("FAILED", "CANCELLED", "COMPLETED"), 60, "the job to end"
    )
    lock["pid"] = os.getpid()  # ... and the lock now names a live process on this host
    (run / ".lock").write_text(json.dumps(lock))
    subprocess.run(["scontrol", "requeue", jid], check=True, timeout=30)
    wait_for(
        lambda: job_info(jid).get("JobState") == "PENDING" and job_info(jid).get("Restarts") == "1",
        60,
        "the requeue",
    )
    release_requeued(jid)
    info = wait_final(jid, 300)
    log = "\n".join(p.read_text() for p in tmp_path.glob("lk-*.out"))
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "earlier incarnation of this SLURM job" in log
    starts = metrics(run, "start")
    assert len(starts) == 2 and starts[1]["resumed_from"] is not None
    assert [r["step"] for r in metrics(run, "train")][-1] == steps
    assert not (run / ".lock").exists()
