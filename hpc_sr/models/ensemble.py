"""Ensembles: the geometric self-ensemble (x8 flips and rotations of the input) and the mean of several
generators (:class:`ModelEnsemble`)."""

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


class ModelEnsemble(nn.Module):
    """The mean output of several generators of one scale (e.g. independently seeded runs of a recipe).

    Each member sees the same LR; the mean of LR-consistent members is LR-consistent (block means are
    linear). Deterministic members only: a stochastic generator's noise input has no shared meaning.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"ModelEnsemble needs at least 2 members, got {len(members)}")
        noisy = [i for i, m in enumerate(members) if int(getattr(m, "noise_channels", 0)) > 0]
        if noisy:
            raise ValueError(f"ModelEnsemble: members {noisy} are stochastic generators (noise_channels "
                             "> 0); ensembles average deterministic generators only")
        told = {bool(getattr(m, "lr_blur_input", False)) for m in members}
        if len(told) > 1:
            raise ValueError("ModelEnsemble: some members take the LR-blur input (lr_blur_input) and some do "
                             "not; they cannot share one LR")
        self.lr_blur_input = told.pop()
        self.members = nn.ModuleList(members)

    def forward(self, lr: Tensor) -> Tensor:
        out = self.members[0](lr)
        for m in self.members[1:]:
            out = out + m(lr)
        return out / len(self.members)
