"""One writer per run directory: ``run_dir/.lock``, a heartbeat, and an flock as the same-host fast path.

Rank 0 takes the lock before anything is written in the run directory and releases it when it leaves (also
on the requeue exit). The lock file is JSON (host, pid, SLURM job id and restart count, start and heartbeat
times, a random token) published complete with ``os.link`` (never half-written by us). A daemon thread
rewrites it (temp file + ``os.replace``) every ``heartbeat_s``. An ``flock`` on the run directory, held for
the life of the lock, tells a second process on the same host at once that the holder is alive.

``acquire()`` on an existing lock decides:

- **same SLURM job, newer incarnation** (equal job id, our ``SLURM_RESTART_COUNT`` greater than the holder's):
  a requeued job takes over its own lock, even while the old pid still looks alive on another node;
- **same host**: held while the holder pid runs the same process (pid and, on Linux, its start time in
  ``/proc``; a zombie counts as gone) or the flock is busy (when the pid is gone, the flock is retried for up
  to ``FLOCK_GRACE_S``: a killed holder's last threads may still be closing its files); stale otherwise;
- **another host**: held while its heartbeat is younger than ``stale_after_s`` (or twice the holder's own
  heartbeat interval, if longer; clocks are assumed to agree to well within that), stale after;
- **a lock file that is not valid lock JSON** (written by something else, truncated): held while its mtime is
  younger than ``stale_after_s``, stale after.

Held -> :class:`RunLockedError` naming the holder and what to do. Stale -> taken over with a
:class:`StaleLockWarning` (``warnings.warn``; the message is also kept in ``RunLock.takeover``). A takeover
renames the old file aside and checks it is the one judged stale, so of two processes taking over the same
stale lock exactly one wins and the other sees a live holder. A same-host process that holds the flock while
no lock file exists (one starting or releasing; a file removed by hand) is waited for up to ``FLOCK_GRACE_S``,
then refused.

A holder whose lock was taken over notices it at its next :meth:`RunLock.check` (one read of the lock
file; the trainer calls it before every checkpoint, ``latest`` and metrics line) or heartbeat, whichever
comes first: it stops renewing, and ``check()`` raises :class:`RunLockLostError` naming the new holder. It
never writes the lock file back or removes the new holder's (``release()`` removes only its own file).

``stale_after_s`` defaults to ``HPC_SR_LOCK_STALE_S`` (a positive number of seconds) or 120 s.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import itertools
import json
import math
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from hpc_sr.atomic import fsync_dir
from hpc_sr.dist.slurm import slurm_job_id, slurm_restart_count
from hpc_sr.errors import TrainingError

LOCK_NAME = ".lock"
STALE_ENV = "HPC_SR_LOCK_STALE_S"
DEFAULT_STALE_S = 120.0
FLOCK_GRACE_S = 2.0  # a same-host holder whose pid is gone may hold the flock this long (exiting threads)
FORMAT = "hpc_sr.runlock"
_LINK_UNSUPPORTED = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_FLOCK_BUSY = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})

# fds holding an flock, closed in forked children (DataLoader workers): they must not keep a dead holder's
# lock alive.
_FLOCK_FDS: set[int] = set()


def _close_flock_fds_in_child() -> None:
    for fd in list(_FLOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent's lock stays (no LOCK_UN here)
    _FLOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_flock_fds_in_child)


class RunLockedError(TrainingError):
    """The run directory is being written by another live run (the message names it and what to do)."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class RunLockLostError(RunLockedError):
    """This process held the run lock and another run took it over: it must not write the run directory again
    (the message names the new holder; ``holder`` is its lock record, None when the file is not a lock)."""


class StaleLockWarning(UserWarning):
    """A stale run lock (dead holder, silent other host, earlier incarnation of this job) was taken over."""


def stale_after_from_env(default: float = DEFAULT_STALE_S) -> float:
    """``HPC_SR_LOCK_STALE_S`` as a positive number of seconds; ``default`` when the variable is not set."""
    raw = os.environ.get(STALE_ENV)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TrainingError(f"{STALE_ENV}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise TrainingError(f"{STALE_ENV}={raw!r} must be a positive number of seconds")
    return value


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/<pid>/stat; None when unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_start(pid: int) -> int | None:
    state = _proc_state(pid)
    return state[1] if state else None


def _runs_same_process(pid: int, start: object) -> bool:
    """Whether ``pid`` (on this host) is alive and, when its start time is known, still the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    except OSError:
        return False
    state = _proc_state(pid)
    if state is None:
        return True  # no /proc: trust the pid
    if state[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent
    return not isinstance(start, int) or start == state[1]


def _when(t: object) -> str:
    if not isinstance(t, (int, float)):
        return "an unknown time"
    return _dt.datetime.fromtimestamp(float(t)).astimezone().isoformat(timespec="seconds")


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The lock record, or None when ``raw`` is not a valid lock file."""
    try:
        rec = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    ok = (
        isinstance(rec, dict)
        and rec.get("format") == FORMAT
        and isinstance(rec.get("host"), str)
        and isinstance(rec.get("pid"), int)
        and isinstance(rec.get("heartbeat_time"), (int, float))
        and isinstance(rec.get("token"), str)
    )
    return rec if ok else None


class RunLock:
    """Exclusive writer lock on ``run_dir`` (see the module docstring for the rules).

    ``stale_after_s=None`` reads ``HPC_SR_LOCK_STALE_S`` (default 120 s). The heartbeat runs at least three
    times per ``stale_after_s`` (``heartbeat_s`` is lowered when needed), so a live holder never looks stale.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, stale_after_s: float | None = None,
                 heartbeat_s: float = 10.0) -> None:
        stale = stale_after_from_env() if stale_after_s is None else float(stale_after_s)
        if not math.isfinite(stale) or stale <= 0:
            raise ValueError(f"stale_after_s must be a positive number of seconds, got {stale_after_s!r}")
        if not math.isfinite(heartbeat_s) or heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be a positive number of seconds, got {heartbeat_s!r}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_after_s = stale
        self.heartbeat_s = min(float(heartbeat_s), stale / 3)
        self.takeover: str | None = None  # the warning text when acquire() took a stale lock over
        self._token = secrets.token_hex(8)
        self._names = itertools.count()
        self._record: dict[str, Any] = {}
        self._flock_fd: int | None = None
        self._flock_busy = False  # another process holds the flock (as of the last try)
        self._held = False
        self._lost: str | None = None
        self._lost_to: dict[str, Any] | None = None  # the record of the run that took the lock over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()  # heartbeat vs release

    # -- public ------------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Acquired, not released, and not taken over by somebody else."""
        return self._held and self._lost is None

    @property
    def lost(self) -> str | None:
        """Why the lock was lost while held (another process took it over), else None."""
        return self._lost

    def check(self) -> None:
        """Raise :class:`RunLockLostError` when another run has taken the lock over; call it right before each
        write into the run directory (a checkpoint, ``latest``, a metrics line).

        Looks at the lock file itself (one small read, no waiting for the heartbeat), so a takeover is seen
        at the first check after it. A missing file (removed by hand) is put back, as the heartbeat does.
        Does nothing when the lock is not held (released, or never acquired).
        """
        if self._lost is None and self._held:
            with contextlib.suppress(OSError):  # a failing file system: the write that follows reports it
                self._verify()
        if self._lost is not None:
            raise RunLockLostError(self._lost, holder=self._lost_to)

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError`; a stale lock is taken over with a warning."""
        if self._held:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._remove_old_temps()
        except OSError as exc:
            raise TrainingError(f"run directory {self.run_dir} is not writable: {exc}") from None
        now = time.time()
        self._record = {
            "format": FORMAT, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "job_id": slurm_job_id(), "restart_count": slurm_restart_count(), "start_time": now,
            "heartbeat_time": now, "heartbeat_s": self.heartbeat_s, "flock": False,
            "token": self._token,
        }
        self._take_flock()
        takeover: str | None = None
        self.takeover = None
        try:
            for attempt in range(8):
                if attempt == 0 and self._flock_busy and not self.path.exists():
                    self._flock_without_file()  # (later, a missing file is one we or a racer removed)
                if self._publish():
                    break
                try:
                    raw = self.path.read_bytes()
                except FileNotFoundError:
                    continue  # released or renamed aside meanwhile: try again
                stale_because = self._judge(raw)
                if self._remove_if_unchanged(raw):
                    takeover = f"took over the stale run lock {self.path}: {stale_because}"
            else:
                raise RunLockedError(f"could not take the run lock {self.path}: it keeps changing (another "
                                     f"run is starting in {self.run_dir}?); choose another log.name")
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._remove_own()
            self._drop_flock()
            raise TrainingError(f"run directory {self.run_dir} is not writable: cannot create {self.path}: "
                                f"{exc}") from None
        except BaseException:
            self._drop_flock()
            raise
        self._held, self._lost, self._lost_to = True, None, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="hpc-sr-runlock-heartbeat", daemon=True)
        self._thread.start()
        self.takeover = takeover
        if takeover is not None:
            warnings.warn(takeover, StaleLockWarning, stacklevel=2)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours; safe to call more than once."""
        if not self._held:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._mutex:
            self._held = False
            with contextlib.suppress(OSError):
                self._remove_own()
        self._drop_flock()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- deciding ----------------------------------------------------------------------------------
    def _judge(self, raw: bytes) -> str:
        """Why the existing lock is stale; raises RunLockedError when it is held."""
        rec = _parse(raw)
        if rec is None:
            return self._judge_unreadable()
        mine = self._record
        age = time.time() - float(rec["heartbeat_time"])
        restarts = rec.get("restart_count")
        if (mine["job_id"] is not None and rec.get("job_id") == mine["job_id"]
                and isinstance(restarts, int) and mine["restart_count"] > restarts):
            return (f"it belongs to an earlier incarnation of this SLURM job {mine['job_id']} (restart "
                    f"{restarts} -> {mine['restart_count']}; host {rec['host']}, pid {rec['pid']})")
        if rec["host"] == mine["host"]:
            alive = _runs_same_process(rec["pid"], rec.get("pid_start"))
            if self._flock_busy and not alive:  # a killed holder's last threads may hold it for a moment
                self._wait_for_flock(FLOCK_GRACE_S)
            if self._flock_busy:
                raise self._held_error(rec, "a live process on this host holds the directory's flock")
            if alive:
                raise self._held_error(rec, "its process is alive on this host")
            return f"its process (host {rec['host']}, pid {rec['pid']}) is gone"
        limit = max(self.stale_after_s, 2 * float(rec.get("heartbeat_s") or 0))
        if age <= limit:
            raise self._held_error(rec, f"its last heartbeat was {max(age, 0):.0f} s ago; it is taken over "
                                        f"automatically once older than {limit:.0f} s ({STALE_ENV})")
        return f"host {rec['host']} (pid {rec['pid']}) has not renewed it for {age:.0f} s (> {limit:.0f} s)"

    def _flock_without_file(self) -> None:
        """A same-host process holds the flock but no lock file exists: one starting or releasing (wait for
        it), or a holder whose file was removed by hand (refuse)."""
        self._wait_for_flock(FLOCK_GRACE_S, until=self.path.exists)
        if self._flock_busy and not self.path.exists():
            raise RunLockedError(
                f"another process on this host holds the flock of {self.run_dir} but its lock file "
                f"{self.path} is missing (removed by hand?); wait for that run, stop it, or choose another "
                f"log.name"
            )

    def _judge_unreadable(self) -> str:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it was removed"
        if self._flock_busy or age <= self.stale_after_s:
            busy = ", and a process on this host holds the flock" if self._flock_busy else ""
            raise RunLockedError(
                f"another run may be writing {self.run_dir}: its lock file {self.path} is not a valid run "
                f"lock (modified {max(age, 0):.0f} s ago; treated as held until older than "
                f"{self.stale_after_s:.0f} s{busy}); wait, remove {self.path} if no run is writing there, "
                f"or choose another log.name"
            )
        return f"it is not a valid run lock and was last modified {age:.0f} s ago"

    def _held_error(self, rec: dict[str, Any], why: str) -> RunLockedError:
        job = rec.get("job_id")
        stop = f"kill {rec['pid']} on {rec['host']}" + (f" / scancel {job}" if job else "")
        return RunLockedError(
            f"another run is writing {self.run_dir}: host {rec['host']}, pid {rec['pid']}, SLURM job "
            f"{job or 'none'}, started {_when(rec.get('start_time'))} ({why}); wait for it, stop it "
            f"({stop}), or choose another log.name",
            holder=rec,
        )

    # -- file operations ---------------------------------------------------------------------------
    def _temp_name(self) -> Path:
        return self.run_dir / f"{LOCK_NAME}.{self._token}.{next(self._names)}.tmp"

    def _write_temp(self) -> Path:
        tmp = self._temp_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._record, indent=1) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _publish(self) -> bool:
        """Create the lock file with our record, complete, only if none exists; True when it is ours."""
        tmp = self._write_temp()
        try:
            os.link(tmp, self.path)
            ok = True
        except FileExistsError:
            ok = tmp.stat().st_nlink >= 2  # NFS: the link was made but its reply was lost and retried
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
            ok = self._publish_exclusive()  # no hard links on this file system
        finally:
            tmp.unlink(missing_ok=True)
        if ok:
            fsync_dir(self.run_dir)
        return ok

    def _publish_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self._record, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _remove_own(self) -> None:
        """Remove the lock file if it holds our token (never somebody else's)."""
        raw = self.path.read_bytes()
        rec = _parse(raw)
        if rec is not None and rec["token"] == self._token and self._remove_if_unchanged(raw):
            fsync_dir(self.run_dir)

    def _remove_if_unchanged(self, raw: bytes) -> bool:
        """Remove the lock file if it still holds ``raw`` (renamed aside: one process wins; else restored)."""
        aside = self._temp_name()
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == raw:
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # not the file we judged: restore it (never over a newer lock)
            return False
        finally:
            aside.unlink(missing_ok=True)

    def _remove_old_temps(self) -> None:
        """Temp files of holders that died between writing and renaming them."""
        cutoff = time.time() - self.stale_after_s
        for tmp in self.run_dir.glob(f"{LOCK_NAME}.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    # -- flock -------------------------------------------------------------------------------------
    def _take_flock(self) -> None:
        """flock the run directory; ``_flock_busy`` when another process holds it (unsupported: neither)."""
        self._flock_busy = False
        if self._flock_fd is not None:
            return
        try:
            fd = os.open(self.run_dir, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            self._flock_busy = exc.errno in _FLOCK_BUSY
            return
        self._flock_fd = fd
        _FLOCK_FDS.add(fd)
        self._record["flock"] = True

    def _wait_for_flock(self, timeout_s: float, until: Callable[[], bool] = lambda: False) -> None:
        """Retry a busy flock for up to ``timeout_s`` or until ``until()`` is true."""
        deadline = time.monotonic() + timeout_s
        self._take_flock()
        while self._flock_busy and not until() and time.monotonic() < deadline:
            time.sleep(0.02)
            self._take_flock()

    def _drop_flock(self) -> None:
        if self._flock_fd is not None:
            _FLOCK_FDS.discard(self._flock_fd)
            with contextlib.suppress(OSError):
                os.close(self._flock_fd)  # closing the last fd releases the flock
            self._flock_fd = None

    # -- heartbeat ---------------------------------------------------------------------------------
    def _beat(self) -> None:
        failures = 0
        while not self._stop.wait(self.heartbeat_s):
            with self._mutex:
                if not self._held or self._stop.is_set() or self._lost is not None:
                    return
                try:
                    self._renew()
                    failures = 0
                except OSError as exc:  # keep trying: a takeover meanwhile is seen by the token check
                    failures += 1
                    if failures == max(1, int(self.stale_after_s / 2 / self.heartbeat_s)):
                        msg = (f"run lock {self.path}: the heartbeat could not be written {failures} times "
                               f"({exc}); other hosts take the lock over after {self.stale_after_s:.0f} s "
                               f"without one")
                        warnings.warn(msg, StaleLockWarning, stacklevel=1)
                if self._lost is not None:
                    warnings.warn(self._lost, StaleLockWarning, stacklevel=1)
                    return

    def _verify(self) -> bool:
        """Whether the lock file is still ours (see :meth:`_verify_locked`), from any thread. The usual case
        (our file) is one read without the mutex: a heartbeat replacing the file meanwhile is seen before or
        after, both ours."""
        try:
            rec = _parse(self.path.read_bytes())
        except FileNotFoundError:
            rec = None
        if rec is not None and rec["token"] == self._token:
            return True
        with self._mutex:
            return self._held and self._lost is None and self._verify_locked()

    def _verify_locked(self) -> bool:
        """Whether the lock file still holds our token; a missing one is published again (fails when another
        process created one meanwhile). Otherwise sets ``_lost`` naming the new holder and returns False."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._record["heartbeat_time"] = time.time()
            if self._publish():  # removed by hand: put it back (fails if somebody else created one)
                return True
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                raw = b""
        rec = _parse(raw)
        if rec is not None and rec["token"] == self._token:
            return True
        self._lost_to = rec
        self._lost = self._lost_message(rec)
        self._stop.set()
        return False

    def _lost_message(self, rec: dict[str, Any] | None) -> str:
        if rec is None:
            who = f"an unreadable lock file {self.path} (not written by hpc_sr)"
        else:
            job = rec.get("job_id")
            restart = rec.get("restart_count")
            incarnation = f" restart {restart}" if job and isinstance(restart, int) else ""
            who = (f"host {rec['host']}, pid {rec['pid']}, SLURM job {job or 'none'}{incarnation}, started "
                   f"{_when(rec.get('start_time'))}")
        return (f"lost the run lock of {self.run_dir}: it was taken over by {who}; this process stops "
                f"without writing there again (the run directory now belongs to the new holder)")

    def _renew(self) -> None:
        """Rewrite the lock file with a fresh heartbeat while it is still ours. The temp file is written and
        fsynced first, so a takeover between the ownership check and the replace has microseconds to land."""
        self._record["heartbeat_time"] = time.time()
        tmp = self._write_temp()
        try:
            if self._verify_locked():
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
