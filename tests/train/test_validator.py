"""The validator: model and bicubic metrics on the same images, the physics metrics, its own cadence, and the
model's train/eval mode restored."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpc_sr.config import LogConfig
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.train.logger import RunLogger
from hpc_sr.train.validator import Validator


class Bicubic(nn.Module):
    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return bicubic_upscale(lr, 2)


def batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        hr = torch.rand((2, 1, 16, 16), generator=g)
        out.append((F.avg_pool2d(hr, 2), hr))
    return out


def make(tmp_path: Path, loader: object, every: int = 5, image_every: int = 10) -> Validator:
    log = RunLogger(LogConfig(tensorboard=False), tmp_path, rank=0, world_size=1)
    return Validator(
        loader, scale=2, device=torch.device("cpu"), is_main=True, log=log, every=every,
        image_every=image_every, last_step=12,
    )  # fmt: skip


def test_due_follows_its_cadence_and_never_without_a_val_split(tmp_path: Path) -> None:
    assert [s for s in range(1, 13) if make(tmp_path, batches()).due(s)] == [5, 10, 12]
    assert not any(make(tmp_path, None).due(s) for s in range(1, 13))


def test_bicubic_model_scores_bicubic_and_the_record_holds_physics(tmp_path: Path) -> None:
    v = make(tmp_path, batches())
    model = Bicubic().train()
    m = v.run(10, model, contextlib.nullcontext)
    v.log.close()
    assert model.training  # mode restored
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["kind"] == "val" and row["step"] == 10
    assert row["model"]["psnr"] == pytest.approx(row["bicubic"]["psnr"]) == pytest.approx(m["psnr"])
    assert set(row["physics"]) == {"model", "bicubic"} and row["physics"]["model"]


def test_a_better_model_scores_higher_than_bicubic(tmp_path: Path) -> None:
    data = batches()
    truth = {id(lr): hr for lr, hr in data}

    class Oracle(nn.Module):
        def forward(self, lr: torch.Tensor) -> torch.Tensor:
            return truth[id(lr)] * 0.99 + bicubic_upscale(lr, 2) * 0.01

    m = make(tmp_path, data).run(5, Oracle(), contextlib.nullcontext)
    assert m["psnr"] > 35
