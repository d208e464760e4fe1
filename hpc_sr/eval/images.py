"""Shape checks and per-image broadcasting shared by the image metrics (batches (N, 1, H, W))."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TINY", "check_images", "per_image"]

TINY = 1e-30  # floor of powers (and of values whose log is taken)


def check_images(name: str, x: Tensor) -> None:
    """A ValueError naming ``name`` unless ``x`` is a batch of one-channel images (N, 1, H, W)."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected (N, 1, H, W) images, got shape {tuple(x.shape)}")


def per_image(value: float | Tensor, n: int, like: Tensor) -> Tensor:
    """A scalar or (N,) value as float64 (N, 1, 1, 1) on ``like``'s device."""
    t = torch.as_tensor(value, dtype=torch.float64, device=like.device).flatten()
    if t.numel() not in (1, n):
        raise ValueError(f"expected a scalar or {n} per-image values, got {t.numel()}")
    return t.expand(n).reshape(n, 1, 1, 1)
