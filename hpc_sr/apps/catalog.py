"""`hpc-sr config archs`: what the registries hold, with each entry's options and defaults."""

from __future__ import annotations

from hpc_sr.data.streams import SOURCES
from hpc_sr.models.losses import LOSSES
from hpc_sr.models.registry import DISCRIMINATORS, GENERATORS


def format_catalog() -> str:
    """One line per registered generator, discriminator, loss term and training data source."""
    sections = [
        ("generators (model.g.arch, model.g.options):", GENERATORS),
        ("discriminators (model.d.arch, model.d.options):", DISCRIMINATORS),
        ("loss terms (train.losses: - {term: NAME, weight: W, ...options}):", LOSSES),
        ("data sources (data.source, data.options):", SOURCES),
    ]
    return "\n".join(line for title, registry in sections for line in [title, *registry.listing()])
