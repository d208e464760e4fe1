"""Loss terms of the generator, registered by name, one file per term, plus the functional forms they use.

    train:
      losses:
        - {term: pixel, kind: mse, weight: 1.0}
        - {term: flux, weight: 0.1}
        - {term: adversarial, kind: ragan, weight: 5.0e-3}   # GAN phase only

A term is a class registered with ``@register_loss(name, Options)`` (``base.py``) anywhere in
``hpc_sr.models``: one new file per term is enough (``lr_consistency.py`` is the worked example).
``build_losses(cfg.train.losses)`` validates each entry against the term's options dataclass. Terms that need
the discriminator (``needs_discriminator``) count in the GAN phase only. The label convention of the GAN
losses is in ``adversarial.py``.
"""

from hpc_sr.models.losses.adversarial import (
    ADV_KINDS,
    AdversarialLoss,
    AdversarialOptions,
    adversarial_kind,
    discriminator_loss,
    generator_adversarial_loss,
)
from hpc_sr.models.losses.base import (
    LOSSES,
    LossInputs,
    LossTerm,
    WeightedTerm,
    build_losses,
    loss_names,
    register_loss,
)
from hpc_sr.models.losses.crps import CRPSLoss, crps_ensemble
from hpc_sr.models.losses.feature_matching import FeatureMatchingLoss, feature_matching_loss
from hpc_sr.models.losses.flux import FluxLoss, flux_loss
from hpc_sr.models.losses.lr_consistency import LRConsistencyLoss, LRConsistencyOptions
from hpc_sr.models.losses.pixel import PIXEL_KINDS, PixelLoss, PixelOptions, pixel_loss
from hpc_sr.models.losses.ssim import SSIMLoss, ssim_loss

__all__ = [
    "ADV_KINDS",
    "LOSSES",
    "PIXEL_KINDS",
    "AdversarialLoss",
    "AdversarialOptions",
    "CRPSLoss",
    "FeatureMatchingLoss",
    "FluxLoss",
    "LRConsistencyLoss",
    "LRConsistencyOptions",
    "LossInputs",
    "LossTerm",
    "PixelLoss",
    "PixelOptions",
    "SSIMLoss",
    "WeightedTerm",
    "adversarial_kind",
    "build_losses",
    "crps_ensemble",
    "discriminator_loss",
    "feature_matching_loss",
    "flux_loss",
    "generator_adversarial_loss",
    "loss_names",
    "pixel_loss",
    "register_loss",
    "ssim_loss",
]
