"""Loss term ``feature_matching`` (GAN phase only): L1 between D's activations on SR and on HR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, register_loss
from hpc_sr.registry import NoOptions


def feature_matching_loss(real_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
    """Mean over layers of the L1 distance between D's activations on fakes and (detached) on reals."""
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(
            f"feature_matching_loss: got {len(real_feats)} real and {len(fake_feats)} fake feature maps; "
            "need the same non-zero number"
        )
    terms = [F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats)]
    return torch.stack(terms).mean()


@register_loss("feature_matching", NoOptions)
class FeatureMatchingLoss(LossTerm):
    """L1 between D's activations on SR and on HR."""

    needs_discriminator = True

    def __call__(self, x: LossInputs) -> Tensor:
        return feature_matching_loss([f.float() for f in x.real_feats], [f.float() for f in x.fake_feats])
