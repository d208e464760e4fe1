"""What a config names, validated once and built: generator, discriminator, loss terms, data source.

    plan = check_config(cfg)          # every registered name and option resolved, before anything is written
    g = build_generator(plan.generator, cfg.data.scale)

A typo in ``model.g.options``, ``train.losses`` or ``data.options`` stops a run (or a SLURM submission) at
once with a ConfigError naming the key. Each builder receives only the config section it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpc_sr.config import Config, ConfigError, GeneratorConfig, ModelConfig, TrainConfig
from hpc_sr.data.streams import check_source
from hpc_sr.errors import CheckpointError
from hpc_sr.models.artifacts import load_generator_payload, resolved_model
from hpc_sr.models.losses import WeightedTerm, adversarial_kind, build_losses
from hpc_sr.models.registry import (
    discriminator_from_spec,
    discriminator_spec,
    generator_from_spec,
    generator_spec,
)
from hpc_sr.train.checkpoint import check_model_config


@dataclass(frozen=True)
class RunPlan:
    """A checked config's resolved parts: model specs, loss terms, samples per input."""

    generator: dict[str, Any]
    discriminator: dict[str, Any] | None  # None when the run has no GAN phase
    terms: list[WeightedTerm]
    adversarial_kind: str
    samples_per_input: int


def check_config(cfg: Config) -> RunPlan:
    """Resolve every registered name and option of ``cfg`` once; ConfigError naming the key otherwise."""
    g = generator_spec(cfg.model.g)
    gan = cfg.train.steps > cfg.train.pretrain_steps
    d = discriminator_spec(cfg.model.d) if gan else None
    terms, kind = build_loss_terms(cfg.train.losses)
    if not terms:
        raise ConfigError("train.losses: the list is empty; give at least one term (e.g. {term: pixel})")
    if not any(not t.term.needs_discriminator for t in terms):
        raise ConfigError(
            "train.losses: every term needs the discriminator; add a pixel term for pretraining"
        )
    samples = samples_per_input(cfg.train, cfg.model.g)
    if samples < 2 and any(t.name == "crps" for t in terms):
        raise ConfigError(
            f"train.losses: the crps term needs >= 2 samples per input, got "
            f"train.samples_per_input={samples} (model.g.noise_channels={cfg.model.g.noise_channels}; a "
            "stochastic generator needs noise_channels > 0)"
        )
    check_source(cfg.data)
    check_early_stop(cfg.train)
    check_lr_blur(cfg)
    check_lr_relation(cfg, [t.name for t in terms])
    return RunPlan(g, d, terms, kind, samples)


def check_lr_blur(cfg: Config) -> None:
    """``model.g.lr_blur_input`` and ``data.lr_blur`` go together: a ConfigError naming both keys when one is
    set without the other (or ``data.lr_blur`` is not '', 'data' or a FWHM >= 0)."""
    from hpc_sr.data.lr_blur import lr_blur_setting

    setting, wanted = lr_blur_setting(cfg.data.lr_blur), cfg.model.g.lr_blur_input
    if wanted and setting is None:
        raise ConfigError(
            "model.g.lr_blur_input=true needs each pair's LR blur: set data.lr_blur=data (the set's own "
            "per-pair values: simulated instruments, lr_blur rows) or data.lr_blur=<FWHM in LR pixels>"
        )
    if not wanted and setting is not None:
        raise ConfigError(
            f"data.lr_blur={cfg.data.lr_blur!r} is an input of a generator told its LR's blur: set "
            "model.g.lr_blur_input=true, or leave data.lr_blur empty"
        )


def check_lr_relation(cfg: Config, term_names: list[str]) -> None:
    """Refuse what assumes LR = the block mean of HR (``model.g.lr_consistent``, the ``lr_consistency`` loss
    term) on data whose LR is not (a two-instrument set, the ``ground_space`` preset): a ConfigError naming
    the key and what the data say (hpc_sr.data.lr_relation). Unknown relations (custom sources) pass. A
    generator told its LR's blur (``model.g.lr_blur_input``) projects only the pairs whose blur is 0, so its
    ``lr_consistent`` holds on any data."""
    lr_consistent = cfg.model.g.lr_consistent and not cfg.model.g.lr_blur_input
    keys = (["model.g.lr_consistent=true"] if lr_consistent else []) + [
        "train.losses: the lr_consistency term" for name in term_names if name == "lr_consistency"
    ]
    if not keys:
        return
    from hpc_sr.data.lr_relation import lr_relation_of

    relation = lr_relation_of(cfg.data)
    if relation is None or relation.is_mean is True:
        return
    raise ConfigError(
        f"{' and '.join(keys)} assume(s) that LR is the {cfg.data.scale}x{cfg.data.scale} mean of HR, but "
        f"the data say otherwise: {relation.describe()}. Remove it for this data set (a two-instrument "
        "set's LR is blurred by its own PSF, misaligned and noisier)"
    )


def check_early_stop(train: TrainConfig) -> None:
    """``train.early_stop_patience`` >= 0 (0 = off), ``train.early_stop_min_delta`` >= 0, and validations to
    count (``train.val_every`` > 0) when early stopping is on; ConfigError naming the key otherwise."""
    if train.early_stop_patience < 0:
        raise ConfigError(
            f"train.early_stop_patience={train.early_stop_patience}: expected 0 (off) or a number of "
            "validations"
        )
    if not train.early_stop_min_delta >= 0:
        raise ConfigError(f"train.early_stop_min_delta={train.early_stop_min_delta}: expected dB >= 0")
    if train.early_stop_patience > 0 and train.val_every <= 0:
        raise ConfigError(
            f"train.early_stop_patience={train.early_stop_patience} counts validations, but "
            f"train.val_every={train.val_every} validates only at the last step; set train.val_every > 0"
        )


def samples_per_input(train: TrainConfig, g: GeneratorConfig) -> int:
    """Samples drawn per LR input in a training step: ``train.samples_per_input``, or when 0 (auto) 2 for a
    stochastic generator (``model.g.noise_channels > 0``, 4 when centred) and 1 otherwise."""
    n, noise = train.samples_per_input, g.noise_channels
    if n < 0:
        raise ConfigError(f"train.samples_per_input: expected an integer >= 0 (0 = auto), got {n}")
    if n == 0:
        return (4 if g.noise_centred else 2) if noise > 0 else 1
    if n > 1 and noise <= 0:
        raise ConfigError(
            f"train.samples_per_input={n}: a deterministic generator (model.g.noise_channels={noise}) gives "
            "the same output for every sample; use 1 (or 0 = auto), or set model.g.noise_channels > 0"
        )
    if g.noise_centred and (n % 2 or n < 4):
        raise ConfigError(
            f"train.samples_per_input={n}: a centred generator (model.g.noise_centred) trains on antithetic "
            "pairs (z, -z), two or more per input for the crps term; use an even number >= 4 (0 = auto: 4)"
        )
    return n


def build_generator(model: ModelConfig | dict[str, Any], scale: int) -> nn.Module:
    """The generator of a model section (or of a resolved generator spec)."""
    spec = model if isinstance(model, dict) else generator_spec(model.g)
    return generator_from_spec(spec, scale)


def build_discriminator(model: ModelConfig | dict[str, Any]) -> nn.Module:
    """The discriminator of a model section (or of a resolved discriminator spec)."""
    spec = model if isinstance(model, dict) else discriminator_spec(model.d)
    return discriminator_from_spec(spec)


def build_loss_terms(losses: list[dict[str, Any]]) -> tuple[list[WeightedTerm], str]:
    """The weighted G terms of ``train.losses`` and the adversarial kind D trains with."""
    terms = build_losses(losses)
    return terms, adversarial_kind(terms)


def init_generator(generator: nn.Module, source: str, g: GeneratorConfig, scale: int) -> None:
    """Load G's weights (EMA when present) from ``train.init_g``; the generator config must match.

    A deterministic source may start a stochastic generator of the same arch and options (``model.g
    .noise_channels`` K > 0): the first layer's weights for the K noise inputs start at zero, so the new
    generator begins as the source, every sample alike, and training grows the spread.
    """
    payload = load_generator_payload(source, ema=True)
    saved_g = dict(payload.get("generator") or resolved_model(payload["model"])["g"])
    state = payload["state_dict"]
    if int(saved_g.get("noise_channels", 0)) == 0 and g.noise_channels > 0:
        saved_g["noise_channels"] = g.noise_channels
        saved_g["noise_centred"] = g.noise_centred
        state = with_noise_inputs(state, generator.state_dict(), g.noise_channels, Path(source))
    check_model_config(
        {"config": {"model": {"g": saved_g}, "data": {"scale": payload["scale"]}}},
        ModelConfig(g=g),
        scale,
        Path(source),
        generator_only=True,
    )
    generator.load_state_dict(state)


def with_noise_inputs(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], noise: int, source: Path
) -> dict[str, torch.Tensor]:
    """``state`` of a deterministic generator for a stochastic one: every weight whose input-channel dim is
    ``noise`` short of the target's gets zero columns for the noise inputs (the first layer)."""
    out, grown = dict(state), []
    for key, w in state.items():
        t = target.get(key)
        if t is not None and w.ndim >= 2 and t.shape[1] == w.shape[1] + noise and t.shape[2:] == w.shape[2:]:
            pad = torch.zeros((w.shape[0], noise, *w.shape[2:]), dtype=w.dtype)
            out[key] = torch.cat([w, pad], dim=1)
            grown.append(key)
    if len(grown) != 1:
        raise CheckpointError(
            f"{source}: cannot start a stochastic generator from it: expected one first layer to take the "
            f"{noise} noise input(s), found {grown or 'none'}"
        )
    return out
