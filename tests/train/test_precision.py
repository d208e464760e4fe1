"""Precision and memory-format options of the DDP back-end: bf16 and fp16 (with loss scaling) on CPU too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


@pytest.mark.parametrize(
    "extra",
    [
        {"train.precision": "bf16"},
        {"train.precision": "fp16"},
        {"train.channels_last": "true", "train.grad_clip": 0.5},
    ],
    ids=["bf16", "fp16", "channels_last+clip"],
)
def test_gan_steps_run_and_stay_finite(tiny_shards: Path, tmp_path: Path, extra: dict) -> None:
    cfg = load_config(None, tiny_overrides(tiny_shards, tmp_path, steps=4, pretrain=2, **extra))
    trainer = Trainer(cfg, DistEnv(), torch.device("cpu"), resume="never")
    before = {k: v.clone() for k, v in trainer.backend.module("g").state_dict().items()}
    assert trainer.run() == 0
    rows = [json.loads(x) for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 4 and all(r["loss_g_pixel"] == r["loss_g_pixel"] for r in train)  # no NaN
    if "train.grad_clip" in extra:
        assert all(r["grad_norm_g"] >= 0 for r in train)
    after = trainer.backend.module("g").state_dict()
    assert after["head.0.weight"].dtype == torch.float32  # AMP keeps fp32 master weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if extra.get("train.precision") == "fp16":
        scaler = trainer.backend._scaler["g"]
        assert scaler.is_enabled() and scaler.get_scale() > 0


def test_gradient_clipping_bounds_the_update(tiny_shards: Path, tmp_path: Path) -> None:
    """With a tiny max norm, one SGD-like Adam step is bounded; the reported norm is the pre-clip norm."""
    from hpc_sr.train.backends.ddp import DDPBackend

    cfg = load_config(None, tiny_overrides(tiny_shards, tmp_path, **{"train.grad_clip": 1e-3}))
    backend = DDPBackend(cfg, torch.device("cpu"), world_size=1)
    model = torch.nn.Linear(4, 1)
    backend.add("g", model, lr=0.1)
    loss = (model(torch.ones(8, 4)) - 100).pow(2).mean()
    backend.backward("g", loss, last_micro=True)
    norm = backend.step("g")
    assert norm > 1.0  # reported before clipping
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert total <= 1e-3 * 1.01
