"""The single source of "done" of an output folder: ``out_dir/.hpc_sr_ledger/``.

    ledger = Ledger(out_dir, rank)
    fresh = ledger.open(fingerprint, overwrite=False, world=2)   # LedgerError: another run's settings
    ledger.record("a.npy", "done", outputs=[path], images=50)   # after the outputs are published
    ledger.status()                                              # {unit id: record}, all ranks

- ``run.json``: the run's fingerprint (:mod:`~hpc_sr.apps.inference.fingerprint`), created atomically by the
  first rank to start (a hard link of a complete temporary file: exactly one creator wins). A later run whose
  fingerprint differs is refused naming every differing key, unless ``overwrite``: then rank 0 replaces
  ``run.json`` and drops the rank files of ranks the new run does not have, and every rank empties its own.
- ``rank_XXXXX.jsonl``: one append-only file per rank, one JSON line per finished unit (fsynced alone, or
  a batch of lines with one write and one fsync: :meth:`Ledger.record_many`):
  ``{"unit", "status": "done"|"failed"|"skipped", "outputs": [{"path", "sha256"}], "reason", "images"}``
  (paths relative to the output folder; each sha256 that of the bytes as the format wrote them when the engine
  hands it over, :func:`hpc_sr.apps.inference.publish.checksums`, else read back from the file). A unit's
  outputs are published (atomically) before its record, so a unit without a record is simply redone. Reading
  is the union of every rank file (a rerun may have another world size): a unit is done when any record says
  so, else skipped, else failed. A torn last line (a process killed mid-append) is ignored, and cut off when
  its rank reopens the file.
- ``lock``: an flock for the few read-modify-write steps ranks share (the report, merging parts).
- ``warnings_XXXXX.json``: a rank's warnings counted by kind (the runner's; summed into the report).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hpc_sr.apps.inference.fingerprint import differences, upgraded
from hpc_sr.atomic import atomic_write_text, exclusive_lock, fsync_dir
from hpc_sr.errors import LedgerError

LEDGER_DIR = ".hpc_sr_ledger"
RUN_FILE = "run.json"
STATUSES = ("done", "skipped", "failed")  # precedence when a unit has several records


def rank_file(root: Path, rank: int) -> Path:
    return root / f"rank_{rank:05d}.jsonl"


def file_sha256(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The records of complete, well-formed lines of ``data`` (a torn or damaged line is skipped)."""
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("unit"), str) and rec.get("status") in STATUSES:
            yield rec


def merge(status: dict[str, dict[str, Any]], records: Iterable[dict[str, Any]]) -> None:
    """Fold ``records`` into ``status`` (unit -> record): done beats skipped beats failed; among equals the
    later record wins."""
    for rec in records:
        old = status.get(rec["unit"])
        if old is None or STATUSES.index(rec["status"]) <= STATUSES.index(old["status"]):
            status[rec["unit"]] = rec


class Ledger:
    """One rank's handle on the ledger of ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | Path, rank: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / LEDGER_DIR
        self.rank = rank
        self.path = rank_file(self.root, rank)
        self._fd: int | None = None
        self._lock = threading.Lock()  # the engine's threads record from one handle
        self._out_abs: tuple[Path, Path] | None = None  # out_dir absolute, and resolved (_rel)

    # ------------------------------------------------------------------------------------------- run.json
    def exists(self) -> bool:
        return (self.root / RUN_FILE).is_file()

    def fingerprint(self) -> dict[str, Any] | None:
        """The recorded fingerprint, or None before any run started."""
        try:
            return json.loads((self.root / RUN_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LedgerError(
                f"{self.root / RUN_FILE}: unreadable ({exc}); pass --overwrite to start over"
            ) from None

    def _create_run_file(self, text: str) -> None:
        """run.json, atomically, unless it exists (a hard link fails then)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{RUN_FILE}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.root / RUN_FILE)
                fsync_dir(self.root)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def open(self, fingerprint: dict[str, Any], overwrite: bool = False, world: int = 1) -> bool:
        """Check or create run.json and open this rank's file; True when no run had started here before.

        LedgerError when a run with another fingerprint started here (unless ``overwrite``).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(fingerprint, indent=1, sort_keys=True) + "\n"
        with self.lock():
            for stale in self.root.glob(f".{RUN_FILE}.*.tmp"):  # left by a killed rank (we hold the lock)
                stale.unlink(missing_ok=True)
            fresh = not self.exists()
            if overwrite and self.rank == 0:
                atomic_write_text(self.root / RUN_FILE, text)
                for stale in [*self.root.glob("rank_*.jsonl"), *self.root.glob("warnings_*.json")]:
                    if stale != self.path and _rank_of(stale) >= world:
                        stale.unlink(missing_ok=True)
            else:
                self._create_run_file(text)
        if overwrite:
            self._open_file(truncate=True)
            return fresh
        old, new = upgraded(self.fingerprint()), upgraded(fingerprint)
        if old != new:
            diff = differences(old or {}, new or {})
            raise LedgerError(
                f"{self.out_dir} holds the outputs of a run with other settings: {'; '.join(diff)}. "
                "Pass --overwrite to redo everything, or choose another --out"
            )
        self._open_file(truncate=False)
        return fresh

    def _open_file(self, truncate: bool) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if truncate:
            os.ftruncate(fd, 0)
        else:  # cut a torn last line (a kill mid-append) so the next record starts on a line of its own
            size = os.fstat(fd).st_size
            if size:
                tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
                if not tail.endswith(b"\n"):
                    cut = tail.rfind(b"\n")
                    os.ftruncate(fd, size - len(tail) + cut + 1)  # cut = -1: the whole tail
        os.lseek(fd, 0, os.SEEK_END)
        os.fsync(fd)
        fsync_dir(self.root)
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def clear(self) -> None:
        """Remove the whole ledger (tests, tools); nothing may run on this folder meanwhile."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------------------------- records
    def record(
        self,
        unit: str,
        status: str,
        outputs: Iterable[Path] = (),
        reason: str = "",
        images: int = 0,
        checksums: Mapping[Path, str] | None = None,
    ) -> dict[str, Any]:
        """Append one fsynced record (the outputs hashed here, after they were published, unless
        ``checksums`` has their sha256)."""
        return self.record_many([(unit, status, outputs, reason, images)], checksums)[0]

    def record_many(
        self,
        entries: Iterable[tuple[str, str, Iterable[Path], str, int]],
        checksums: Mapping[Path, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Append the records of ``(unit, status, outputs, reason, images)`` entries in one write and one
        fsync (a batch of published units). An output's sha256 is taken from ``checksums`` (the digest of the
        bytes as written, :func:`hpc_sr.apps.inference.publish.checksums`), else read from the file. A kill
        mid-write tears at most the last line: the units whose lines are not complete are simply redone."""
        sums = checksums or {}
        recs = [self._record(*entry, sums) for entry in entries]
        if not recs:
            return recs
        data = b"".join((json.dumps(rec, sort_keys=True) + "\n").encode() for rec in recs)
        with self._lock:
            if self._fd is None:
                raise RuntimeError("ledger not open")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        return recs

    def _record(
        self,
        unit: str,
        status: str,
        outputs: Iterable[Path],
        reason: str,
        images: int,
        sums: Mapping[Path, str],
    ) -> dict[str, Any]:
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: one of {STATUSES}")
        return {
            "unit": unit,
            "status": status,
            "outputs": [
                {"path": self._rel(p), "sha256": sums.get(Path(p)) or file_sha256(Path(p))} for p in outputs
            ],
            "reason": reason,
            "images": int(images),
            "rank": self.rank,
            "time": round(time.time(), 3),
        }

    def _rel(self, path: Path) -> str:
        """``path`` relative to the output folder (as spelled first: the outputs are paths under ``out_dir``;
        else with the links resolved), or as it is when outside it."""
        if self._out_abs is None:
            self._out_abs = (self.out_dir.absolute(), self.out_dir.resolve())
        text = os.fspath(path)
        for base in (str(self.out_dir), str(self._out_abs[0])):  # as spelled: a prefix of its string
            if len(text) > len(base) + 1 and text.startswith(base) and text[len(base)] == os.sep:
                return Path(text[len(base) + 1 :]).as_posix()
        p = Path(path)
        with contextlib.suppress(ValueError):
            return p.absolute().relative_to(self._out_abs[0]).as_posix()
        try:
            return p.resolve().relative_to(self._out_abs[1]).as_posix()
        except ValueError:
            return str(p)

    def rank_files(self) -> list[Path]:
        return sorted(self.root.glob("rank_*.jsonl"))

    def status(self) -> dict[str, dict[str, Any]]:
        """unit id -> its deciding record, over every rank file."""
        status: dict[str, dict[str, Any]] = {}
        for path in self.rank_files():
            with contextlib.suppress(FileNotFoundError):
                merge(status, parse_lines(path.read_bytes()))
        return status

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive flock on ``lock`` (skipped on file systems without locks)."""
        with exclusive_lock(self.root / "lock"):
            yield


def _rank_of(path: Path) -> int:
    try:
        return int(path.stem.split("_")[1])
    except (IndexError, ValueError):
        return -1
