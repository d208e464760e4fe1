"""Losses for SRResNet / SRGAN training.

Label convention everywhere: **real = 1, fake = 0** (the discriminator is trained to call HR images real);
the generator's adversarial loss rewards fakes that the discriminator calls real. Logits are raw (no
sigmoid): BCE goes through ``binary_cross_entropy_with_logits``.

Scales follow each reference: ``bce`` D loss is SRGAN's sum of the real and fake terms; ``lsgan`` uses the
LSGAN paper's 1/2 factors; ``ragan`` (relativistic average, ESRGAN) averages its two terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_KINDS = ("l1", "mse")
ADV_KINDS = ("bce", "lsgan", "ragan")


def _check(kind: str, valid: tuple[str, ...], what: str) -> None:
    if kind not in valid:
        raise ValueError(f"unknown {what} kind {kind!r}; valid kinds: {', '.join(valid)}")


def pixel_loss(sr: Tensor, hr: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 or MSE between ``sr`` and ``hr``."""
    _check(kind, PIXEL_KINDS, "pixel loss")
    return F.l1_loss(sr, hr) if kind == "l1" else F.mse_loss(sr, hr)


def _bce(logits: Tensor, label: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str) -> Tensor:
    """Loss of D: low when real logits are high and fake logits low (pass logits of detached fakes)."""
    _check(kind, ADV_KINDS, "adversarial loss")
    if kind == "bce":
        return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (_bce(real_rel, 1.0) + _bce(fake_rel, 0.0))


def generator_adversarial_loss(real_logits: Tensor | None, fake_logits: Tensor, kind: str) -> Tensor:
    """Loss of G: low when D calls the fakes real; ``real_logits`` is used (and required) by ragan only."""
    _check(kind, ADV_KINDS, "adversarial loss")
    if kind == "bce":
        return _bce(fake_logits, 1.0)
    if kind == "lsgan":
        return 0.5 * (fake_logits - 1.0).pow(2).mean()
    if real_logits is None:
        raise ValueError("adversarial loss kind 'ragan' needs real_logits (D's logits on the HR batch)")
    real_logits = real_logits.detach()
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (_bce(real_rel, 0.0) + _bce(fake_rel, 1.0))


def feature_matching_loss(real_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
    """Mean over layers of the L1 distance between D's activations on fakes and (detached) on reals."""
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(
            f"feature_matching_loss: got {len(real_feats)} real and {len(fake_feats)} fake feature maps; "
            "need the same non-zero number"
        )
    terms = [F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats)]
    return torch.stack(terms).mean()


def flux_loss(sr: Tensor, hr: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over images of |sum(sr) - sum(hr)| / |sum(hr)| (denominator floored at ``eps``)."""
    sum_sr = sr.flatten(1).sum(1)
    sum_hr = hr.flatten(1).sum(1)
    return ((sum_sr - sum_hr).abs() / sum_hr.abs().clamp_min(eps)).mean()


def ssim_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """1 - SSIM (gaussian window 11, sigma 1.5, data_range 1): rewards structure where pixel losses blur."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    ssim = structural_similarity_index_measure(
        sr, hr, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0
    )
    return 1.0 - ssim
