"""Precision and memory-format options of the DDP back-end: bf16 and fp16 (with loss scaling) on CPU too."""

from __future__ import annotations

import json
import math
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
    assert all(math.isfinite(r["grad_norm_g"]) and r["grad_norm_g"] > 0 for r in train)
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


def test_clipping_in_a_training_step_is_what_adam_sees(tiny_shards: Path, tmp_path: Path) -> None:
    """One real step with train.grad_clip: after it Adam's first moment is (1 - beta1) x the clipped gradient,
    so its norm / (1 - beta1) is the clip value, while the logged grad_norm_g is the larger pre-clip norm."""
    clip = 1e-4
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_shards,
            tmp_path,
            steps=1,
            pretrain=1,
            **{"train.grad_clip": clip, "train.channels_last": "true", "train.val_every": 100},
        ),
    )
    trainer = Trainer(cfg, DistEnv(), torch.device("cpu"), resume="never")
    assert trainer.run() == 0
    (row,) = [
        json.loads(x)
        for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "train"' in x
    ]
    assert row["grad_norm_g"] > 100 * clip  # reported before clipping
    beta1 = cfg.train.betas[0]
    state = trainer.backend.optimizer("g").state.values()
    seen = math.sqrt(sum(float(s["exp_avg"].pow(2).sum()) for s in state)) / (1 - beta1)
    assert seen == pytest.approx(clip, rel=1e-4)


def _compile_unavailable() -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - any failure means inductor cannot build CPU kernels
        return f"torch.compile's CPU back-end needs a C++ compiler: {exc}"
    return None


@pytest.mark.slow  # torch.compile builds C++ kernels (~25 s)
def test_compiled_generator_trains_one_step_like_eager(tiny_shards: Path, tmp_path: Path) -> None:
    """train.compile=true: G runs compiled (inductor) and its first step equals the eager one. Costs ~35 s CPU
    on a cold inductor cache, ~10 s warm; the smallest G (2 channels, 1 block) keeps the kernels few."""
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    from torch._dynamo.eval_frame import OptimizedModule

    def one_step(name: str, compile_: bool) -> tuple[Trainer, dict]:
        overrides = tiny_overrides(
            tiny_shards,
            tmp_path,
            name=name,
            steps=1,
            pretrain=1,
            **{
                "train.compile": str(compile_).lower(),
                "model.g.options.channels": 2,
                "model.g.options.blocks": 1,
                "train.val_every": 100,
                "log.tensorboard": "false",
            },
        )
        trainer = Trainer(load_config(None, overrides), DistEnv(), torch.device("cpu"), resume="never")
        assert trainer.run() == 0
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return trainer, next(r for r in rows if r["kind"] == "train")

    compiled, row_c = one_step("compiled", True)
    eager, row_e = one_step("eager", False)
    assert isinstance(compiled.backend.model("g"), OptimizedModule)
    assert not isinstance(eager.backend.model("g"), OptimizedModule)
    assert row_c["loss_g_pixel"] == pytest.approx(row_e["loss_g_pixel"], rel=1e-5)
    assert row_c["grad_norm_g"] == pytest.approx(row_e["grad_norm_g"], rel=1e-4)
    a, b = compiled.backend.module("g").state_dict(), eager.backend.module("g").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
