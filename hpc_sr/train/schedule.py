"""Learning-rate schedules as pure functions of the step (nothing to checkpoint but the step itself)."""

from __future__ import annotations

import math

from hpc_sr.config import TrainConfig


def lr_at(
    step: int, base_lr: float, total: int, warmup: int = 0, kind: str = "cosine", min_ratio: float = 0.01
) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a phase ``total`` steps long.

    Linear warm-up over ``warmup`` steps, then ``constant``, ``cosine`` decay to ``min_ratio * base_lr``, or
    ``step`` (halved at 50 % and 75 % of the phase).
    """
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    if kind == "step":
        return base_lr * (0.5 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    raise ValueError(f"train.schedule: unknown schedule {kind!r} (constant, cosine, step)")


def phase_lrs(train: TrainConfig, step: int, gan: bool) -> dict[str, float]:
    """Learning rates of G (and D when the run has a GAN phase) at optimiser step ``step``: each phase
    (pretraining, GAN) runs its own schedule over its own length."""
    if step < train.pretrain_steps:
        at, total = step, train.pretrain_steps
    else:
        at, total = step - train.pretrain_steps, train.steps - train.pretrain_steps
    lrs = {"g": lr_at(at, train.lr_g, total, train.warmup_steps, train.schedule, train.min_lr_ratio)}
    if gan:
        lrs["d"] = lr_at(at, train.lr_d, total, train.warmup_steps, train.schedule, train.min_lr_ratio)
    return lrs
