"""Loss term ``crps``: the fair ensemble CRPS of a stochastic generator's samples per input."""

from __future__ import annotations

import torch
from torch import Tensor

from hpc_sr.models.losses.base import LossInputs, LossTerm, register_loss
from hpc_sr.registry import NoOptions


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
