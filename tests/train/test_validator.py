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


def test_the_block_mean_residual_is_left_out_where_lr_is_not_the_mean(tmp_path: Path) -> None:
    """lr_residual = |avg_pool(SR) - LR| only means something where LR is the block mean of HR: a run on
    two-instrument data (the trainer passes lr_is_mean from hpc_sr.data.lr_relation) logs no such figure."""
    from hpc_sr.config import DataConfig
    from hpc_sr.data.lr_relation import lr_is_mean

    assert lr_is_mean(DataConfig(source="simulate", options={"preset": "deeplense_sr"}))
    assert not lr_is_mean(DataConfig(source="simulate", options={"preset": "ground_space"}))
    assert not lr_is_mean(DataConfig(source="simulate", options={"preset": "randomized"}))  # a mixture
    assert lr_is_mean(DataConfig(source="shards", path=str(tmp_path / "none")))  # unknown: not withheld
    for mean, sub in ((True, "mean"), (False, "instrument")):
        log = RunLogger(LogConfig(tensorboard=False), tmp_path / sub, rank=0, world_size=1)
        v = Validator(batches(), scale=2, device=torch.device("cpu"), is_main=True, log=log, every=5,
                      image_every=10, last_step=12, lr_is_mean=mean)  # fmt: skip
        v.run(5, Bicubic(), contextlib.nullcontext)
        log.close()
        row = json.loads((tmp_path / sub / "metrics.jsonl").read_text().splitlines()[-1])
        assert ("lr_residual" in row["physics"]["model"]) is mean
        assert "flux_err" in row["physics"]["model"]
