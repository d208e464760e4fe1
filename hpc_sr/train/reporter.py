"""The training step line and its metrics record, at ``log.log_every`` steps and the last one.

    reporter.add(result, images=batch_size)            # every step: device values summed, no host read
    if reporter.due(step):
        reporter.report(step, phase, lrs, skipped_total)   # one host read per window
"""

from __future__ import annotations

from typing import Any

import torch

from hpc_sr.train.logger import RunLogger, peak_memory_mb
from hpc_sr.train.meter import StepMeter, format_eta
from hpc_sr.train.progress import due
from hpc_sr.train.step import StepResult


class TrainReporter:
    """Accumulates steps between log lines and writes the line (console, metrics.jsonl, TensorBoard)."""

    def __init__(self, log: RunLogger, *, every: int, last_step: int, device: torch.device) -> None:
        self.log, self.every, self.last_step, self.device = log, every, last_step, device
        self.meter = StepMeter()

    def add(self, res: StepResult, images: int) -> None:
        """One step: its losses and grad norms (none when it was skipped) and its data wait."""
        if res.skipped:
            self.meter.add({}, 0, res.data_time)
            return
        values: dict[str, Any] = dict(res.losses)
        values.update({f"grad_norm_{k}": v for k, v in res.grad_norms.items()})
        self.meter.add(values, images, res.data_time)

    def due(self, step: int) -> bool:
        return due(step, self.every, self.last_step)

    def report(self, step: int, phase: str, lrs: dict[str, float], skipped_total: int) -> None:
        means = self.meter.means()
        rates = self.meter.rates(self.last_step - step)
        self.meter.reset()
        values = {
            **means,
            "phase": phase,
            "images_per_s": rates["images_per_s"],
            "data_wait_share": rates["data_wait_share"],
            "peak_mem_mb": peak_memory_mb(self.device),
            "skipped_total": skipped_total,
            **{f"lr_{k}": v for k, v in lrs.items()},
        }
        self.log.record("train", step, values)
        self.log.scalars("train", step, {k: v for k, v in values.items() if k != "phase"})
        losses = " ".join(
            f"{k.removeprefix('loss_')} {v:.4g}" for k, v in means.items() if k.startswith("loss")
        )
        self.log.console(
            f"step {step}/{self.last_step} [{phase}] {losses} | {rates['images_per_s']:.1f} img/s"
            f" | data {rates['data_wait_share']:.0%} | eta {format_eta(rates['eta_s'])}"
        )
