"""What every loss term shares: its inputs, its base class, the registry of terms and the config builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import Tensor

from hpc_sr.config import ConfigError
from hpc_sr.registry import Registry

T = TypeVar("T", bound=type)


def check_kind(kind: str, valid: tuple[str, ...], what: str) -> None:
    """ValueError naming ``what`` and the valid kinds unless ``kind`` is one of them."""
    if kind not in valid:
        raise ValueError(f"unknown {what} kind {kind!r}; valid kinds: {', '.join(valid)}")


@dataclass
class LossInputs:
    """What a term may look at: SR and HR (float32), LR, and D's outputs in the GAN phase.

    With a stochastic generator the batch holds ``samples`` draws per input, sample-major: row ``m * B + b``
    is sample m of input b (``sr.unflatten(0, (samples, -1))``); HR and LR are repeated alike.
    """

    sr: Tensor
    hr: Tensor
    lr: Tensor
    samples: int = 1
    antithetic: bool = False  # samples 2k and 2k+1 of each input are a pair (z, -z)
    fake_logits: Tensor | None = None
    real_logits: Tensor | None = None  # on HR, without gradient
    fake_feats: list[Tensor] = field(default_factory=list)
    real_feats: list[Tensor] = field(default_factory=list)


class LossTerm:
    """Base of a loss term: ``term(inputs) -> scalar``; the weight is applied by the caller."""

    name = "base"
    needs_discriminator = False

    def __init__(self, opts: Any) -> None:
        self.opts = opts

    def __call__(self, x: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class WeightedTerm:
    name: str
    weight: float
    term: LossTerm


LOSSES: Registry[type[LossTerm]] = Registry("loss term", package="hpc_sr.models", attr="name")


def register_loss(name: str, options: type) -> Callable[[T], T]:
    """Class decorator: register a :class:`LossTerm` subclass ``cls(opts)`` under ``name``."""
    return LOSSES.register(name, options)


def loss_names() -> list[str]:
    return LOSSES.names()


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}.weight: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{where}.weight: expected a number, got {value!r}") from None


def build_losses(specs: list[dict[str, Any]], key: str = "train.losses") -> list[WeightedTerm]:
    """Validated terms from the config list (``{term, weight, <options>}`` each)."""
    out: list[WeightedTerm] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if not isinstance(spec, dict) or "term" not in spec:
            raise ConfigError(f"{where}: expected a mapping with a 'term' key, got {spec!r}")
        spec = dict(spec)
        name = str(spec.pop("term"))
        entry = LOSSES.get(name, f"{where}.term")
        if name in seen:
            raise ConfigError(f"{where}: loss term {name!r} is listed twice")
        seen.add(name)
        weight = _weight(spec.pop("weight", 1.0), where)
        opts = LOSSES.options(name, spec, f"{where}.term", f"{where}({name})")
        out.append(WeightedTerm(name, weight, entry.cls(opts)))
    return out
