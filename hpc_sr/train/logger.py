"""Rank-0 run logging: TensorBoard, metrics.jsonl (one JSON object per record) and a console line."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_sr.config import Config, LogConfig, flatten


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RunLogger:
    """Writes only on rank 0; every method is a no-op elsewhere."""

    def __init__(self, log: LogConfig, run_dir: Path, rank: int, world_size: int) -> None:
        self.enabled = rank == 0
        self.world_size = world_size
        self.run_dir = run_dir
        self.start = time.time()
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - kept open for the run
        if log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl."""
        if not self.enabled or self._jsonl is None:
            return
        row = {
            "kind": kind,
            "step": step,
            "time": time.time(),
            "wall": time.time() - self.start,
            "world_size": self.world_size,
            **values,
        }
        self._jsonl.write(json.dumps(row, default=_jsonable) + "\n")
        if kind != "train":  # validation, checkpoint and stop records survive a crash
            os.fsync(self._jsonl.fileno())

    def scalars(self, prefix: str, step: int, values: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for key, value in values.items():
            if isinstance(value, int | float) and math.isfinite(float(value)):
                self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def image(self, tag: str, step: int, image_hwc: np.ndarray) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, image_hwc, step, dataformats="HWC")

    def console(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def hparams(self, cfg: Config, metrics: dict[str, float]) -> None:
        if self._tb is None:
            return
        hp = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in flatten(cfg).items()}
        self._tb.add_hparams(hp, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
