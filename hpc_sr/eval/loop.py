"""The one sharded evaluation loop: validation during training and `hpc-sr evaluate` both call it.

Each rank evaluates its share of the images; the float64 metric sums are all-reduced, so the result equals the
single-process one exactly (whatever the world size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from hpc_sr.dist.collectives import all_reduce_
from hpc_sr.eval.metrics import MetricAccumulator, SumAccumulator, bicubic_upscale
from hpc_sr.imaging import lr_image


@dataclass
class EvalResult:
    """Model and bicubic metrics on the same images (all ranks together), and the first batch seen here."""

    model: dict[str, float]
    bicubic: dict[str, float]
    first: tuple[Tensor, Tensor, Tensor] | None  # (lr, sr, hr) on CPU, for pictures

    @property
    def gain_db(self) -> float:
        return self.model["psnr"] - self.bicubic["psnr"]


def reduce_accumulator(acc: SumAccumulator, device: torch.device) -> None:
    """Sum an accumulator over ranks in place (no-op for one process)."""
    state = acc.state().to(device)
    all_reduce_(state)
    acc.load_state(state.cpu())


@torch.no_grad()
def evaluate_batches(
    predict: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    scale: int,
    device: torch.device,
    on_batch: Callable[[Tensor, Tensor, Tensor], None] | None = None,
) -> EvalResult:
    """Run ``predict`` (LR -> SR) on this rank's ``batches`` of (lr, hr); metrics reduced over all ranks.

    LR may carry conditioning channels after the image's (an LR-blur channel): ``predict`` gets them, bicubic,
    the pictures and ``on_batch`` the image channels only."""
    acc_model, acc_bic = MetricAccumulator(), MetricAccumulator()
    first = None
    for lr, hr in batches:
        lr, hr = lr.to(device), hr.to(device)
        sr = predict(lr).float()
        lr = lr_image(lr, hr.shape[1])
        acc_model.update(sr, hr)
        acc_bic.update(bicubic_upscale(lr, scale), hr)
        if first is None:
            first = (lr[:4].cpu(), sr[:4].cpu(), hr[:4].cpu())
        if on_batch is not None:
            on_batch(lr, sr, hr)
    for acc in (acc_model, acc_bic):
        reduce_accumulator(acc, device)
    return EvalResult(acc_model.compute(), acc_bic.compute(), first)
