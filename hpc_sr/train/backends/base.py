"""The small back-end interface the trainer uses (DDP and DeepSpeed implement it).

The trainer sees "named models with their optimisers" (``"g"`` and, in the GAN phase, ``"d"``) and calls:

    with backend.accumulate("g", last_micro): loss = ...; backend.backward("g", loss, last_micro)
    backend.step("g")          # unscale, clip, optimiser step, scaler update; returns the grad norm
    backend.zero_grad("g")

``model(name)`` is the wrapped module to call when gradients must be synchronised, ``module(name)`` the raw
module (for the frozen D inside the G step, for EMA and export). A DeepSpeed back-end implements the same
interface (``hpc_sr.train.backends.deepspeed``) so the loop never changes.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpc_sr.config import Config

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(
    params: Any, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW; a plain torch optimiser so that every back-end (DDP, DeepSpeed client optimiser) takes it."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


class Backend(ABC):
    """What the trainer needs from a distributed back-end."""

    name: str = "base"
    # True when non-finite gradients must never reach the back-end (the step agrees on each micro-batch's loss
    # before its backward); False when zeroing the gradients of a skipped step is enough (DDP).
    finite_check_before_backward: bool = False

    def __init__(self, cfg: Config, device: torch.device, world_size: int) -> None:
        self.cfg = cfg
        self.device = device
        self.world_size = world_size
        self.grad_accum = cfg.train.grad_accum
        self.dtype = PRECISIONS[cfg.train.precision]

    # -- set-up ---------------------------------------------------------------------------------------------
    @abstractmethod
    def add(self, name: str, module: nn.Module, lr: float) -> None:
        """Register a model; builds its optimiser and wraps it."""

    @abstractmethod
    def model(self, name: str) -> nn.Module:
        """The wrapped model: call it when the backward pass must synchronise gradients."""

    @abstractmethod
    def module(self, name: str) -> nn.Module:
        """The raw module (no hooks): frozen D in the G step, EMA, export."""

    def names(self) -> list[str]:
        return list(self._names)

    # -- one step -------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.train.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @abstractmethod
    def accumulate(self, name: str, last_micro: bool) -> contextlib.AbstractContextManager[Any]:
        """Context around forward + backward of one micro-batch (gradient sync only on the last)."""

    @abstractmethod
    def backward(self, name: str, loss: torch.Tensor, last_micro: bool) -> None:
        """Backward of one micro-batch loss (the back-end divides by the accumulation steps)."""

    def grad_norm(self, name: str) -> torch.Tensor | None:
        """The global gradient norm before :meth:`step`, as a device tensor, where the back-end can give it
        without a host read (the step folds its finiteness into the step's one agreement and :meth:`step`
        then trusts it); None where the back-end decides on non-finite gradients itself (fp16 loss scaling,
        DeepSpeed)."""
        return None

    @abstractmethod
    def step(self, name: str) -> torch.Tensor | float:
        """Clip, step the optimiser, update the loss scale; returns the global grad norm (nan if unknown)."""

    @abstractmethod
    def zero_grad(self, name: str) -> None: ...

    @abstractmethod
    def set_lr(self, name: str, lr: float) -> None: ...

    # -- state ----------------------------------------------------------------------------------------------
    @abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Collective: write what the back-end keeps on disk into ``directory``; return the small state that
        rank 0 stores in the trainer state (model/optimiser state dicts for DDP)."""

    @abstractmethod
    def load(self, directory: Path, state: dict[str, Any]) -> None:
        """Inverse of :meth:`save`."""
