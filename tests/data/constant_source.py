"""A training data source with settings in one file, as a user would add one (test_custom_source.py).

``data.source: constant`` yields micro-batches of a constant image (``data.options.value``, side
``data.options.side`` LR pixels) and counts them; the count is its resumable position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hpc_sr.config import DataConfig
from hpc_sr.data.streams import register_source
from hpc_sr.dist.env import DistEnv


@dataclass
class ConstantOptions:
    value: float = 0.5
    side: int = 4  # LR pixels

    def __post_init__(self) -> None:
        if self.side < 1:
            raise ValueError(f"side={self.side} must be >= 1")


@register_source("constant", ConstantOptions)
class ConstantStream:
    def __init__(
        self,
        data: DataConfig,
        opts: ConstantOptions,
        seed: int,
        env: DistEnv,
        device: torch.device,
        micro_batch: int,
    ) -> None:
        self.lr = torch.full((micro_batch, 1, opts.side, opts.side), opts.value, device=device)
        self.hr = torch.full((micro_batch, 1, opts.side * data.scale, opts.side * data.scale), opts.value)
        self.hr = self.hr.to(device)
        self.position = 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.position += 1
        return self.lr + self.position, self.hr + self.position

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
