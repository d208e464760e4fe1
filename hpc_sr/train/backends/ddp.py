"""DDP back-end: torch DistributedDataParallel (plain modules for one process), AMP, one GradScaler per model.

DDP options (:func:`ddp_options`): buffers are broadcast from rank 0 before every forward only when the module
keeps running statistics of its inputs (BatchNorm-style). Otherwise they are broadcast once, when the model is
wrapped (DDP itself then syncs only the parameters): spectral-norm vectors start from rank 0's random draw and
then evolve identically on every rank (the power iteration depends on the weights alone), constant index
tables (SwinIR) never change; a broadcast before every forward would be one more collective per forward, i.e.
one more point where every rank waits for the slowest. Everything else is torch's default (measured on CPU:
bucket size, gradient_as_bucket_view and static_graph made no difference within noise; docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from hpc_sr.config import Config, DistConfig
from hpc_sr.train.backends.base import Backend, make_optimizer


def has_running_stats(module: nn.Module) -> bool:
    """True when a submodule keeps running statistics of the data it sees (BatchNorm / InstanceNorm with
    ``track_running_stats``): the only buffers that can differ between ranks."""
    return any(
        getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None
        for m in module.modules()
    )


def broadcast_buffers_once(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers to every rank (a no-op without a process group)."""
    if not dist.is_initialized():
        return
    for buf in module.buffers():
        if buf.is_contiguous():
            dist.broadcast(buf, src=src)
        else:  # collectives need dense tensors
            dense = buf.contiguous()
            dist.broadcast(dense, src=src)
            buf.copy_(dense)


def ddp_options(dist_cfg: DistConfig, module: nn.Module) -> dict[str, Any]:
    """Keyword arguments of DistributedDataParallel for ``module`` (see the module docstring)."""
    return {
        "find_unused_parameters": dist_cfg.find_unused_parameters,
        "broadcast_buffers": has_running_stats(module),
    }


class DDPBackend(Backend):
    """torch DistributedDataParallel (or plain modules for one process), AMP with one GradScaler per model.

    ``ddp_overrides`` replaces entries of :func:`ddp_options` (benchmarks compare DDP settings with it).
    """

    name = "ddp"

    def __init__(
        self, cfg: Config, device: torch.device, world_size: int, ddp_overrides: dict[str, Any] | None = None
    ) -> None:
        super().__init__(cfg, device, world_size)
        self.ddp_overrides = dict(ddp_overrides or {})
        self._names: list[str] = []
        self._raw: dict[str, nn.Module] = {}
        self._wrapped: dict[str, nn.Module] = {}
        self._opt: dict[str, torch.optim.Optimizer] = {}
        self._scaler: dict[str, torch.amp.GradScaler] = {}
        self._norms: dict[str, torch.Tensor] = {}  # grad_norm() results awaiting their step()

    def add(self, name: str, module: nn.Module, lr: float) -> None:
        t = self.cfg.train
        module.to(self.device)
        if t.channels_last:
            module.to(memory_format=torch.channels_last)
        self._raw[name] = module
        wrapped: nn.Module = module
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            opts = {**ddp_options(self.cfg.dist, module), **self.ddp_overrides}
            if not opts.get("broadcast_buffers", True):
                broadcast_buffers_once(module)
            wrapped = DDP(module, device_ids=ids, **opts)
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

    def _with_grads(self, name: str) -> list[nn.Parameter]:
        return [p for p in self._raw[name].parameters() if p.grad is not None]

    def grad_norm(self, name: str) -> torch.Tensor | None:
        """The pre-clip global norm (no loss scale to undo outside fp16), kept for :meth:`step`, no host read;
        None under fp16, whose GradScaler skips non-finite updates itself (and must see them to lower its
        scale)."""
        if self._scaler[name].is_enabled():
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in self._with_grads(name)])
        self._norms[name] = norm
        return norm.detach()

    def step(self, name: str) -> torch.Tensor:
        """Unscale, clip, step; the pre-clip global norm. After :meth:`grad_norm` the caller has agreed that
        the norm is finite (hpc_sr.train.step folds it into the step's one collective): no host read here.
        Called directly, non-finite gradients (possible with a finite loss, e.g. sqrt at 0) skip the update
        instead of writing NaN weights: fp16's GradScaler does that itself; otherwise one host read of the
        norm decides (the gradients are identical on every rank after DDP's all-reduce, so every rank
        decides alike without a collective)."""
        opt, scaler = self._opt[name], self._scaler[name]
        params = self._with_grads(name)
        clip = self.cfg.train.grad_clip
        norm = self._norms.pop(name, None)  # agreed finite by the step
        if norm is None:
            scaler.unscale_(opt)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if not scaler.is_enabled() and not bool(torch.isfinite(norm)):
                scaler.update()
                return norm.detach()
        if clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        scaler.step(opt)
        scaler.update()
        return norm.detach()  # a device tensor: read at log steps

    def zero_grad(self, name: str) -> None:
        self._norms.pop(name, None)
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
