"""The few collectives the toolkit issues, each a no-op without a process group."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def barrier() -> None:
    """All ranks wait for each other (on NCCL on this rank's current GPU, never a guessed one)."""
    if dist.is_initialized():
        backend = str(dist.get_backend())
        device = torch.cuda.current_device() if backend == "nccl" else None
        dist.barrier(**barrier_options(backend, device))


def barrier_options(backend: str, device_index: int | None) -> dict[str, Any]:
    """``dist.barrier`` arguments: NCCL gets ``device_ids=[this rank's GPU]`` (without it, NCCL guesses the
    device from the rank and warns, or hangs when that guess is another rank's GPU)."""
    if backend == "nccl" and device_index is not None:
        return {"device_ids": [device_index]}
    return {}


def all_reduce_(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce when distributed; returns the tensor."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_(t, dist.ReduceOp.MAX).item() > 0)


def max_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (one small all-reduce for several flags at once)."""
    return all_reduce_(values, dist.ReduceOp.MAX)


def broadcast_object(obj: object, src: int = 0) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
