"""The one evaluation loop: model and bicubic on the same images, a hook per batch, the first batch kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.eval.loop import evaluate_batches
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale


def data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(F.avg_pool2d(hr, 2), hr) for hr in (torch.rand((3, 1, 16, 16), generator=g) for _ in range(n))]


def test_bicubic_predict_equals_the_bicubic_column_and_hooks_see_every_batch() -> None:
    seen = []
    res = evaluate_batches(
        lambda lr: bicubic_upscale(lr, 2), data(4), 2, torch.device("cpu"),
        on_batch=lambda lr, sr, hr: seen.append(lr.shape[0]),
    )  # fmt: skip
    assert seen == [3, 3, 3, 3]
    assert res.model == res.bicubic and res.gain_db == 0
    lr, sr, hr = res.first
    assert (lr.shape, sr.shape, hr.shape) == ((3, 1, 8, 8), (3, 1, 16, 16), (3, 1, 16, 16))


def test_metrics_equal_one_accumulator_over_all_images() -> None:
    batches = data(3)
    res = evaluate_batches(lambda lr: bicubic_upscale(lr, 2) + 0.01, batches, 2, torch.device("cpu"))
    acc = MetricAccumulator()
    for lr, hr in batches:
        acc.update(bicubic_upscale(lr, 2) + 0.01, hr)
    assert res.model == pytest.approx(acc.compute())


def test_no_batches_gives_no_first_batch() -> None:
    res = evaluate_batches(lambda lr: lr, [], 2, torch.device("cpu"))
    assert res.first is None
