"""Durable renames: ``atomic_open`` and the shard writer fsync the directory after each rename; file systems
that refuse a directory fsync (EINVAL / ENOTSUP) are tolerated, other errors are raised."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from hpc_sr import atomic


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, watch: Path) -> list[tuple[str, object]]:
    """Record ('dir', inode, names in it) / ('file', None) for every os.fsync."""
    calls: list[tuple[str, object]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            calls.append(("dir", (st.st_ino, sorted(p.name for p in watch.iterdir()))))
        else:
            calls.append(("file", None))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_atomic_open_fsyncs_the_directory_after_the_replace(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    calls = record_fsyncs(monkeypatch, tmp_path)
    atomic.atomic_write_text(target, "new")
    assert [c[0] for c in calls] == ["file", "dir"]
    assert calls[1][1] == (tmp_path.stat().st_ino, ["out.txt"])  # the directory, after the rename
    assert target.read_text() == "new"


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP])
def test_fsync_dir_tolerates_file_systems_that_refuse_it_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def refuse(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)
    atomic.fsync_dir(tmp_path)
    code = errno.EIO
    with pytest.raises(OSError) as info:
        atomic.fsync_dir(tmp_path)
    assert info.value.errno == errno.EIO
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        atomic.fsync_dir(tmp_path / "f")


def test_each_shard_rename_is_followed_by_a_directory_fsync(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_sr.data.shards import ShardWriter

    tmp_path.joinpath("ds").mkdir()
    calls = record_fsyncs(monkeypatch, tmp_path / "ds")
    w = ShardWriter(tmp_path / "ds", shard_size=2)
    w.add(np.zeros((3, 1, 8, 8), np.float32), np.zeros((3, 1, 4, 4), np.float32))
    w.close()
    dirs = [c[1] for c in calls if c[0] == "dir"]
    ino = (tmp_path / "ds").stat().st_ino
    assert dirs == [(ino, ["shard-00000.h5"]), (ino, ["shard-00000.h5", "shard-00001.h5"])]
