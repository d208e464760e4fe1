"""The training LR's value record: range, quantiles and negative share, measured on batches."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.data.values import data_values, summarize_lr


def test_range_quantiles_and_negative_share() -> None:
    lr = torch.linspace(-1.0, 3.0, 4001).reshape(1, 1, 1, -1)
    batches = [(lr[..., :2000], None), (lr[..., 2000:], None)]
    s = summarize_lr(batches)  # type: ignore[arg-type]
    assert (s["min"], s["max"]) == (-1.0, 3.0)
    assert s["q50"] == pytest.approx(1.0, abs=1e-6) and s["q001"] == pytest.approx(-0.996, abs=1e-3)
    assert s["negative_fraction"] == pytest.approx(1000 / 4001)


def test_non_finite_pixels_are_ignored_and_no_pixels_give_no_record() -> None:
    lr = torch.tensor([[[[float("nan"), 0.5, float("inf"), 0.25]]]])
    assert summarize_lr([(lr, lr)])["max"] == 0.5
    assert summarize_lr([]) is None and data_values([]) is None
    assert data_values([(lr, lr)])["normalize"] == "none"
