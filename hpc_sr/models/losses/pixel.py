"""Loss term ``pixel``: mean L1 or MSE to HR, the mean per-image RMSE (``kind: rmse``) or the mean per-image
PSNR (``kind: psnr``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, check_kind, register_loss

PIXEL_KINDS = ("l1", "mse", "rmse", "psnr")
PSNR_EPS = 1e-10  # MSE floor of kind psnr (a 100 dB patch): keeps log finite on an exact match


def pixel_loss(sr: Tensor, hr: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 or MSE between ``sr`` and ``hr``; ``rmse``: the mean of the images' sqrt(MSE_i); ``psnr``:
    minus the mean per-image PSNR (data range 1), i.e. the mean of 10 log10(MSE_i) over the batch's images."""
    check_kind(kind, PIXEL_KINDS, "pixel loss")
    if kind == "l1":
        return F.l1_loss(sr, hr)
    if kind == "mse":
        return F.mse_loss(sr, hr)
    mse = (sr.float() - hr.float()).square().flatten(1).mean(1)
    if kind == "rmse":
        return (mse + PSNR_EPS).sqrt().mean()
    return 10.0 * torch.log10(mse + PSNR_EPS).mean()


@dataclass
class PixelOptions:
    kind: Literal["l1", "mse", "rmse", "psnr"] = "l1"
    of: Literal["sample", "mean"] = "sample"  # mean: of a stochastic generator's samples per input


@register_loss("pixel", PixelOptions)
class PixelLoss(LossTerm):
    """Mean L1 or MSE to HR (MSE is the conditional mean: the PSNR-optimal choice), or ``psnr``: minus the
    mean per-image PSNR, which weighs each image by 1 / its MSE, so that images that are already easy (an LR
    that is the block mean of HR, beside blurred ground-based ones in a domain-randomised mixture) are not
    traded for the hard ones as pooled MSE does. ``rmse`` (the mean per-image RMSE) lies between the two: it
    weighs each image by 1 / sqrt(its MSE).

    ``of: mean`` scores the mean of each input's samples (sample-major batch) instead of every sample: with
    antithetic pairs and a centred generator that is its centre, so the term trains the centre and leaves
    the spread to the crps term (on every sample, MSE adds the spread's square and shrinks it).
    """

    def __call__(self, x: LossInputs) -> Tensor:
        if self.opts.of == "mean" and x.samples > 1:
            sr = x.sr.unflatten(0, (x.samples, -1)).mean(0)
            return pixel_loss(sr, x.hr.unflatten(0, (x.samples, -1))[0], self.opts.kind)
        return pixel_loss(x.sr, x.hr, self.opts.kind)
