"""Loss term ``flux``: the relative total-flux error of SR vs HR."""

from __future__ import annotations

from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, register_loss
from hpc_sr.registry import NoOptions


def flux_loss(sr: Tensor, hr: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over images of |sum(sr) - sum(hr)| / |sum(hr)| (denominator floored at ``eps``)."""
    sum_sr = sr.flatten(1).sum(1)
    sum_hr = hr.flatten(1).sum(1)
    return ((sum_sr - sum_hr).abs() / sum_hr.abs().clamp_min(eps)).mean()


@register_loss("flux", NoOptions)
class FluxLoss(LossTerm):
    """Relative total-flux error of SR vs HR."""

    def __call__(self, x: LossInputs) -> Tensor:
        return flux_loss(x.sr, x.hr)
