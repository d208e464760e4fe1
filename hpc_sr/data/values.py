"""The value convention of a training set: what the LR pixels a model learnt from look like.

A generator trained by hpc_sr sees LR values exactly as they were packed (never rescaled:
:mod:`hpc_sr.data.sources`), so the convention it expects at inference is "raw values, in this range".
:func:`summarize_lr` measures that range on a sample of the validation LR images; checkpoints and exported
generators carry the record (``data_values``), and ``hpc-sr upscale`` applies it instead of guessing per file.

    record = loader_values(val_loader)   # {"normalize": "none", "lr": {"min": ..., "q001": ...}}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

MAX_SAMPLES = 1 << 20  # pixels kept for the quantiles (strided per batch)
QUANTILES = {"q001": 0.001, "q005": 0.005, "q50": 0.5, "q995": 0.995, "q999": 0.999}


def summarize_lr(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float] | None:
    """Min, max, quantiles and the negative fraction of the LR pixels of ``(lr, hr)`` batches (None when
    there are none); LR's image channels only (not an LR-blur channel after them)."""
    parts: list[np.ndarray] = []
    lo, hi, n, negative = np.inf, -np.inf, 0, 0
    for lr, hr in batches:
        image = lr if hr is None else lr[..., : hr.shape[-3], :, :]  # HR's channel count: LR's image
        v = image.detach().float().cpu().numpy().ravel()
        v = v[np.isfinite(v)]
        if not v.size:
            continue
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
        n, negative = n + v.size, negative + int(np.count_nonzero(v < 0))
        parts.append(v[:: max(1, v.size * 8 // MAX_SAMPLES)])
    if not n:
        return None
    sample = np.concatenate(parts)
    q = np.quantile(sample, list(QUANTILES.values()))
    return {
        "min": lo,
        "max": hi,
        **{k: float(x) for k, x in zip(QUANTILES, q)},
        "negative_fraction": negative / n,
    }


def data_values(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any] | None:
    """The record a generator keeps: its inputs are the raw values, in the measured LR range."""
    lr = summarize_lr(batches)
    return None if lr is None else {"normalize": "none", "lr": lr}


def loader_values(loader: DataLoader | None, images: int = 64) -> dict[str, Any] | None:
    """:func:`data_values` of the first ``images`` pairs of a loader's data set, read item by item: iterating
    the DataLoader itself would draw its base seed from the global RNG and change the training run."""
    if loader is None:
        return None
    dataset = loader.dataset
    n = min(images, len(dataset))  # type: ignore[arg-type]
    return data_values((lr[None], hr[None]) for lr, hr in (dataset[i] for i in range(n)))
