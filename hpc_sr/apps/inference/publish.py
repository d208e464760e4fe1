"""Publishing a unit's outputs: atomically, one file at a time or a batch of units together.

    with publish.output(path, "wb") as fh:       # what a format writes its output through
        fh.write(data)
    publish.written_in_place(fd, path)           # bytes a format wrote into an existing file (HDF5 rows)

Outside a batch (``durability="file"``, or a format called on its own) ``output`` is
:func:`hpc_sr.atomic.atomic_open`: a temporary file in the target's folder, fsync, rename, fsync of the
folder, and ``written_in_place`` fdatasyncs the file at once. That is one or two journal commits of waiting
per output file (1-8 ms on this VM's disk), which bounds small outputs (FITS cutouts) far below what reading
and encoding allow.

Inside a batch (the engine's writer thread, ``durability="batch"``: :class:`Batch` and :func:`staging`) the
outputs of several units are written to their temporary names (``.<name>.<random>.tmp``: the same
:func:`~hpc_sr.atomic.temp_beside` that ``atomic_open`` writes through, so the runner removes those of a
killed run) and made durable together by :meth:`Batch.commit`:

1. every staged file (closed once written: no descriptors held), and every file written in place, is
   fdatasynced, side by side in a few threads (the file system folds concurrent syncs into a few journal
   commits; only this batch's own files are flushed, unlike ``syncfs``, which would also wait for every
   other job's dirty pages on a shared file system);
2. then each is renamed onto its target, and every folder holding one is fsynced once;
3. only then does the engine record the batch's units in the ledger (one append, one fsync).

Checksums: within :func:`checksums`, an output written front to back in ``"wb"`` mode (FITS, .npy) is hashed
(sha256) as its bytes are written, and the ledger records that digest instead of reading the file back; an
output its format seeks in or reads (HDF5 parts, .npz) is hashed by the ledger from the file, as before.

So a unit is in the ledger only when its outputs are durable and visible, a visible output is always complete
(a rename of a synced file), and a kill at any moment leaves at most temporary files (removed by the next run)
or outputs published but not recorded (redone, with the same bytes, by the next run). A unit whose write fails
takes only its own staged files with it (:meth:`Batch.unit`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hpc_sr.atomic import atomic_open, fsync_dir, temp_beside

DURABILITY = ("batch", "file")  # the first is the default
SYNC_THREADS = 8  # fsyncs in flight at once (measured here: 8 to 64 threads alike, ~4x one at a time)
BATCH_UNITS = 64  # units staged before a commit at the latest (the queue running dry commits earlier)
BATCH_FILES = 256  # staged files (open descriptors) before a commit at the latest

_local = threading.local()


class _Hashing:
    """A binary file written front to back, hashed as written: ``write`` and ``flush`` pass through, and
    anything else (``seek``, ``tell``, ``read``, ``name``...) too, but then the hash is dropped (the ledger
    reads the file)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._hash: Any = hashlib.sha256()

    def write(self, data: Any) -> int:
        n = self._fh.write(data)
        if self._hash is not None:
            view = memoryview(data)
            if n == view.nbytes and view.c_contiguous:
                self._hash.update(view)
            else:  # a short write (the caller writes the rest), or bytes not in one piece: read back
                self._hash = None
        return n

    def flush(self) -> None:
        self._fh.flush()

    def __getattr__(self, name: str) -> Any:
        self._hash = None
        return getattr(self._fh, name)

    def hexdigest(self) -> str | None:
        """The sha256 of every byte written, or None when the file was used otherwise."""
        return None if self._hash is None else self._hash.hexdigest()


@contextlib.contextmanager
def _hashed(fh: IO[Any], mode: str, target: Path) -> Iterator[IO[Any]]:
    """``fh`` wrapped in :class:`_Hashing` when :func:`checksums` is active and ``mode`` is ``"wb"``; the
    digest is noted for ``target`` once the block ends without an error."""
    sums = getattr(_local, "sums", None)
    if sums is None or mode != "wb":
        yield fh
        return
    sums.pop(target, None)
    wrapped = _Hashing(fh)
    yield wrapped  # type: ignore[misc]
    digest = wrapped.hexdigest()
    if digest is not None:
        sums[target] = digest


@dataclass(frozen=True)
class _Staged:
    tmp: Path  # written and closed, not yet synced
    target: Path


@dataclass
class Staged:
    """What :meth:`Batch.take` hands over: the files of some units, to publish with :meth:`Batch.publish`
    (perhaps in another thread while the next units are staged)."""

    files: list[_Staged]
    in_place: list[Path]

    def discard(self) -> None:
        for staged in self.files:
            staged.tmp.unlink(missing_ok=True)
        self.files, self.in_place = [], []


class Batch:
    """Outputs staged by :func:`output` while :func:`staging` is active, published by :meth:`commit` (or
    :meth:`take` then :meth:`publish`; module docstring). One thread stages; :meth:`close` discards what was
    not taken."""

    def __init__(self, threads: int = SYNC_THREADS) -> None:
        self._staged: list[_Staged] = []
        self._in_place: dict[Path, None] = {}  # files written in place (ordered, each once)
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Files staged or written in place since the last :meth:`take`."""
        return len(self._staged) + len(self._in_place)

    def full(self, units: int) -> bool:
        return units >= BATCH_UNITS or self.pending >= BATCH_FILES

    # ----------------------------------------------------------------------------------------------- staging
    @contextlib.contextmanager
    def output(self, path: Path, mode: str) -> Iterator[IO[Any]]:
        with temp_beside(path, mode) as (fh, tmp), _hashed(fh, mode, path) as out:
            yield out
        self._staged.append(_Staged(tmp, path))

    def written_in_place(self, path: Path) -> None:
        self._in_place[Path(path)] = None

    @contextlib.contextmanager
    def unit(self) -> Iterator[None]:
        """One unit's staging: when it raises, the files it staged are removed (the others stay)."""
        first = len(self._staged)
        try:
            yield
        except BaseException:
            Staged(self._staged[first:], []).discard()
            del self._staged[first:]
            raise

    # ----------------------------------------------------------------------------------------------- commit
    def take(self) -> Staged:
        """What was staged so far (the batch starts empty)."""
        taken = Staged(self._staged, list(self._in_place))
        self._staged, self._in_place = [], {}
        return taken

    def publish(self, taken: Staged) -> list[Path]:
        """Sync every staged and in-place file of ``taken``, rename the staged ones onto their targets, fsync
        their folders once each; the targets published. On an error nothing more is renamed, what was not
        is removed, and the error is raised."""
        files, published = taken.files, []
        try:
            self._sync([s.tmp for s in files] + taken.in_place)
            for s in files:
                os.replace(s.tmp, s.target)
                published.append(s.target)
            for folder in dict.fromkeys(s.target.parent for s in files):
                fsync_dir(folder)
        except BaseException:
            Staged(files[len(published) :], []).discard()
            raise
        finally:
            taken.files, taken.in_place = [], []
        return published

    def commit(self) -> list[Path]:
        """:meth:`publish` what was staged so far."""
        return self.publish(self.take())

    def _sync(self, paths: list[Path]) -> None:
        if len(paths) <= 1 or self._threads <= 1:
            for path in paths:
                _sync_one(path)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="hpc_sr-fsync")
        for _ in self._pool.map(_sync_one, paths):  # raises the first error
            pass

    def discard(self) -> None:
        """Remove every staged file not taken (nothing is published)."""
        self.take().discard()

    def close(self) -> None:
        self.discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _sync_one(path: Path) -> None:
    """fdatasync ``path`` (its data and size: what reading it back needs; the rename is the folder's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- formats
def current() -> Batch | None:
    """The batch this thread stages into, or None (publish one file at a time)."""
    return getattr(_local, "batch", None)


@contextlib.contextmanager
def staging(batch: Batch | None) -> Iterator[None]:
    """Within this block, :func:`output` and :func:`written_in_place` of this thread go to ``batch`` (None:
    one file at a time)."""
    before = current()
    _local.batch = batch
    try:
        yield
    finally:
        _local.batch = before


@contextlib.contextmanager
def output(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """``with output(p, "wb") as fh: ...``: ``p`` published atomically, now or at the batch's commit."""
    batch = current()
    if batch is None:
        with atomic_open(path, mode) as fh, _hashed(fh, mode, Path(path)) as out:
            yield out
        return
    with batch.output(Path(path), mode) as fh:
        yield fh


@contextlib.contextmanager
def checksums() -> Iterator[dict[Path, str]]:
    """Within this block, the sha256 of each output this thread writes front to back through :func:`output`
    (``"wb"``), keyed by its path as given: what the ledger records without reading the file back."""
    before = getattr(_local, "sums", None)
    sums: dict[Path, str] = {}
    _local.sums = sums
    try:
        yield sums
    finally:
        _local.sums = before


def written_in_place(fd: int, path: str | os.PathLike[str]) -> None:
    """Bytes were written into ``path`` (open as ``fd``) that must be durable before this unit's outputs are
    published: fdatasync now, or with the batch's commit."""
    batch = current()
    if batch is None:
        os.fdatasync(fd)
    else:
        batch.written_in_place(Path(path))
