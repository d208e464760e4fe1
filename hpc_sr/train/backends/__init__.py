"""Training back-ends behind one interface (base.Backend): ``dist.backend: ddp | deepspeed``."""

from __future__ import annotations

import torch

from hpc_sr.config import Config
from hpc_sr.train.backends.base import Backend


def make_backend(cfg: Config, device: torch.device, world_size: int) -> Backend:
    """The back-end named by ``dist.backend`` (DeepSpeed is imported only when asked for)."""
    if cfg.dist.backend == "ddp":
        from hpc_sr.train.backends.ddp import DDPBackend

        return DDPBackend(cfg, device, world_size)
    if cfg.dist.backend == "deepspeed":
        from hpc_sr.train.backends.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(cfg, device, world_size)
    raise ValueError(f"dist.backend: unknown back-end {cfg.dist.backend!r}")
