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
    samples = samples_per_input(cfg)
    if samples < 2 and any(t.name == "crps" for t in terms):
        raise ConfigError(
            f"train.losses: the crps term needs >= 2 samples per input, got "
            f"train.samples_per_input={samples} (model.g.noise_channels={cfg.model.g.noise_channels}; a "
            "stochastic generator needs noise_channels > 0)"
        )
    check_source(cfg.data)


def samples_per_input(cfg: Config) -> int:
    """Samples drawn per LR input in a training step: ``train.samples_per_input``, or when 0 (auto) 2 for a
    stochastic generator (``model.g.noise_channels > 0``) and 1 otherwise. ConfigError naming the key."""
    n, noise = cfg.train.samples_per_input, cfg.model.g.noise_channels
    if n < 0:
        raise ConfigError(f"train.samples_per_input: expected an integer >= 0 (0 = auto), got {n}")
    if n == 0:
        return (4 if cfg.model.g.noise_centred else 2) if noise > 0 else 1
    if n > 1 and noise <= 0:
        raise ConfigError(
            f"train.samples_per_input={n}: a deterministic generator (model.g.noise_channels={noise}) gives "
            "the same output for every sample; use 1 (or 0 = auto), or set model.g.noise_channels > 0"
        )
    if cfg.model.g.noise_centred and (n % 2 or n < 4):
        raise ConfigError(
            f"train.samples_per_input={n}: a centred generator (model.g.noise_centred) trains on antithetic "
            "pairs (z, -z), two or more per input for the crps term; use an even number >= 4 (0 = auto: 4)"
        )
    return n


def build_generator(model: ModelConfig, scale: int) -> nn.Module:
    return generator_from_spec(generator_spec(model.g), scale)


def build_discriminator(model: ModelConfig) -> nn.Module:
    return discriminator_from_spec(discriminator_spec(model.d))


def build_loss_terms(cfg: Config) -> tuple[list[WeightedTerm], str]:
    """The weighted G terms and the adversarial kind D trains with."""
    terms = build_losses(cfg.train.losses)
    return terms, adversarial_kind(terms)
