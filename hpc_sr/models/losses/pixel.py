"""Loss term ``pixel``: mean L1 or MSE to HR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, check_kind, register_loss

PIXEL_KINDS = ("l1", "mse")


def pixel_loss(sr: Tensor, hr: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 or MSE between ``sr`` and ``hr``."""
    check_kind(kind, PIXEL_KINDS, "pixel loss")
    return F.l1_loss(sr, hr) if kind == "l1" else F.mse_loss(sr, hr)


@dataclass
class PixelOptions:
    kind: Literal["l1", "mse"] = "l1"
    of: Literal["sample", "mean"] = "sample"  # mean: of a stochastic generator's samples per input


@register_loss("pixel", PixelOptions)
class PixelLoss(LossTerm):
    """Mean L1 or MSE to HR (MSE is the conditional mean: the PSNR-optimal choice).

    ``of: mean`` scores the mean of each input's samples (sample-major batch) instead of every sample: with
    antithetic pairs and a centred generator that is its centre, so the term trains the centre and leaves
    the spread to the crps term (on every sample, MSE adds the spread's square and shrinks it).
    """

    def __call__(self, x: LossInputs) -> Tensor:
        if self.opts.of == "mean" and x.samples > 1:
            sr = x.sr.unflatten(0, (x.samples, -1)).mean(0)
            return pixel_loss(sr, x.hr.unflatten(0, (x.samples, -1))[0], self.opts.kind)
        return pixel_loss(x.sr, x.hr, self.opts.kind)
