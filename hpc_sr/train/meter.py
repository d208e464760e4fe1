"""Throughput bookkeeping between log lines: images/s, data-wait share, ETA, mean losses (read from the device
only here, at log steps)."""

from __future__ import annotations

import math
import time

import torch


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class StepMeter:
    """Accumulates per-step values (device tensors or floats) and timing over one logging window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.images = 0
        self.steps = 0
        self.data_time = 0.0
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor | float], images: int, data_time: float) -> None:
        """One optimiser step; tensors are summed on their device (no host sync)."""
        self.steps += 1
        self.images += images
        self.data_time += data_time
        for k, v in values.items():
            v = v.detach() if isinstance(v, torch.Tensor) else float(v)
            self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._counts[k] = self._counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        """Window means as floats (the one host read of the window)."""
        return {k: float(v) / self._counts[k] for k, v in self._sums.items()}

    def rates(self, steps_left: int) -> dict[str, float]:
        """images/s, data-wait share and ETA (s) of the window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        steps_per_s = self.steps / elapsed
        return {
            "images_per_s": self.images / elapsed,
            "data_wait_share": self.data_time / elapsed,
            "eta_s": steps_left / steps_per_s if steps_per_s > 0 else float("nan"),
        }
