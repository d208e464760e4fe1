"""What a config names, validated and built: generator, discriminator, loss terms, data source.

``check_config(cfg)`` resolves every registered name and option once, before anything is written, so a typo
in ``model.g.options`` or ``train.losses`` stops a run (or a SLURM submission) at once with a ConfigError.
"""

from __future__ import annotations

from torch import nn

from hpc_sr.config import Config, ConfigError, ModelConfig
from hpc_sr.data.streams import check_source
from hpc_sr.models.losses import WeightedTerm, adversarial_kind, build_losses
from hpc_sr.models.registry import (
    discriminator_from_spec,
    discriminator_spec,
    generator_from_spec,
    generator_spec,
)


def check_config(cfg: Config) -> None:
    """Raise ConfigError for an unknown arch, option, loss term or data source (naming the key)."""
    generator_spec(cfg.model.g)
    if cfg.train.steps > cfg.train.pretrain_steps:
        discriminator_spec(cfg.model.d)
    terms = build_losses(cfg.train.losses)
    if not terms:
        raise ConfigError("train.losses: the list is empty; give at least one term (e.g. {term: pixel})")
    if not any(not t.term.needs_discriminator for t in terms):
        raise ConfigError(
            "train.losses: every term needs the discriminator; add a pixel term for pretraining"
        )
    check_source(cfg.data)


def build_generator(model: ModelConfig, scale: int) -> nn.Module:
    return generator_from_spec(generator_spec(model.g), scale)


def build_discriminator(model: ModelConfig) -> nn.Module:
    return discriminator_from_spec(discriminator_spec(model.d))


def build_loss_terms(cfg: Config) -> tuple[list[WeightedTerm], str]:
    """The weighted G terms and the adversarial kind D trains with."""
    terms = build_losses(cfg.train.losses)
    return terms, adversarial_kind(terms)
