"""Per-pixel mean and uncertainty of a stochastic generator (``model.g.noise_channels > 0``) for inference.

    mean, sigma = sample_mean_and_sigma(g, lr, samples=16, calibration=payload.get("spread_calibration"))

The samples are drawn as ``hpc-sr evaluate --samples`` draws them
(:func:`hpc_sr.eval.uncertainty.draw_samples`, as the generator gives them, before any clamp; antithetic pairs
(z, -z) when the calibration was fitted so); ``mean`` is their per-pixel mean (what evaluate's ``sample_mean``
clamps), ``sigma`` their standard deviation, scaled per brightness bin of the mean by the stored spread scales
exactly as ``evaluate --spread-scales`` scales every sample's deviation
(:meth:`hpc_sr.eval.recalibration.SpreadScales.apply`: scaling the deviations by s scales their standard
deviation by s). Without a calibration ``sigma`` is the raw spread: the caller
records it as uncalibrated. Both are in model units, (B, C, s*H, s*W) float32; memory is ``samples`` SR
batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hpc_sr.errors import HpcSrError
from hpc_sr.models.artifacts import CALIBRATION_FORMAT, CALIBRATION_KEY

if TYPE_CHECKING:
    from hpc_sr.eval.recalibration import SpreadScales

Calibration = Any  # a stored record (Mapping), a SpreadScales, or None


class SamplingError(HpcSrError, ValueError):
    """Samples asked of a generator that cannot give them, or an unusable calibration record."""


def spread_scales_of(calibration: Calibration, where: str = CALIBRATION_KEY) -> SpreadScales | None:
    """The :class:`~hpc_sr.eval.recalibration.SpreadScales` of a stored calibration record
    (``payload["spread_calibration"]``), of a bare spread-scales dict, or as given; None for None."""
    from hpc_sr.eval.recalibration import SpreadScales  # imported on use: torchmetrics costs ~2 s at start

    if calibration is None or isinstance(calibration, SpreadScales):
        return calibration
    if calibration.get("format", CALIBRATION_FORMAT) != CALIBRATION_FORMAT:
        raise SamplingError(f"{where}: format {calibration.get('format')!r}, expected {CALIBRATION_FORMAT}")
    record = calibration.get("spread_scales", calibration)
    try:
        return SpreadScales.from_dict(dict(record), where=where)
    except (TypeError, ValueError) as exc:
        raise SamplingError(str(exc)) from None


def unit_seed(unit_id: str, seed: int = 0) -> int:
    """A noise seed from a work unit's stable id: its samples depend on neither the rank nor the attempt."""
    digest = hashlib.sha256(f"{seed}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def sample_mean_and_sigma(
    model: nn.Module,
    lr: Tensor,
    samples: int,
    calibration: Calibration = None,
    *,
    seed: int | torch.Generator = 0,
    antithetic: bool | None = None,
    label: str = "",
) -> tuple[Tensor, Tensor]:
    """(mean, sigma) per pixel of ``samples`` draws of ``model`` for ``lr`` (B, C, H, W) in model units.

    ``calibration``: the stored record (or :class:`SpreadScales`) whose per-bin scales multiply the spread;
    None: the raw spread. ``seed``: an int or a ``torch.Generator`` on ``lr``'s device (see
    :func:`unit_seed`). ``antithetic``: pairs (z, -z); None follows the calibration's fit (else independent
    draws, evaluate's default). ``label`` names the model in errors (its checkpoint).
    """
    noise = int(getattr(model, "noise_channels", 0) or 0)
    name = label or str(getattr(model, "arch", "") or type(model).__name__)
    if noise <= 0:
        raise SamplingError(
            f"--samples {samples}: model {name} is deterministic (model.g.noise_channels={noise}): every "
            "sample would be the same; drop --samples or use a stochastic generator"
        )
    scales = spread_scales_of(calibration)
    if antithetic is None:
        fit = calibration.get("fit", {}) if isinstance(calibration, Mapping) else {}
        antithetic = bool(fit.get("antithetic", False))
    if samples < 2 or (antithetic and samples % 2):
        pairs = " (antithetic pairs: an even number)" if antithetic else ""
        raise SamplingError(f"--samples {samples}: a spread needs at least 2 samples{pairs}")
    from hpc_sr.eval.uncertainty import draw_samples

    raw = draw_samples(model, lr, samples, seed, clamp=False, antithetic=antithetic)
    mean = raw.double().mean(0).float()
    sigma = raw.double().std(0).float()
    if scales is not None:
        sigma = sigma * scales.scale_map(raw.mean(0))  # the bins of the centre SpreadScales.apply uses
    return mean, sigma
