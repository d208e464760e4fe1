"""RunLock with real processes (holders started, killed with SIGKILL, forked) and in this process: held and
stale locks, takeovers, a holder that notices it lost the lock, release."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hpc_sr.dist.runlock import (
    FLOCK_GRACE_S,
    FORMAT,
    STALE_ENV,
    RunLock,
    RunLockedError,
    RunLockLostError,
    StaleLockWarning,
)
from hpc_sr.errors import TrainingError
from tests.conftest import PYTHON, REPO, subprocess_env, wait_for

HOST = socket.gethostname()
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")

# Holds the lock until killed; prints "ready <pid> [<forked child pid>]" once it holds it.
HOLDER = """
import os, sys, time
from hpc_sr.dist.runlock import RunLock
lock = RunLock(sys.argv[1], heartbeat_s=float(sys.argv[2]))
lock.acquire()
child = ""
if sys.argv[3] == "fork":
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    child = str(pid)
print("ready", os.getpid(), child, flush=True)
time.sleep(60)
"""

# Tries once; prints one JSON line: ok / error text, the lock file while held, the acquire time.
ACQUIRER = """
import json, os, sys, time, warnings
from hpc_sr.dist.runlock import RunLock, RunLockedError
go, hold = sys.argv[2], sys.argv[3]
if go:
    open(f"{go}.{os.getpid()}", "w").close()  # started
    while not os.path.exists(go):
        time.sleep(0.005)
lock = RunLock(sys.argv[1])
t0 = time.perf_counter()
try:
    lock.acquire()
except RunLockedError as exc:
    print(json.dumps({"ok": False, "error": str(exc), "s": time.perf_counter() - t0}), flush=True)
    sys.exit(1)
took = time.perf_counter() - t0
record = json.loads(open(os.path.join(sys.argv[1], ".lock")).read())
if hold.startswith("until:"):  # hold until the test says so (a winner must outlive every loser's attempt)
    deadline = time.monotonic() + 120
    while not os.path.exists(hold[6:]) and time.monotonic() < deadline:
        time.sleep(0.01)
else:
    time.sleep(float(hold))
lock.release()
print(json.dumps({"ok": True, "record": record, "takeover": lock.takeover, "s": took}), flush=True)
"""


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*SLURM_VARS, STALE_ENV):
        monkeypatch.delenv(var, raising=False)


def env(**extra: str) -> dict[str, str]:
    e = subprocess_env(**extra)
    for var in SLURM_VARS:
        if var not in extra:
            e.pop(var, None)
    return e


def start_holder(run_dir: Path, heartbeat_s: float = 10.0, fork: bool = False,
                 **extra: str) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([PYTHON, "-c", HOLDER, str(run_dir), str(heartbeat_s), "fork" if fork else "-"],
                            cwd=REPO, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("ready"), (line, proc.stderr.read() if proc.stderr else "")
    return proc, [int(x) for x in line.split()[1:]]


def acquire_in_subprocess(run_dir: Path, hold_s: float = 0.0, **extra: str) -> tuple[dict, str]:
    res = subprocess.run([PYTHON, "-c", ACQUIRER, str(run_dir), "", str(hold_s)], cwd=REPO, env=env(**extra),
                         capture_output=True, text=True, timeout=60)
    assert res.stdout, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert res.returncode == (0 if out["ok"] else 1), res.stderr
    return out, res.stderr


def kill9(proc: subprocess.Popen[str]) -> str:
    """SIGKILL, reap, return its stderr."""
    proc.send_signal(signal.SIGKILL)
    return proc.communicate(timeout=10)[1]


def fake_lock(run_dir: Path, host: str, pid: int = 4242, heartbeat_age_s: float = 0.0,
              job_id: str | None = None, restart_count: int = 0, pid_start: int | None = None) -> bytes:
    now = time.time()
    rec = {"format": FORMAT, "host": host, "pid": pid, "pid_start": pid_start, "job_id": job_id,
           "restart_count": restart_count, "start_time": now - heartbeat_age_s - 5,
           "heartbeat_time": now - heartbeat_age_s, "heartbeat_s": 10.0, "flock": False, "token": "f" * 16}
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(rec).encode()
    (run_dir / ".lock").write_bytes(raw)
    return raw


def proc_start(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rfind(")") + 2 :].split()[19])


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


# -- held locks ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # holder processes
def test_second_process_fails_at_once_naming_host_pid_and_what_to_do(tmp_path: Path) -> None:
    holder, (pid,) = start_holder(tmp_path / "run")
    try:
        out, _ = acquire_in_subprocess(tmp_path / "run")
        assert not out["ok"] and out["s"] < 1.0
        msg = out["error"]
        assert f"another run is writing {tmp_path / 'run'}" in msg
        assert f"host {HOST}, pid {pid}, SLURM job none, started " in msg
        assert f"kill {pid} on {HOST}" in msg and "choose another log.name" in msg
        with pytest.raises(RunLockedError) as info:  # this process too; a TrainingError with the record
            RunLock(tmp_path / "run").acquire()
        assert isinstance(info.value, TrainingError) and info.value.holder["pid"] == pid
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == pid  # untouched by the losers
    finally:
        kill9(holder)


def test_live_same_host_pid_without_flock_is_held_and_a_reused_pid_is_not(tmp_path: Path) -> None:
    """The pid path (file systems without flock): a live pid with its start time holds; another start time
    (the pid was reused by an unrelated process) does not."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        fake_lock(tmp_path, HOST, pid=sleeper.pid, pid_start=proc_start(sleeper.pid), job_id="31")
        with pytest.raises(RunLockedError, match=rf"pid {sleeper.pid}, SLURM job 31.*its process is alive.*"
                                                 rf"scancel 31"):
            RunLock(tmp_path).acquire()
        fake_lock(tmp_path, HOST, pid=sleeper.pid, pid_start=proc_start(sleeper.pid) - 1)
        with pytest.warns(StaleLockWarning, match=rf"pid {sleeper.pid}\) is gone"), RunLock(tmp_path) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()


# -- stale locks --------------------------------------------------------------------------------------------
@pytest.mark.slow  # holder processes
def test_kill9_of_the_holder_then_a_new_process_takes_over_with_a_warning(tmp_path: Path) -> None:
    holder, (pid,) = start_holder(tmp_path / "run")
    kill9(holder)
    out, stderr = acquire_in_subprocess(tmp_path / "run")
    assert out["ok"], out
    assert "StaleLockWarning" in stderr and f"its process (host {HOST}, pid {pid}) is gone" in stderr
    assert out["takeover"].startswith("took over the stale run lock")
    assert out["record"]["pid"] != pid and out["record"]["host"] == HOST
    assert out["s"] < 1.0
    assert leftovers(tmp_path / "run") == []  # released, no temp files


@pytest.mark.slow  # holder processes
def test_unreaped_zombie_holder_and_its_forked_child_do_not_keep_the_lock(tmp_path: Path) -> None:
    """SIGKILL of a holder that forked (like DataLoader workers) and whose parent has not reaped it yet."""
    holder, (pid, child) = start_holder(tmp_path, fork=True)

    def fds_on_run_dir(p: int) -> list[str]:
        target = str(tmp_path.resolve())
        return [f.name for f in Path(f"/proc/{p}/fd").iterdir() if os.path.realpath(f) == target]

    try:
        assert fds_on_run_dir(pid)  # the holder's flock fd
        wait_for(lambda: not fds_on_run_dir(child), 10, "the forked child to close its copy of the flock fd")
        holder.send_signal(signal.SIGKILL)
        wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z", 10,
                 "the killed holder to become a zombie")
        assert Path(f"/proc/{child}").exists()  # the forked child still runs
        with pytest.warns(StaleLockWarning, match=f"pid {pid}\\) is gone"), RunLock(tmp_path) as lock:
            assert lock.held
    finally:
        os.kill(child, signal.SIGKILL)  # first: it holds the holder's stdout/stderr pipes open
        kill9(holder)


def test_other_host_lock_stale_by_heartbeat_is_taken_over_a_fresh_one_is_not(tmp_path: Path) -> None:
    fake_lock(tmp_path, "node-b17", pid=4242, heartbeat_age_s=5, job_id="777")
    held = r"host node-b17, pid 4242, SLURM job 777.*last heartbeat was 5 s ago.*older than 30 s"
    with pytest.raises(RunLockedError, match=held + r".*kill 4242 on node-b17 / scancel 777"):
        RunLock(tmp_path, stale_after_s=30).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "node-b17"
    fake_lock(tmp_path, "node-b17", pid=4242, heartbeat_age_s=31)
    with pytest.warns(StaleLockWarning, match=r"host node-b17 \(pid 4242\) has not renewed it for 31 s"):
        lock = RunLock(tmp_path, stale_after_s=30)
        lock.acquire()
    rec = json.loads(lock.path.read_text())
    assert (rec["host"], rec["pid"]) == (HOST, os.getpid())
    lock.release()
    assert not lock.path.exists()


def test_requeued_incarnation_of_the_same_slurm_job_takes_over(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake_lock(tmp_path, "node-a03", pid=999, job_id="555_3", restart_count=0)  # fresh heartbeat, "alive"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "555")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with pytest.raises(RunLockedError, match="SLURM job 555_3"):  # same incarnation: a second writer
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.warns(StaleLockWarning, match=r"earlier incarnation of this SLURM job 555_3 \(restart 0 -> "):
        lock = RunLock(tmp_path)
        lock.acquire()
    rec = json.loads(lock.path.read_text())
    assert (rec["job_id"], rec["restart_count"], rec["pid"]) == ("555_3", 1, os.getpid())
    lock.release()


@pytest.mark.slow  # holder processes
def test_same_job_takeover_of_a_live_holder_which_notices_and_stops_heartbeating(tmp_path: Path) -> None:
    holder, (pid,) = start_holder(tmp_path, heartbeat_s=0.1, SLURM_JOB_ID="900")
    try:
        out, stderr = acquire_in_subprocess(tmp_path, hold_s=1.0, SLURM_JOB_ID="900", SLURM_RESTART_COUNT="2")
        assert out["ok"] and "earlier incarnation of this SLURM job 900 (restart 0 -> 2" in stderr
        assert out["record"]["job_id"] == "900" and out["record"]["pid"] != pid
    finally:
        err = kill9(holder)
    assert f"was taken over by host {HOST}, pid {out['record']['pid']}" in err
    assert not (tmp_path / ".lock").exists()  # the old holder did not write it back


@pytest.mark.slow  # holder processes
def test_racing_takeovers_of_one_stale_lock_have_exactly_one_winner(tmp_path: Path) -> None:
    fake_lock(tmp_path / "run", "node-x", heartbeat_age_s=1000)
    go = tmp_path / "go"
    release = tmp_path / "release"
    procs = [subprocess.Popen([PYTHON, "-c", ACQUIRER, str(tmp_path / "run"), str(go), f"until:{release}"],
                              cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("go.*"))) == 3, 120, "the three acquirers to start")
        go.touch()
        wait_for(lambda: sum(p.poll() is not None for p in procs) >= 2, 120, "two acquirers to finish")
        release.touch()  # only now may the winner let go: a loser can never see a released lock
        results = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in procs]
    finally:
        go.touch()
        release.touch()
        for p in procs:  # never leave an acquirer behind, whatever failed above
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert sorted(r["ok"] for r in results) == [False, False, True], results
    assert all(f"host {HOST}" in r["error"] for r in results if not r["ok"])


@pytest.mark.slow  # holder processes
def test_takeover_that_loses_the_race_restores_the_winners_lock(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Both judge the same stale lock; another process takes it over before this one removes it: this one
    must put the winner's file back and report it, never delete it."""
    fake_lock(tmp_path, "node-x", heartbeat_age_s=1000)
    real_judge = RunLock._judge
    winner: list[tuple[subprocess.Popen[str], list[int]]] = []

    def judge_then_lose_the_race(self: RunLock, raw: bytes) -> str:
        why = real_judge(self, raw)
        if not winner:
            winner.append(start_holder(tmp_path))  # takes the same stale lock over, and holds it
        return why

    monkeypatch.setattr(RunLock, "_judge", judge_then_lose_the_race)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        pid = winner[0][1][0]
        assert f"pid {pid}" in str(info.value)
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == pid
        assert [p for p in leftovers(tmp_path) if p != ".lock"] == []
    finally:
        if winner:
            kill9(winner[0][0])


def test_half_written_lock_file_is_held_while_recent_and_stale_when_old(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_bytes(b'{"format": "hpc_sr.runl')
    with pytest.raises(RunLockedError, match=r"is not a valid run lock \(modified 0 s ago; treated as held "
                                             r"until older than 60 s\)"):
        RunLock(tmp_path, stale_after_s=60).acquire()
    old = time.time() - 61
    os.utime(tmp_path / ".lock", (old, old))
    with pytest.warns(StaleLockWarning, match="not a valid run lock and was last modified 61 s ago"), \
            RunLock(tmp_path, stale_after_s=60) as lock:
        assert json.loads(lock.path.read_text())["token"]


@pytest.mark.slow  # holder processes
def test_lock_file_removed_by_hand_still_refuses_and_the_heartbeat_puts_it_back(tmp_path: Path) -> None:
    holder, (pid,) = start_holder(tmp_path, heartbeat_s=10.0)
    try:
        (tmp_path / ".lock").unlink()
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match="holds the flock of .* but its lock file .* is missing"):
            RunLock(tmp_path).acquire()
        waited = time.perf_counter() - t0  # FLOCK_GRACE_S for a holder that is releasing, then refused
        assert FLOCK_GRACE_S - 0.05 <= waited < FLOCK_GRACE_S + 8, waited
        assert not (tmp_path / ".lock").exists()
    finally:
        kill9(holder)
    holder, (pid,) = start_holder(tmp_path, heartbeat_s=0.1)
    try:
        (tmp_path / ".lock").unlink()
        with pytest.raises(RunLockedError, match=f"pid {pid}"):  # re-created by the heartbeat meanwhile
            RunLock(tmp_path).acquire()
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == pid
    finally:
        kill9(holder)


# -- life cycle ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # holder processes
def test_release_on_clean_and_error_exit_leaves_no_lock(tmp_path: Path) -> None:
    code = ("import sys\nfrom hpc_sr.dist.runlock import RunLock\nwith RunLock(sys.argv[1]):\n"
            "    raise SystemExit(3)  # the requeue exit code\n")
    res = subprocess.run([PYTHON, "-c", code, str(tmp_path)], cwd=REPO, env=env(), capture_output=True,
                         timeout=60)
    assert res.returncode == 3 and leftovers(tmp_path) == []
    lock = RunLock(tmp_path)
    with pytest.raises(ValueError, match="boom"), lock:
        assert lock.path.exists()
        raise ValueError("boom")
    assert not lock.path.exists() and not lock.held
    lock.release()  # twice is fine
    lock.acquire()  # and it can be taken again
    lock.release()
    assert leftovers(tmp_path) == []


def test_release_never_removes_somebody_elses_lock(tmp_path: Path) -> None:
    lock = RunLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    raw = fake_lock(tmp_path, "node-z")  # e.g. taken over while this process was stopped
    with pytest.warns(StaleLockWarning, match="taken over by host node-z, pid 4242"):
        wait_for(lambda: lock.lost, 5, "the heartbeat to notice")
    with pytest.raises(RunLockLostError, match="lost the run lock") as info:
        lock.check()
    assert isinstance(info.value, RunLockedError)
    lock.release()
    assert (tmp_path / ".lock").read_bytes() == raw


def test_check_sees_a_takeover_at_once_naming_the_new_holder(tmp_path: Path) -> None:
    """No heartbeat in between (it runs hourly here): check() reads the lock file itself."""
    lock = RunLock(tmp_path, heartbeat_s=3600)
    lock.acquire()
    lock.check()  # ours: nothing happens
    raw = fake_lock(tmp_path, "node-q9", pid=5151, job_id="77", restart_count=1)
    with pytest.raises(RunLockLostError) as info:
        lock.check()
    msg = str(info.value)
    assert f"lost the run lock of {tmp_path}: it was taken over by host node-q9, pid 5151, SLURM job 77 " \
           f"restart 1, started " in msg
    assert "stops without writing there again" in msg
    assert isinstance(info.value, TrainingError) and info.value.holder["pid"] == 5151
    assert not lock.held and lock.lost == msg
    with pytest.raises(RunLockLostError):  # and stays lost, even if the file changed again
        (tmp_path / ".lock").unlink()
        lock.check()
    (tmp_path / ".lock").write_bytes(raw)
    lock.release()
    assert (tmp_path / ".lock").read_bytes() == raw  # the new holder's file, untouched
    assert leftovers(tmp_path) == [".lock"]


def test_check_names_an_unreadable_lock_file_and_puts_a_removed_one_back(tmp_path: Path) -> None:
    with RunLock(tmp_path, heartbeat_s=3600) as lock:
        (tmp_path / ".lock").unlink()  # removed by hand: put back, as the heartbeat does
        lock.check()
        assert json.loads(lock.path.read_text())["pid"] == os.getpid() and lock.held
        (tmp_path / ".lock").write_text("not a lock")
        with pytest.raises(RunLockLostError, match="taken over by an unreadable lock file"):
            lock.check()
    assert (tmp_path / ".lock").read_text() == "not a lock"
    RunLock(tmp_path).check()  # never acquired (or released): a no-op


def test_check_costs_one_small_read(tmp_path: Path) -> None:
    """Called before every metrics line and checkpoint: measured, and bounded loosely (a loaded machine)."""
    with RunLock(tmp_path, heartbeat_s=3600) as lock:
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            lock.check()
            times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    print(f"RunLock.check(): median {median * 1e6:.0f} us, max {max(times) * 1e6:.0f} us")
    assert median < 0.005


def test_heartbeat_advances(tmp_path: Path) -> None:
    with RunLock(tmp_path, heartbeat_s=0.1) as lock:
        first = json.loads(lock.path.read_text())
        time.sleep(0.6)
        later = json.loads(lock.path.read_text())
        assert later["heartbeat_time"] - first["heartbeat_time"] >= 0.3
        assert later["start_time"] == first["start_time"] and later["token"] == first["token"]
        assert lock.held and lock.lost is None
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", ""])
def test_stale_env_var_is_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv(STALE_ENV, value)
    with pytest.raises(TrainingError, match=f"{STALE_ENV}={value!r}"):
        RunLock(tmp_path)


def test_stale_env_var_sets_the_threshold_and_the_heartbeat_follows(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv(STALE_ENV, "1.5")
    lock = RunLock(tmp_path)
    assert lock.stale_after_s == 1.5 and lock.heartbeat_s == 0.5
    assert RunLock(tmp_path, stale_after_s=300).stale_after_s == 300  # an explicit value wins
    with pytest.raises(ValueError, match="heartbeat_s"):
        RunLock(tmp_path, heartbeat_s=0)
