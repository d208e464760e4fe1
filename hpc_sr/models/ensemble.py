"""Geometric self-ensemble: the model averaged over the 8 flips and rotations of its input."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def self_ensemble(model: nn.Module, lr: Tensor) -> Tensor:
    """Average of ``model`` over the 8 dihedral transforms of ``lr``, each output transformed back (x8)."""
    outs = []
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(lr, k, dims=(-2, -1))
            x = torch.flip(x, dims=(-1,)) if flip else x
            y = model(x)
            y = torch.flip(y, dims=(-1,)) if flip else y
            outs.append(torch.rot90(y, -k, dims=(-2, -1)))
    return torch.stack(outs).mean(0)
