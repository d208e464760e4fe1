"""Every registered generator: tiny train -> checkpoint -> exact resume -> export -> evaluate -> upscale; one
zoo
arch under 2-rank DDP (torchrun, gloo). ZeRO-2 trains RRDB + U-Net D in tests/train/test_deepspeed.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.apps.evaluate import evaluate
from hpc_sr.apps.upscale import upscale_paths
from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.models.artifacts import export_generator, load_generator
from hpc_sr.models.registry import GENERATORS, generator_names
from hpc_sr.train.trainer import Trainer
from tests.conftest import REPO, mean_psnr, read_shards, subprocess_env, tiny_overrides, torchrun_cmd


def tiny_model_overrides(arch: str) -> dict[str, str]:
    options = dataclasses.asdict(GENERATORS[arch].options.tiny())
    return {"model.g.arch": arch, "model.g.options": json.dumps(options)}


def train(data: Path, runs: Path, name: str, steps: int, arch: str, **extra: object) -> Trainer:
    """A tiny run to ``steps``; a constant schedule, so a 2-step run resumed to 4 equals a 4-step run."""
    over = tiny_overrides(
        data,
        runs,
        name=name,
        steps=steps,
        pretrain=steps,
        **{
            **tiny_model_overrides(arch),
            "train.ckpt_every": 2,
            "train.val_every": 2,
            "train.schedule": "constant",
            "log.tensorboard": "false",
            **extra,
        },
    )
    trainer = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="auto")
    assert trainer.run() == 0
    return trainer


@pytest.mark.parametrize("arch", generator_names())
def test_train_resume_export_evaluate_upscale(arch: str, tiny_shards: Path, tmp_path: Path) -> None:
    straight = train(tiny_shards, tmp_path, "straight", 4, arch)
    train(tiny_shards, tmp_path, "split", 2, arch)
    resumed = train(tiny_shards, tmp_path, "split", 4, arch)
    assert resumed.resumed_from == tmp_path / "split" / "checkpoints" / "step_00000002"
    a, b = straight.backend.module("g").state_dict(), resumed.backend.module("g").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{arch}: resumed run differs from the uninterrupted one"

    exported = export_generator(tmp_path / "split", tmp_path / "G.pt")
    model, payload = load_generator(exported)
    assert type(model).__name__ == type(straight.backend.module("g")).__name__
    assert payload["generator"]["arch"] == arch
    lr = torch.rand(1, 1, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(lr), resumed.ema.module.eval()(lr), rtol=0, atol=1e-6)

    result = evaluate(exported, tiny_shards, split="test", quiet=True)
    lr_test, hr_test, _ = read_shards(tiny_shards, split="test")
    with torch.no_grad():
        want = mean_psnr(model(torch.from_numpy(lr_test)), hr_test)
    assert result["n"] == len(hr_test) == 5
    assert result["model"]["psnr"] == pytest.approx(want, abs=1e-5)

    src = tmp_path / "in" / "img.npy"
    src.parent.mkdir()
    np.save(src, np.random.default_rng(0).random((10, 12)).astype(np.float32))
    (out,) = upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    assert np.load(out).shape == (20, 24)


def test_gan_with_unet_discriminator_trains(tiny_shards: Path, tmp_path: Path) -> None:
    over = tiny_overrides(
        tiny_shards,
        tmp_path,
        name="unet",
        steps=4,
        pretrain=2,
        **{
            **tiny_model_overrides("edsr"),
            "model.d.arch": "unet",
            "model.d.options": "{channels: 2}",
            "log.tensorboard": "false",
        },
    )
    trainer = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="never")
    assert trainer.run() == 0
    rows = [json.loads(x) for x in (tmp_path / "unet" / "metrics.jsonl").read_text().splitlines()]
    gan = [r for r in rows if r["kind"] == "train" and r["phase"] == "gan"]
    assert gan and all(r["loss_d"] > 0 and np.isfinite(r["loss_g_adversarial"]) for r in gan)


@pytest.mark.slow  # a real 2-rank torchrun job
def test_two_rank_ddp_trains_a_zoo_arch_identically_on_both_ranks(tiny_shards: Path, tmp_path: Path) -> None:
    over = tiny_overrides(
        tiny_shards,
        tmp_path,
        name="rcan_ddp",
        steps=4,
        pretrain=2,
        **{**tiny_model_overrides("rcan"), "log.tensorboard": "false"},
    )
    cmd = torchrun_cmd(2, REPO / "tests" / "train" / "ddp_worker.py", str(tmp_path), *over)
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    for name in ("g", "d"):
        assert all(torch.equal(w0[name][k], w1[name][k]) for k in w0[name]), name
    model, payload = load_generator(tmp_path / "rcan_ddp")
    assert payload["generator"]["arch"] == "rcan"
