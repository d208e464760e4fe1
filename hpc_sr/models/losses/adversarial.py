"""Loss term ``adversarial`` (GAN phase only) and the discriminator's loss of the same kind.

Label convention everywhere: **real = 1, fake = 0** (the discriminator is trained to call HR images real);
the generator's adversarial loss rewards fakes that the discriminator calls real. Logits are raw (no
sigmoid): BCE goes through ``binary_cross_entropy_with_logits``.

Scales follow each reference: ``bce`` D loss is SRGAN's sum of the real and fake terms; ``lsgan`` uses the
LSGAN paper's 1/2 factors; ``ragan`` (relativistic average, ESRGAN) averages its two terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, WeightedTerm, check_kind, register_loss

ADV_KINDS = ("bce", "lsgan", "ragan")


def _bce(logits: Tensor, label: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str) -> Tensor:
    """Loss of D: low when real logits are high and fake logits low (pass logits of detached fakes)."""
    check_kind(kind, ADV_KINDS, "adversarial loss")
    if kind == "bce":
        return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (_bce(real_rel, 1.0) + _bce(fake_rel, 0.0))


def generator_adversarial_loss(real_logits: Tensor | None, fake_logits: Tensor, kind: str) -> Tensor:
    """Loss of G: low when D calls the fakes real; ``real_logits`` is used (and required) by ragan only."""
    check_kind(kind, ADV_KINDS, "adversarial loss")
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


@dataclass
class AdversarialOptions:
    kind: Literal["bce", "lsgan", "ragan"] = "ragan"


@register_loss("adversarial", AdversarialOptions)
class AdversarialLoss(LossTerm):
    """G's adversarial loss (the discriminator trains with the same kind)."""

    needs_discriminator = True

    def __call__(self, x: LossInputs) -> Tensor:
        assert x.fake_logits is not None
        real = x.real_logits.float() if x.real_logits is not None else None
        return generator_adversarial_loss(real, x.fake_logits.float(), self.opts.kind)


def adversarial_kind(terms: list[WeightedTerm]) -> str:
    """The adversarial kind the discriminator trains with (the adversarial term's; ragan without one)."""
    for t in terms:
        if isinstance(t.term, AdversarialLoss):
            return t.term.opts.kind
    return "ragan"
