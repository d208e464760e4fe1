"""Loss term ``ssim``: 1 - SSIM, which rewards structure where pixel losses blur."""

from __future__ import annotations

from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, register_loss
from hpc_sr.registry import NoOptions


def ssim_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """1 - SSIM (gaussian window 11, sigma 1.5, data_range 1): rewards structure where pixel losses blur."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    ssim = structural_similarity_index_measure(
        sr, hr, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0
    )
    return 1.0 - ssim


@register_loss("ssim", NoOptions)
class SSIMLoss(LossTerm):
    """1 - SSIM (gaussian 11, sigma 1.5)."""

    def __call__(self, x: LossInputs) -> Tensor:
        return ssim_loss(x.sr, x.hr)
