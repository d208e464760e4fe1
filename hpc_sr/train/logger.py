"""Rank-0 run logging: TensorBoard, Weights & Biases (``log.wandb``), metrics.jsonl (one JSON object per
record) and a console line.

Every event is recorded in metrics.jsonl before its TensorBoard and W&B scalars, so the guard checked by
:meth:`RunLogger.record` stops a writer that lost the run directory before any of them is written.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_sr.config import Config, LogConfig, flatten
from hpc_sr.train.wandb_sink import WandbSink, wandb_wanted


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RunLogger:
    """Writes only on rank 0; every method is a no-op elsewhere."""

    def __init__(
        self,
        log: LogConfig,
        run_dir: Path,
        rank: int,
        world_size: int,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.enabled = rank == 0
        self.guard = guard  # raises when this process may no longer write into the run directory
        self.world_size = world_size
        self.run_dir = run_dir
        self.start = time.time()
        self._tb = None
        self._wandb: WandbSink | None = None
        self._jsonl = None
        use_wandb = wandb_wanted(log.wandb)  # on every rank: a missing wandb package fails them all
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if use_wandb:  # first: the writer most likely to fail to start leaves no open file behind
            if self.guard is not None:
                self.guard()  # the sink writes its run id and files into the run directory
            self._wandb = WandbSink(log.wandb, run_dir, log.name)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - kept open for the run
        if log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (after the guard: a superseded writer stops here)."""
        if not self.enabled or self._jsonl is None:
            return
        if self.guard is not None:
            self.guard()
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
        """The finite numbers of ``values`` as ``prefix/key`` scalars (TensorBoard and W&B)."""
        if self._tb is None and self._wandb is None:
            return
        tagged = {
            f"{prefix}/{key}": value
            for key, value in values.items()
            if isinstance(value, int | float) and math.isfinite(float(value))
        }
        if self._tb is not None:
            for tag, value in tagged.items():
                self._tb.add_scalar(tag, value, step)
        if self._wandb is not None and tagged:
            self._wandb.log(step, tagged)

    def image(self, tag: str, step: int, image_hwc: np.ndarray) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, image_hwc, step, dataformats="HWC")
        if self._wandb is not None:
            self._wandb.image(tag, step, image_hwc)

    def console(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def hparams(self, cfg: Config, metrics: dict[str, float]) -> None:
        """Final metrics against the config: TensorBoard's hparams, the W&B run summary."""
        if self._tb is None and self._wandb is None:
            return
        if self.guard is not None:
            self.guard()
        final = {f"hparam/{k}": v for k, v in metrics.items()}
        if self._tb is not None:
            flat = flatten(cfg).items()
            hp = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in flat}
            self._tb.add_hparams(hp, final, run_name="hparams")
        if self._wandb is not None:  # its config is the run's config.yaml, given when the run started
            self._wandb.summary(final)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close every writer (W&B: finish the run, as failed while an exception propagates)."""
        if self._wandb is not None:
            sink, self._wandb = self._wandb, None
            sink.finish()
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
