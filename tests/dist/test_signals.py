"""hpc_sr.dist.signals: real signals set only a flag; timeout rule; requeue decisions; rank agreement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hpc_sr.dist import signals
from hpc_sr.dist.signals import (
    REQUEUE_EXIT_CODE,
    StopFlag,
    agree,
    is_timeout,
    parse_slurm_time,
    requeue_self,
)


@pytest.fixture
def flag() -> StopFlag:
    f = StopFlag().install()
    yield f
    f.uninstall()


@pytest.fixture(autouse=True)
def fresh_requeue_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "_requeue_decision", None)
    for key in ("SLURM_JOB_ID", "SLURM_PROCID", "RANK", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)


def test_signal_mid_run_saves_once_and_returns_the_requeue_code(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hpc-sr train` in this process, a real SIGUSR2 after step 2: it saves at the step it stopped at and
    returns REQUEUE_EXIT_CODE, which the sbatch scripts and launchers tell apart from success (0), a crash
    (1) and a CLI error (2)."""
    from hpc_sr.cli import main as cli_main
    from tests.conftest import tiny_overrides

    assert REQUEUE_EXIT_CODE not in (0, 1, 2)
    monkeypatch.setenv("HPC_SR_FAULT_STEP_SLEEP", "0.3")
    run = tmp_path / "sig"
    quiet = {"train.val_every": 100, "train.ckpt_every": 100, "log.tensorboard": "false"}
    overrides = tiny_overrides(tiny_shards, tmp_path, name="sig", steps=40, pretrain=40, **quiet)

    def train_rows() -> list[dict]:
        path = run / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return [r for r in map(json.loads, lines[:-1]) if r["kind"] == "train"]  # last line may be partial

    def send_after_step_2() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(r["step"] >= 2 for r in train_rows()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)  # handled by the main thread, between bytecodes

    sender = threading.Thread(target=send_after_step_2, daemon=True)
    sender.start()
    code = cli_main(["train", *overrides])
    sender.join(timeout=10)
    assert code == REQUEUE_EXIT_CODE
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (stop,) = [r for r in records if r["kind"] == "stop"]
    assert stop["reason"] == "SIGUSR2" and 2 <= stop["step"] < 40
    assert [r["step"] for r in records if r["kind"] == "checkpoint"] == [stop["step"]]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stop['step']:08d}"
    assert max(r["step"] for r in records if r["kind"] == "train") == stop["step"]


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_real_signal_only_sets_the_flag(flag: StopFlag, sig: signal.Signals, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not flag.requested() and flag.reason == ""
    before = time.time()
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs between bytecodes of this (main) thread
    assert flag.requested()
    assert flag.reason == sig.name
    assert before <= flag.request.at <= time.time()
    assert list(tmp_path.iterdir()) == []  # the handler wrote nothing
    os.kill(os.getpid(), signal.SIGUSR2)  # a second signal keeps the first request
    time.sleep(0.01)
    assert flag.reason == sig.name and flag.count == 2


def test_uninstall_restores_previous_handler() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        f = StopFlag().install()
        assert signal.getsignal(signal.SIGUSR2) == f._handle
        f.uninstall()
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.01)
        assert seen == [signal.SIGUSR2] and not f.requested()
    finally:
        signal.signal(signal.SIGUSR2, old)


@pytest.mark.parametrize("text,seconds", [("90", 5400), ("05:00", 300), ("01:30:00", 5400),
                                          ("2-00:00:00", 172800), ("1-02:03:04", 93784),
                                          ("UNLIMITED", None), ("", None)])
def test_parse_slurm_time(text: str, seconds: float | None) -> None:
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize("limit_min", [1, 5, 9, 10, 30, 60, 600])
@pytest.mark.parametrize("frac", [0.0, 0.3, 0.79, 0.81, 0.95, 1.0])
def test_timeout_rule_matches_submitit(limit_min: int, frac: float) -> None:
    """Our rule against submitit's own SignalHandler.has_timed_out on the same elapsed time."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission

    delayed = DelayedSubmission(print)
    delayed.set_timeout(limit_min, 3)
    handler = SignalHandler(env=None, job_paths=None, delayed=delayed)  # type: ignore[arg-type]
    elapsed = frac * limit_min * 60
    handler._start_time = time.time() - elapsed
    assert is_timeout(elapsed, limit_min * 60) == handler.has_timed_out()


def test_flag_timed_out_uses_the_signal_time() -> None:
    f = StopFlag()
    f.started_at = time.time() - 3000  # 50 min into a 60 min job
    assert f.timed_out(limit_s=3600)
    f._handle(signal.SIGUSR2, None)
    f.request.at = f.started_at + 600  # the signal came at 10 min: a preemption
    assert not f.timed_out(limit_s=3600)
    assert not StopFlag().timed_out()  # no SLURM job, no limit: never a time-out


def test_requeue_self_outside_slurm_or_not_rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    assert requeue_self(3) is False
    monkeypatch.setattr(signals, "_requeue_decision", None)
    monkeypatch.setenv("SLURM_JOB_ID", "999999")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert requeue_self(3) is False


def test_requeue_self_stops_after_max_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "999999")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    monkeypatch.setenv("PATH", "/nonexistent")  # scontrol must not even be looked for
    assert requeue_self(2, timed_out=True) is False
    assert requeue_self(5, timed_out=True) is False  # one decision per process


def test_requeue_self_preemption_asks_scontrol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A preemption requeues even past max_requeues; a fake scontrol on PATH records the call."""
    log = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "7")
    assert requeue_self(1, timed_out=False) is True
    assert requeue_self(1, timed_out=False) is True
    assert log.read_text().splitlines() == ["requeue 4242"]


def test_agree_without_process_group() -> None:
    assert agree(True) is True and agree(False) is False


_AGREE_WORKER = textwrap.dedent("""
    import datetime, os, sys
    import torch.distributed as dist
    from hpc_sr.dist.signals import agree
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    mine = dist.get_rank() == int(sys.argv[1])
    print(int(agree(mine)), int(agree(False)))
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_agree_all_reduces_across_ranks(free_port: int) -> None:
    """Two real gloo ranks: only rank 1 has the flag; both must decide to stop."""
    port = free_port
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", _AGREE_WORKER, "1"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].split() for o in outs] == [["1", "0"], ["1", "0"]]
