"""Preemption under torchrun with 2 real ranks: a signal at a random step -> one collective save, every rank
exits with REQUEUE_EXIT_CODE, and the resumed run's loss curve equals the uninterrupted run's exactly."""

from __future__ import annotations

import os
import random
import re
import signal
from pathlib import Path

import pytest

from hpc_sr.dist.signals import REQUEUE_EXIT_CODE
from tests.conftest import random_seed, tiny_overrides, wait_for
from tests.reliability.reli_util import (
    finish,
    kill_group,
    last_train_step,
    loss_curve,
    rows,
    start,
    step_dirs,
    tail,
    torchrun_cmd,
)

pytestmark = pytest.mark.slow  # real torchrun jobs signalled mid-run

STEPS, PRETRAIN = 12, 6  # both phases (pixel pretrain, then GAN with D) are crossed
TIMEOUT_S = 60  # dist.timeout_s: after a signal the ranks save and exit; a rank stuck in a collective would
# be released by this timeout, so a stop must end within it plus time to save and tear down


def overrides(shards: Path, runs: Path, name: str) -> list[str]:
    return tiny_overrides(
        shards,
        runs,
        name=name,
        steps=STEPS,
        pretrain=PRETRAIN,
        **{
            "train.deterministic": "true",
            "train.val_every": 100,
            "train.ckpt_every": 100,
            "log.image_every": 0,
            "dist.timeout_s": TIMEOUT_S,
        },
    )


@pytest.fixture(scope="module")
def straight(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[float, float]]:
    """The uninterrupted 2-rank run's loss curve."""
    out = tmp_path_factory.mktemp("straight")
    log = out / "torchrun.log"
    proc = start(torchrun_cmd(2, out, overrides(tiny_shards, out, "run")), log)
    assert finish(proc, 180, log) == 0, tail(log)
    curve = loss_curve(out / "run")
    assert sorted(curve) == list(range(1, STEPS + 1))
    return curve


@pytest.mark.parametrize("how", ["usr2_to_rank1", "sigterm_to_torchrun"])
def test_signal_at_random_step_saves_once_and_resumes_exactly(
    how: str, tiny_shards: Path, tmp_path: Path, straight: dict[int, tuple[float, float]]
) -> None:
    run = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    seed = random_seed(f"signal step of {how}")  # rerun a failing draw with HPC_SR_TEST_SEED=<seed>
    at = random.Random(f"{seed}-{how}").randint(2, STEPS - 4)  # the step after which the signal is sent
    proc = start(
        torchrun_cmd(2, tmp_path, overrides(tiny_shards, tmp_path, "run")), log, RELI_STEP_SLEEP="0.25"
    )
    try:
        wait_for(lambda: last_train_step(run) >= at, 120, f"step {at} in metrics.jsonl")
        if how == "usr2_to_rank1":  # like SLURM's --signal=USR2: one rank's flag is enough (all-reduce)
            os.kill(int((tmp_path / "pid_rank1").read_text()), signal.SIGUSR2)
        else:  # a preemption's SIGTERM reaches torchrun, which forwards it to its workers
            os.kill(proc.pid, signal.SIGTERM)
        code = finish(proc, TIMEOUT_S + 60, log)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    print(f"{how}: signal sent after step {at} (HPC_SR_TEST_SEED={seed}); torchrun exit code {code}")
    # torchrun exits 1 either way. USR2: it names the first worker that exited, with its code 3, and SIGTERMs
    # the others (a rank already in interpreter shutdown may show -15 there). SIGTERM to torchrun: it stops
    # its workers and reports only its own SignalException. Each worker's own code is in its marker.
    report = (
        r"exitcode\s*:\s*3 " if how == "usr2_to_rank1" else r"SignalException: Process \d+ got signal: 15"
    )
    assert code == 1 and re.search(report, log.read_text()), tail(log)
    assert [(tmp_path / f"exit_rank{r}").read_text() for r in (0, 1)] == [str(REQUEUE_EXIT_CODE)] * 2, tail(
        log
    )
    stop = rows(run, "stop")
    # the signal is agreed over ranks: rank 0 records it even when only rank 1 was signalled
    assert len(stop) == 1 and stop[0]["reason"] == ("SIGUSR2" if how == "usr2_to_rank1" else "SIGTERM")
    saved = stop[0]["step"]
    assert at <= saved < STEPS
    assert step_dirs(run) == [f"step_{saved:08d}"]  # one checkpoint, written once by the collective save
    assert [r["step"] for r in rows(run, "checkpoint")] == [saved]
    ckpt = run / "checkpoints" / f"step_{saved:08d}"
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    assert (run / "checkpoints" / "latest").read_text().strip() == ckpt.name
    assert not list((run / "checkpoints").glob(".*step_*")), "no temp directory left behind"

    for r in (0, 1):
        (tmp_path / f"exit_rank{r}").unlink()
    proc = start(torchrun_cmd(2, tmp_path, overrides(tiny_shards, tmp_path, "run")), log)
    assert finish(proc, 180, log) == 0, tail(log)
    starts = rows(run, "start")
    assert [s["resumed_from"] for s in starts] == [None, str(ckpt)]
    assert starts[1]["step"] == saved
    resumed_steps = [r["step"] for r in rows(run, "train")[saved:]]
    assert resumed_steps == list(range(saved + 1, STEPS + 1))  # continues from the checkpoint step
    assert loss_curve(run) == straight  # bit-identical losses, step for step, across the interruption
