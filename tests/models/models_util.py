"""Helpers of the model tests."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from torch import Tensor, nn


def assert_unit_spectral_norm(d: nn.Module, layers: Iterable[nn.Module], x: Tensor, iterations: int) -> None:
    """Run ``iterations`` training passes of ``x`` through ``d`` (the power iterations converge), then check
    that every layer's weight has spectral norm 1 (to 0.05)."""
    d.train()
    for _ in range(iterations):
        d(x)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05), f"{m}: spectral norm {float(sigma)}, expected 1 +- 0.05"
