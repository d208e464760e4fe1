"""`hpc-sr config archs`: what the registries hold, with each entry's options and defaults."""

from __future__ import annotations

import dataclasses

from hpc_sr.data.streams import source_names
from hpc_sr.models.losses import LOSSES, loss_names
from hpc_sr.models.registry import DISCRIMINATORS, GENERATORS, discriminator_names, generator_names


def _options(cls: type) -> str:
    parts = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name}={default!r}")
    return ", ".join(parts) or "(no options)"


def format_catalog() -> str:
    """One line per registered generator, discriminator, loss term and training data source."""
    lines = ["generators (model.g.arch, model.g.options):"]
    lines += [f"  {n:<12} {_options(GENERATORS[n].options)}" for n in generator_names()]
    lines.append("discriminators (model.d.arch, model.d.options):")
    lines += [f"  {n:<12} {_options(DISCRIMINATORS[n].options)}" for n in discriminator_names()]
    lines.append("loss terms (train.losses: - {term: NAME, weight: W, ...options}):")
    lines += [f"  {n:<16} {_options(LOSSES[n][1])}" for n in loss_names()]
    lines.append("data sources (data.source):")
    lines += [f"  {n}" for n in source_names()]
    return "\n".join(lines)
