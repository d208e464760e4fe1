"""Atomic file writes: a temp file in the target's directory, fsync, rename over the target, fsync the folder.

A reader (or a resumed run) sees either the old file or the complete new one, never a half-written file; the
directory fsync makes the rename itself durable (it survives a crash of the machine, not only of the process).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@functools.cache
def default_file_mode() -> int:
    """0o666 minus the process's umask: the permissions ``open`` would give a new file. Read once (reading
    the umask sets it for a moment, which is not safe while other threads create files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# Errors of file systems that cannot fsync a directory (some FUSE and network mounts): nothing to make durable
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that renames / creations / removals of its entries are durable.

    File systems that refuse fsync on a directory (EINVAL, ENOTSUP) are tolerated; any other error is raised.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_beside(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[tuple[IO[Any], Path]]:
    """``with temp_beside(p) as (fh, tmp): ...``: a new temporary file ``.<name>.<random>.tmp`` in ``p``'s
    folder (made when missing), flushed and given the usual permissions when the block ends, removed when it
    raises. Publishing it (sync, rename onto ``p``) is the caller's."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # the folder is missing (most writes go to folders that exist)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh, tmp
            fh.flush()
            os.fchmod(fh.fileno(), default_file_mode())  # mkstemp creates 0600
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_open(p, "wb") as fh: ...`` writes ``p`` atomically (parents are created)."""
    path = Path(path)
    with temp_beside(path, mode) as (fh, tmp):
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


_NO_LOCKS = frozenset({errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created with its parents) for the ``with`` block; on file systems
    without locks (ENOLCK, EINVAL, EOPNOTSUPP, ENOSYS: some NFS and Lustre mounts) the block runs unlocked."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        yield
    finally:
        os.close(fd)  # releases the flock
