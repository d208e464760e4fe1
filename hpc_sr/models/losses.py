"""Loss terms of the generator, registered by name, plus the functional forms they use.

    train:
      losses:
        - {term: pixel, kind: mse, weight: 1.0}
        - {term: flux, weight: 0.1}
        - {term: adversarial, kind: ragan, weight: 5.0e-3}   # GAN phase only

A term is a class registered with ``@register_loss(name, Options)`` anywhere in ``hpc_sr.models`` (one file
per
new term is enough); ``build_losses(cfg.train.losses)`` validates each entry against the term's options
dataclass. Terms that need the discriminator (``needs_discriminator``) count in the GAN phase only.

Label convention everywhere: **real = 1, fake = 0** (the discriminator is trained to call HR images real);
the generator's adversarial loss rewards fakes that the discriminator calls real. Logits are raw (no
sigmoid): BCE goes through ``binary_cross_entropy_with_logits``.

Scales follow each reference: ``bce`` D loss is SRGAN's sum of the real and fake terms; ``lsgan`` uses the
LSGAN paper's 1/2 factors; ``ragan`` (relativistic average, ESRGAN) averages its two terms.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.config import ConfigError
from hpc_sr.models.registry import load_all, make_options

PIXEL_KINDS = ("l1", "mse")
ADV_KINDS = ("bce", "lsgan", "ragan")


def _check(kind: str, valid: tuple[str, ...], what: str) -> None:
    if kind not in valid:
        raise ValueError(f"unknown {what} kind {kind!r}; valid kinds: {', '.join(valid)}")


def pixel_loss(sr: Tensor, hr: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 or MSE between ``sr`` and ``hr``."""
    _check(kind, PIXEL_KINDS, "pixel loss")
    return F.l1_loss(sr, hr) if kind == "l1" else F.mse_loss(sr, hr)


def _bce(logits: Tensor, label: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str) -> Tensor:
    """Loss of D: low when real logits are high and fake logits low (pass logits of detached fakes)."""
    _check(kind, ADV_KINDS, "adversarial loss")
    if kind == "bce":
        return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (_bce(real_rel, 1.0) + _bce(fake_rel, 0.0))


def generator_adversarial_loss(real_logits: Tensor | None, fake_logits: Tensor, kind: str) -> Tensor:
    """Loss of G: low when D calls the fakes real; ``real_logits`` is used (and required) by ragan only."""
    _check(kind, ADV_KINDS, "adversarial loss")
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


def feature_matching_loss(real_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
    """Mean over layers of the L1 distance between D's activations on fakes and (detached) on reals."""
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(
            f"feature_matching_loss: got {len(real_feats)} real and {len(fake_feats)} fake feature maps; "
            "need the same non-zero number"
        )
    terms = [F.l1_loss(f, r.detach()) for r, f in zip(real_feats, fake_feats)]
    return torch.stack(terms).mean()


def flux_loss(sr: Tensor, hr: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over images of |sum(sr) - sum(hr)| / |sum(hr)| (denominator floored at ``eps``)."""
    sum_sr = sr.flatten(1).sum(1)
    sum_hr = hr.flatten(1).sum(1)
    return ((sum_sr - sum_hr).abs() / sum_hr.abs().clamp_min(eps)).mean()


def ssim_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """1 - SSIM (gaussian window 11, sigma 1.5, data_range 1): rewards structure where pixel losses blur."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    ssim = structural_similarity_index_measure(
        sr, hr, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0
    )
    return 1.0 - ssim


def crps_ensemble(samples: Tensor, target: Tensor, antithetic: bool = False) -> Tensor:
    """Mean over pixels of the fair (ensemble) CRPS of ``samples`` (M, ...) for ``target`` (...), M >= 2.

    Per pixel: mean_i |x_i - y| - 1/(2 M (M-1)) sum_{i != j} |x_i - x_j|, an unbiased estimate of the CRPS
    of the distribution the samples come from: a proper score, lowest in expectation when that distribution
    is the true one (so it trains calibrated spread; a pixel loss on each sample shrinks it instead). With
    identical samples it is the MAE.

    ``antithetic``: samples 2k and 2k+1 are a pair (z, -z), dependent, so only pairs of samples from
    different pairs estimate E|X - X'| (M >= 4): 1/(2 M (M-2)) sum over those. Within a pair the plain
    estimator would reward any spread larger than the error (for M = 2 it is 0 there).
    """
    m = samples.shape[0]
    if m < 2:
        raise ValueError(f"crps_ensemble: needs at least 2 samples per input, got {m}")
    if antithetic and (m < 4 or m % 2):
        raise ValueError(f"crps_ensemble: antithetic pairs need an even number >= 4 of samples, got {m}")
    if samples.shape[1:] != target.shape:
        raise ValueError(
            f"crps_ensemble: samples {tuple(samples.shape)} do not match target {tuple(target.shape)}"
        )
    skill = (samples - target.unsqueeze(0)).abs().mean(0)
    # sum_{i != j} |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k) over the sorted samples (k = 1..M): O(M) memory
    k = torch.arange(1, m + 1, device=samples.device, dtype=samples.dtype)
    w = (2 * k - m - 1).reshape(m, *([1] * target.ndim))
    pair_sum = 2 * (w * samples.sort(0).values).sum(0)  # sum_{i != j} |x_i - x_j|
    if not antithetic:
        return (skill - pair_sum / (2 * m * (m - 1))).mean()
    within = 2 * (samples[0::2] - samples[1::2]).abs().sum(0)  # the ordered pairs inside each (z, -z) pair
    return (skill - (pair_sum - within) / (2 * m * (m - 2))).mean()


# ----------------------------------------------------------------------------------------------- terms
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


LOSSES: dict[str, tuple[type[LossTerm], type]] = {}
T = TypeVar("T", bound=type)


def register_loss(name: str, options: type) -> Callable[[T], T]:
    """Class decorator: register a :class:`LossTerm` subclass ``cls(opts)`` under ``name``."""

    def wrap(cls: T) -> T:
        LOSSES[name] = (cls, options)
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def loss_names() -> list[str]:
    load_all()
    return sorted(LOSSES)


def build_losses(specs: list[dict[str, Any]], key: str = "train.losses") -> list[WeightedTerm]:
    """Validated terms from the config list (``{term, weight, <options>}`` each)."""
    load_all()
    out: list[WeightedTerm] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if not isinstance(spec, dict) or "term" not in spec:
            raise ConfigError(f"{where}: expected a mapping with a 'term' key, got {spec!r}")
        spec = dict(spec)
        name = str(spec.pop("term"))
        if name not in LOSSES:
            hint = difflib.get_close_matches(name, list(LOSSES), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{where}.term: unknown loss term {name!r}{extra}; valid: {', '.join(sorted(LOSSES))}"
            )
        if name in seen:
            raise ConfigError(f"{where}: loss term {name!r} is listed twice")
        seen.add(name)
        weight = spec.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float | str):
            raise ConfigError(f"{where}.weight: expected a number, got {weight!r}")
        try:
            weight = float(weight)
        except ValueError:
            raise ConfigError(f"{where}.weight: expected a number, got {weight!r}") from None
        cls, options = LOSSES[name]
        out.append(WeightedTerm(name, weight, cls(make_options(options, spec, f"{where}({name})"))))
    return out


def adversarial_kind(terms: list[WeightedTerm]) -> str:
    """The adversarial kind the discriminator trains with (the adversarial term's; ragan without one)."""
    for t in terms:
        if isinstance(t.term, AdversarialLoss):
            return t.term.opts.kind
    return "ragan"


@dataclass
class PixelOptions:
    kind: Literal["l1", "mse"] = "l1"
    of: Literal["sample", "mean"] = "sample"  # mean: of a stochastic generator's samples per input


@register_loss("pixel", PixelOptions)
class PixelLoss(LossTerm):
    """Mean L1 or MSE to HR (MSE is the conditional mean: the PSNR-optimal choice).

    ``of: mean`` scores the mean of each input's samples (sample-major batch) instead of every sample: with
    antithetic pairs and a centred generator that is its centre, so the term trains the centre and leaves
    the spread to the crps term (on every sample, MSE adds the spread's square and shrinks it).
    """

    def __call__(self, x: LossInputs) -> Tensor:
        if self.opts.of == "mean" and x.samples > 1:
            sr = x.sr.unflatten(0, (x.samples, -1)).mean(0)
            return pixel_loss(sr, x.hr.unflatten(0, (x.samples, -1))[0], self.opts.kind)
        return pixel_loss(x.sr, x.hr, self.opts.kind)


@dataclass
class NoOptions:
    pass


@register_loss("flux", NoOptions)
class FluxLoss(LossTerm):
    """Relative total-flux error of SR vs HR."""

    def __call__(self, x: LossInputs) -> Tensor:
        return flux_loss(x.sr, x.hr)


@register_loss("ssim", NoOptions)
class SSIMLoss(LossTerm):
    """1 - SSIM (gaussian 11, sigma 1.5)."""

    def __call__(self, x: LossInputs) -> Tensor:
        return ssim_loss(x.sr, x.hr)


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


@register_loss("feature_matching", NoOptions)
class FeatureMatchingLoss(LossTerm):
    """L1 between D's activations on SR and on HR."""

    needs_discriminator = True

    def __call__(self, x: LossInputs) -> Tensor:
        return feature_matching_loss([f.float() for f in x.real_feats], [f.float() for f in x.fake_feats])


@register_loss("crps", NoOptions)
class CRPSLoss(LossTerm):
    """Fair ensemble CRPS of the samples per input (``train.samples_per_input`` >= 2): calibrated spread."""

    def __call__(self, x: LossInputs) -> Tensor:
        if x.samples < 2:
            raise ValueError(
                f"loss term 'crps' needs >= 2 samples per input, got {x.samples} "
                "(a stochastic generator, model.g.noise_channels > 0, and train.samples_per_input >= 2)"
            )
        sr = x.sr.unflatten(0, (x.samples, -1))
        hr = x.hr.float().unflatten(0, (x.samples, -1))[0]
        return crps_ensemble(sr, hr, antithetic=x.antithetic)
