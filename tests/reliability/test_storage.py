"""Disk full and read-only storage, on real mounts (a small tmpfs, a read-only bind mount): a clear error
before training starts, and during a save the run stops with CheckpointError, the previous checkpoint intact.
Skipped with the reason when this machine does not allow mounting (not root, no CAP_SYS_ADMIN)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import CheckpointError, TrainingError
from hpc_sr.train.checkpoint import CheckpointManager
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} not permitted here: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """Bind-mount ``path`` onto itself read-only (root cannot write there either)."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def fill(directory: Path, leave_bytes: int = 0) -> None:
    """Write a filler file until the file system has about ``leave_bytes`` free (0: none at all)."""
    st = os.statvfs(directory)
    with open(directory / "filler.bin", "wb") as fh, contextlib.suppress(OSError):
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
        if leave_bytes == 0:
            fh.write(b"\0" * (1 << 20))  # up to the brim, whatever the block accounting


def trainer(shards: Path, runs: Path, steps: int) -> Trainer:
    ov = tiny_overrides(
        shards,
        runs,
        name="run",
        steps=steps,
        pretrain=steps,
        **{"train.ckpt_every": 3, "train.val_every": 100, "log.image_every": 0},
    )
    return Trainer(load_config(None, ov), DistEnv(), torch.device("cpu"), resume="auto")


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs / read-only bind mount needs root")


def test_read_only_run_dir_fails_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with (
        read_only(runs),
        pytest.raises(TrainingError, match=r"run directory .*run is not writable.*Read-only"),
    ):
        trainer(tiny_shards, runs, 3)


def test_full_disk_fails_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "runs", "256k") as runs:
        fill(runs)
        with pytest.raises(TrainingError, match=r"not writable.*No space left"):
            trainer(tiny_shards, runs, 3)


def test_read_only_checkpoints_mid_run_stop_cleanly(tiny_shards: Path, tmp_path: Path) -> None:
    assert trainer(tiny_shards, tmp_path, 3).run() == 0
    ckdir = tmp_path / "run" / "checkpoints"
    t = trainer(tiny_shards, tmp_path, 6)
    with (
        read_only(ckdir),
        pytest.raises(CheckpointError, match=r"cannot create .*\.tmp-step_00000006.*Read-only"),
    ):
        t.run()
    assert [p.name for p in CheckpointManager(tmp_path / "run").steps()] == ["step_00000003"]
    assert CheckpointManager(tmp_path / "run").load(ckdir / "step_00000003")["step"] == 3


@pytest.mark.parametrize(
    ("leave_kib", "failing"),
    [(4, "cannot write RNG state"), (96, "cannot write checkpoint")],  # rng ~16 KiB, trainer.pt ~210 KiB
    ids=["rng_file", "trainer_file"],
)
def test_disk_full_during_save_stops_cleanly(
    tiny_shards: Path, tmp_path: Path, leave_kib: int, failing: str
) -> None:
    ckdir = tmp_path / "run" / "checkpoints"
    with tmpfs(ckdir, "4m"):
        assert trainer(tiny_shards, tmp_path, 3).run() == 0
        t = trainer(tiny_shards, tmp_path, 6)
        fill(ckdir, leave_bytes=leave_kib * 1024)
        with pytest.raises(CheckpointError, match=rf"{failing}.*step_00000006.*No space left"):
            t.run()
        (ckdir / "filler.bin").unlink()
        manager = CheckpointManager(tmp_path / "run")
        assert manager.latest() == ckdir / "step_00000003"
        assert [p.name for p in manager.steps()] == ["step_00000003"]
        assert manager.load(ckdir / "step_00000003")["step"] == 3
        # once there is room again, the next run resumes from step 3 and its save clears the partial one
        again = trainer(tiny_shards, tmp_path, 6)
        assert again.step == 3 and again.run() == 0
        assert sorted(p.name for p in ckdir.iterdir()) == ["latest", "step_00000003", "step_00000006"]
