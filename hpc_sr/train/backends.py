"""Training back-ends: the small interface the trainer uses, and its DDP implementation.

The trainer sees "named models with their optimisers" (``"g"`` and, in the GAN phase, ``"d"``) and calls:

    with backend.accumulate("g", last_micro): loss = ...; backend.backward("g", loss, last_micro)
    backend.step("g")          # unscale, clip, optimiser step, scaler update; returns the grad norm
    backend.zero_grad("g")

``model(name)`` is the wrapped module to call when gradients must be synchronised, ``module(name)`` the raw
module (for the frozen D inside the G step, for EMA and export). A DeepSpeed back-end implements the same
interface (hpc_sr/train/backend_deepspeed.py) so the loop never changes.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

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

    @abstractmethod
    def step(self, name: str) -> float:
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


class DDPBackend(Backend):
    """torch DistributedDataParallel (or plain modules for one process), AMP with one GradScaler per model."""

    name = "ddp"

    def __init__(self, cfg: Config, device: torch.device, world_size: int) -> None:
        super().__init__(cfg, device, world_size)
        self._names: list[str] = []
        self._raw: dict[str, nn.Module] = {}
        self._wrapped: dict[str, nn.Module] = {}
        self._opt: dict[str, torch.optim.Optimizer] = {}
        self._scaler: dict[str, torch.amp.GradScaler] = {}

    def add(self, name: str, module: nn.Module, lr: float) -> None:
        t = self.cfg.train
        module.to(self.device)
        if t.channels_last:
            module.to(memory_format=torch.channels_last)
        self._raw[name] = module
        wrapped: nn.Module = module
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DDP(module, device_ids=ids, find_unused_parameters=self.cfg.dist.find_unused_parameters)
        if t.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        self._wrapped[name] = wrapped
        self._opt[name] = make_optimizer(module.parameters(), lr, t.betas, t.weight_decay)
        self._scaler[name] = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self._names.append(name)

    def model(self, name: str) -> nn.Module:
        return self._wrapped[name]

    def module(self, name: str) -> nn.Module:
        return self._raw[name]

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        return self._opt[name]

    @contextlib.contextmanager
    def accumulate(self, name: str, last_micro: bool) -> Iterator[None]:
        wrapped = self._wrapped[name]
        ddp = getattr(wrapped, "_orig_mod", wrapped)
        if isinstance(ddp, DDP) and not last_micro:
            with ddp.no_sync():
                yield
        else:
            yield

    def backward(self, name: str, loss: torch.Tensor, last_micro: bool) -> None:
        self._scaler[name].scale(loss / self.grad_accum).backward()

    def step(self, name: str) -> float:
        opt, scaler = self._opt[name], self._scaler[name]
        scaler.unscale_(opt)
        params = [p for p in self._raw[name].parameters() if p.grad is not None]
        clip = self.cfg.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        scaler.step(opt)
        scaler.update()
        return float(norm)

    def zero_grad(self, name: str) -> None:
        self._opt[name].zero_grad(set_to_none=True)

    def set_lr(self, name: str, lr: float) -> None:
        for group in self._opt[name].param_groups:
            group["lr"] = lr

    def save(self, directory: Path) -> dict[str, Any]:
        return {
            name: {
                "model": self._raw[name].state_dict(),
                "optimizer": self._opt[name].state_dict(),
                "scaler": self._scaler[name].state_dict(),
            }
            for name in self._names
        }

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        for name in self._names:
            if name not in state:
                continue
            self._raw[name].load_state_dict(state[name]["model"])
            self._opt[name].load_state_dict(state[name]["optimizer"])
            if state[name].get("scaler"):
                self._scaler[name].load_state_dict(state[name]["scaler"])


def make_backend(cfg: Config, device: torch.device, world_size: int) -> Backend:
    """The back-end named by ``dist.backend``."""
    if cfg.dist.backend == "ddp":
        return DDPBackend(cfg, device, world_size)
    if cfg.dist.backend == "deepspeed":
        from hpc_sr.train.backend_deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(cfg, device, world_size)
    raise ValueError(f"dist.backend: unknown back-end {cfg.dist.backend!r}")
