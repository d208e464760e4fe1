"""Registries of generators and discriminators (:class:`hpc_sr.registry.Registry`), filled where each class
is defined.

    @register_generator("rcan", RCANOptions)
    class RCAN(SRGenerator): ...

    g = build_generator("rcan", {"groups": 5}, scale=2, common=GeneratorCommon())

Every module of ``hpc_sr.models`` (subpackages too) is imported the first time a registry is read, so adding
an architecture is one new file (no list to edit). Options are the arch's own dataclass: an unknown arch or
option is a :class:`~hpc_sr.config.ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from hpc_sr.config import ConfigError, coerce_value
from hpc_sr.registry import Registry
from hpc_sr.registry import make_options as make_options  # re-exported: options of any registered thing

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class GeneratorCommon:
    """Options every generator takes, whatever its architecture."""

    in_channels: int = 1
    bicubic_skip: bool = True  # output = bicubic(LR) + net(LR); the last layer starts at zero
    lr_consistent: bool = False  # project the output onto images whose s x s means equal the input
    noise_channels: int = 0  # > 0: N(0, 1) noise channels concatenated to LR (a stochastic generator)
    noise_centred: bool = False  # sample = centre + odd part in the noise (layers.SRGenerator.forward)
    lr_blur_input: bool = False  # LR comes with its blur as one more channel (hpc_sr.imaging.with_lr_blur)


GENERATORS: Registry[type] = Registry("generator", package="hpc_sr.models", noun="arch", attr="arch")
DISCRIMINATORS: Registry[type] = Registry("discriminator", package="hpc_sr.models", noun="arch", attr="arch")


def register_generator(name: str, options: type) -> Callable[[T], T]:
    """Class decorator: register a generator ``cls(opts, scale, common)`` under ``name``."""
    return GENERATORS.register(name, options)


def register_discriminator(name: str, options: type) -> Callable[[T], T]:
    """Class decorator: register a discriminator ``cls(opts, in_channels)`` under ``name``."""
    return DISCRIMINATORS.register(name, options)


def generator_names() -> list[str]:
    return GENERATORS.names()


def discriminator_names() -> list[str]:
    return DISCRIMINATORS.names()


def generator_options(arch: str, values: dict[str, Any] | None, key: str = "model.g") -> Any:
    """Validated options of generator ``arch``."""
    return GENERATORS.options(arch, values, f"{key}.arch", f"{key}.options")


def discriminator_options(arch: str, values: dict[str, Any] | None, key: str = "model.d") -> Any:
    """Validated options of discriminator ``arch``."""
    return DISCRIMINATORS.options(arch, values, f"{key}.arch", f"{key}.options")


def build_generator(
    arch: str, options: dict[str, Any] | None, scale: int, common: GeneratorCommon | None = None
) -> nn.Module:
    """Generator ``arch`` for x``scale`` built from plain options (as in the config)."""
    opts = generator_options(arch, options)
    return GENERATORS[arch].cls(opts, scale, common or GeneratorCommon())


def build_discriminator(arch: str, options: dict[str, Any] | None, in_channels: int = 1) -> nn.Module:
    """Discriminator ``arch`` built from plain options (as in the config)."""
    opts = discriminator_options(arch, options)
    return DISCRIMINATORS[arch].cls(opts, in_channels)


def options_dict(opts: Any) -> dict[str, Any]:
    """Plain dict of an options dataclass (for checkpoints and exported files)."""
    return dataclasses.asdict(opts)


def generator_spec(g: Any) -> dict[str, Any]:
    """Resolved, plain description of a generator config section (``model.g``): arch, full options, flags.

    Accepts a :class:`~hpc_sr.config.GeneratorConfig` or its dict; the options are validated and completed
    with the arch's defaults, so two specs compare equal exactly when they build the same model.
    """
    g = g if isinstance(g, dict) else dataclasses.asdict(g)
    arch = str(g.get("arch", "srresnet"))
    noise = coerce_value("model.g.noise_channels", g.get("noise_channels", 0), int)
    if noise < 0:
        raise ConfigError(f"model.g.noise_channels: expected an integer >= 0, got {noise!r}")
    centred = coerce_value("model.g.noise_centred", g.get("noise_centred", False), bool)
    if centred and noise == 0:
        raise ConfigError(
            "model.g.noise_centred=true needs a stochastic generator: set model.g.noise_channels > 0"
        )
    spec = {
        "arch": arch,
        "options": options_dict(generator_options(arch, g.get("options"))),
        "bicubic_skip": bool(g.get("bicubic_skip", True)),
        "lr_consistent": bool(g.get("lr_consistent", False)),
        "noise_channels": noise,  # absent from files written before it existed: 0
    }
    if centred:  # only when on: specs of every other generator stay as they were
        spec["noise_centred"] = True
    if coerce_value("model.g.lr_blur_input", g.get("lr_blur_input", False), bool):
        spec["lr_blur_input"] = True  # likewise
    return spec


def discriminator_spec(d: Any) -> dict[str, Any]:
    """Resolved description of ``model.d`` (arch + full options)."""
    d = d if isinstance(d, dict) else dataclasses.asdict(d)
    arch = str(d.get("arch", "srgan"))
    return {"arch": arch, "options": options_dict(discriminator_options(arch, d.get("options")))}


def generator_from_spec(spec: dict[str, Any], scale: int, in_channels: int = 1) -> nn.Module:
    """Build the generator a :func:`generator_spec` describes."""
    common = GeneratorCommon(
        in_channels=in_channels,
        bicubic_skip=spec["bicubic_skip"],
        lr_consistent=spec["lr_consistent"],
        noise_channels=int(spec.get("noise_channels", 0)),
        noise_centred=bool(spec.get("noise_centred", False)),
        lr_blur_input=bool(spec.get("lr_blur_input", False)),
    )
    return build_generator(spec["arch"], spec["options"], scale, common)


def discriminator_from_spec(spec: dict[str, Any], in_channels: int = 1) -> nn.Module:
    return build_discriminator(spec["arch"], spec["options"], in_channels)
