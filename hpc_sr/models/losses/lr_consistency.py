"""Loss term ``lr_consistency``: mean |avg_pool(SR, s) - LR|, the SR image's disagreement with its own input.

The worked example of a loss term in one file (docs/ARCHITECTURE.md). With ``model.g.lr_consistent`` the
projection makes it zero by construction; as a soft term it pulls any generator towards flux conservation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, register_loss


@dataclass
class LRConsistencyOptions:
    kind: str = "l1"  # l1 | mse

    def __post_init__(self) -> None:
        if self.kind not in ("l1", "mse"):
            raise ValueError(f"kind={self.kind!r} is not one of ['l1', 'mse']")


@register_loss("lr_consistency", LRConsistencyOptions)
class LRConsistencyLoss(LossTerm):
    def __call__(self, x: LossInputs) -> Tensor:
        scale = x.sr.shape[-1] // x.lr.shape[-1]
        pooled = F.avg_pool2d(x.sr, scale)
        lr = x.lr.float()
        return F.l1_loss(pooled, lr) if self.opts.kind == "l1" else F.mse_loss(pooled, lr)
