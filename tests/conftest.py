"""Shared fixtures: a tiny simulated shard set and tiny training configs (seconds on 2 CPU cores).

Also, for every test (autouse :func:`isolate_process_state`): the process state a test may leave behind is put
back afterwards. See its docstring for what is restored silently and what is reported as a leak.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def tiny_overrides(
    data_dir: Path | str | None,
    runs_dir: Path,
    name: str = "tiny",
    steps: int = 6,
    pretrain: int = 3,
    **extra: object,
) -> list[str]:
    """Dotted overrides for a tiny run: 32x32 HR (16x16 LR), 8 ch x 2 blocks, patches of 8."""
    base = {
        "data.source": "shards" if data_dir else "simulate",
        "data.path": str(data_dir or ""),
        **({"data.options.num_workers": 0} if data_dir else {"data.options.hr_size": 32}),
        "data.batch_size": 4,
        "data.patch_size": 8,
        "data.val_images": 8,
        "model.g.options.channels": 8,
        "model.g.options.blocks": 2,
        "model.d.options.channels": 8,
        "model.d.options.blocks": 2,
        "train.steps": steps,
        "train.pretrain_steps": pretrain,
        "train.val_every": 3,
        "train.ckpt_every": 3,
        "train.lr_g": 1e-3,
        "train.lr_d": 1e-3,
        "train.ema_decay": 0.9,
        "log.runs_dir": str(runs_dir),
        "log.name": name,
        "log.log_every": 1,
        "log.image_every": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 simulated deeplense_sr pairs at 32x32 / 16x16 in 3 shards, split 80/10/10 (38/5/5)."""
    from hpc_sr.data.shards import simulate_to_shards

    out = tmp_path_factory.mktemp("tiny_shards") / "data"
    simulate_to_shards(out, num=48, preset="deeplense_sr", seed=1, shard_size=16, hr_size=32)
    return out


@pytest.fixture(scope="session")
def tiny_randomized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 pairs of the randomized preset (LR a block mean for some, through a seeing-limited instrument for
    the others) at 32x32 / 16x16 in 3 shards, split 80/10/10 (32/4/4)."""
    from hpc_sr.data.shards import simulate_to_shards

    out = tmp_path_factory.mktemp("tiny_randomized") / "data"
    simulate_to_shards(out, num=40, preset="randomized", seed=3, shard_size=16, hr_size=32)
    return out


@pytest.fixture(scope="module")
def sim_batch() -> tuple[Any, ...]:
    """(hr, lr, params) of 8 simulated "wide" pairs at 32x32 / 16x16 (seed 6), once per test module."""
    import torch

    from hpc_sr.data.lensing import LensingSimulator

    b = LensingSimulator("wide", hr_size=32).sample(8, torch.Generator().manual_seed(6))
    return b.hr, b.lr, b.params


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"})
    env.update(extra)
    return env


def torchrun_cmd(nproc: int, script: Path | str, *args: str) -> list[str]:
    """``python -m torch.distributed.run --standalone`` on this host (a free port is picked)."""
    return [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(script),
        *args,
    ]


def wait_for(cond: Callable[[], object], timeout_s: float, what: str, period_s: float = 0.1) -> object:
    """Poll ``cond`` until truthy; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(period_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def read_shards(root: Path, split: str | None = None) -> tuple[Any, Any, list[str]]:
    """(lr, hr, names) numpy arrays of every pair of a shard directory (or of one split, in index order),
    read with h5py in the manifest's shard order: an oracle independent of hpc_sr's readers."""
    import h5py
    import numpy as np

    man = json.loads((Path(root) / "manifest.json").read_text())
    lrs, hrs, names = [], [], []
    for shard in man["shards"]:
        with h5py.File(Path(root) / shard["file"], "r") as f:
            lrs.append(f["lr"][:])
            hrs.append(f["hr"][:])
            if "names" in f:
                names += [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][:]]
    lr, hr = np.concatenate(lrs), np.concatenate(hrs)
    if split is not None:
        idx = np.asarray(man["split"]["indices"][split], dtype=np.int64)
        lr, hr, names = lr[idx], hr[idx], [names[i] for i in idx] if names else []
    return lr, hr, names


def mean_psnr(sr: Any, hr: Any) -> float:
    """Mean per-image PSNR (data range 1) of ``sr`` clamped to [0, 1] against ``hr``, in float64."""
    import torch

    sr64 = torch.as_tensor(sr).double().clamp(0, 1)
    mse = (sr64 - torch.as_tensor(hr).double()).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def bicubic_psnr(lr: Any, hr: Any, scale: int = 2) -> float:
    """Mean PSNR of bicubic upsampling (torch F.interpolate, align_corners=False) of ``lr`` against ``hr``."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.as_tensor(lr), scale_factor=scale, mode="bicubic", align_corners=False)
    return mean_psnr(up, hr)


# ----------------------------------------------------------------------------------------------- isolation
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
GUARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
STRICT_LEAKS = "HPC_SR_TEST_STRICT_LEAKS"  # =1: a leak fails the test instead of warning


class StateLeakWarning(UserWarning):
    """A test left launcher variables or a process group behind (restored by isolate_process_state)."""


def _reset_stop_flag() -> None:
    """Forget hpc_sr.dist.signals' process-wide stop flag and requeue decision (module globals), so the next
    install_stop_flag() installs fresh handlers and no stop request carries over into another test."""
    mod = sys.modules.get("hpc_sr.dist.signals")
    if mod is not None:
        mod._process_flag = None  # type: ignore[attr-defined]
        mod._requeue_decision = None  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def isolate_process_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Put back what a test changed in this process, after it and its own fixtures are torn down.

    Restored silently (expected by design): the SIGTERM/SIGUSR2/SIGINT handlers (every in-process Trainer
    installs the process-wide stop flag, after which pytest itself would ignore SIGTERM), the stop flag and
    requeue decision of hpc_sr.dist.signals, and torch's deterministic-algorithms switch
    (``train.deterministic``).

    Restored AND reported (a leak: the test should clean up): the launcher variables RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT, and a default torch.distributed process group still alive (it is
    destroyed). The report is a :class:`StateLeakWarning` naming the test, in pytest's warnings summary; with
    HPC_SR_TEST_STRICT_LEAKS=1 the test fails instead.
    """
    handlers = {sig: signal.getsignal(sig) for sig in GUARDED_SIGNALS}
    env = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    torch_mod = sys.modules.get("torch")
    deterministic = torch_mod.are_deterministic_algorithms_enabled() if torch_mod else None
    yield
    leaks: list[str] = []
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        leaks.append("a default process group")
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    for key, value in env.items():
        now = os.environ.get(key)
        if now != value:
            leaks.append(f"{key}={now!r} (was {value!r})")
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    for sig, handler in handlers.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)
    _reset_stop_flag()
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None:
        torch_mod.use_deterministic_algorithms(bool(deterministic))
    if leaks:
        text = f"{request.node.nodeid} leaked {'; '.join(leaks)} (restored)"
        if os.environ.get(STRICT_LEAKS) == "1":
            pytest.fail(text)
        warnings.warn(StateLeakWarning(text), stacklevel=1)


@contextlib.contextmanager
def in_process_group() -> Iterator[None]:
    """Around an in-process DeepSpeed run (it starts a one-rank process group and sets RANK, WORLD_SIZE,
    LOCAL_RANK when no launcher did): destroy that group and unset the variables it added afterwards."""
    unset = [key for key in LAUNCHER_ENV if key not in os.environ]
    try:
        yield
    finally:
        from hpc_sr.dist import env as du

        du.shutdown_distributed()
        for key in unset:
            os.environ.pop(key, None)


# ----------------------------------------------------------------------------------------------- ports
# Below Linux's ephemeral range (32768-60999: bind(0) and connect never take these) and below the
# 20000-39999 that hpc_sr.dist.env.port_from_job_id gives SLURM jobs (the cluster tests run jobs here).
PORT_RANGE = (15000, 20000)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "hpc_sr_test_ports"


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that no other test (in any process) is handed while the block runs.

    Ports come from :data:`PORT_RANGE`, outside the kernel's ephemeral range, so no unrelated socket takes one
    between our check and its use; among the tests a lock file per port, held with flock for the duration
    of the block, is the reservation (released automatically if the process dies). A port is only handed
    out when a plain bind succeeds (no listener, no TIME_WAIT left from an earlier test).
    """
    _PORT_LOCKS.mkdir(exist_ok=True)
    lo, hi = PORT_RANGE
    start = random.Random().randrange(lo, hi)
    for i in range(hi - lo):
        port = lo + (start - lo + i) % (hi - lo)
        fh = open(_PORT_LOCKS / f"{port}.lock", "a")  # noqa: SIM115 - held open as the reservation
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            fh.close()  # in use outside the tests: try the next one
            continue
        try:
            yield port
        finally:
            fh.close()  # releases the flock
        return
    pytest.fail(f"no free TCP port in {PORT_RANGE}")


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port reserved (see :func:`reserved_port`) for the whole test."""
    with reserved_port() as port:
        yield port


# ----------------------------------------------------------------------------------------------- seeds
TEST_SEED = "HPC_SR_TEST_SEED"


def random_seed(what: str) -> int:
    """A seed for a randomised test choice: ``HPC_SR_TEST_SEED`` when set, else a fresh one; printed (pytest
    shows it with a failure), so a failing draw is rerun with ``HPC_SR_TEST_SEED=<seed>``."""
    raw = os.environ.get(TEST_SEED, "")
    try:
        seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    except ValueError:
        raise pytest.UsageError(f"environment variable {TEST_SEED}={raw!r}: expected an integer") from None
    print(f"{what}: {TEST_SEED}={seed}")
    return seed


# ----------------------------------------------------------------------------------------------- markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLURM-cluster tests are slow tests too: ``pytest -m "not slow"`` leaves them out with the other tests
    that start processes."""
    for item in items:
        if item.get_closest_marker("slurm") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
