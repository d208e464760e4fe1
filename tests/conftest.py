"""Shared fixtures: a tiny simulated shard set and tiny training configs (seconds on 2 CPU cores)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
        "data.hr_size": 32,
        "data.batch_size": 4,
        "data.patch_size": 8,
        "data.num_workers": 0,
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
