"""DeepSpeed back-end: config building in-process; real 2-rank trainings (torchrun, gloo on CPU) for ZeRO
0/1/2 in fp32, bf16 and fp16: exact resume, identical weights across ranks, agreement with DDP (also with
gradient accumulation), ZeRO partitioning of optimiser state, export of a ZeRO-2 checkpoint; single-process
runs and refused resumes.

All 2-rank trainings run in ONE torchrun launch (tests/train/ds_worker.py runs the jobs one after the other in
the same process group); the tests below read what it wrote.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.errors import TrainingError
from hpc_sr.models.checkpoint_layout import consolidated_module_state
from hpc_sr.train.backends.deepspeed import build_ds_config, precision_supported
from tests.conftest import REPO, in_process_group, subprocess_env, tiny_overrides, torchrun_cmd

pytestmark = pytest.mark.slow  # real DeepSpeed engines (JIT-built ops, 2-rank runs)

WORKER = REPO / "tests" / "train" / "ds_worker.py"
DS_CONFIGS = REPO / "configs" / "deepspeed"
# (tag, zero stage, precision, grad_accum): ZeRO 0, 1, 2 x fp32, bf16, fp16 (dynamic loss scaling runs on CPU)
# ZeRO-2 also trains a zoo pair: RRDB generator + U-Net discriminator (per-pixel logits), tiny options.
ZOO = {
    "model.g.arch": "rrdb",
    "model.g.options": "{channels: 4, blocks: 1, growth: 2}",
    "model.d.arch": "unet",
    "model.d.options": "{channels: 2}",
}
VARIANTS = [
    ("z0_fp32", 0, "fp32", 1, {}),
    ("z1_bf16", 1, "bf16", 1, {}),
    ("z2_fp32", 2, "fp32", 2, {}),
    ("z2_bf16", 2, "bf16", 1, {}),
    ("z1_fp16", 1, "fp16", 1, {}),
    ("z2_rrdb_unet", 2, "fp32", 1, ZOO),
]
# DeepSpeed refuses fp16 where its accelerator says the host has no fp16 (on CPU: no oneDNN fp16, which
# depends on the machine's CPU); those variants are left out there and their tests skipped.
FP16 = precision_supported("fp16")
NO_FP16 = pytest.mark.skipif(not FP16, reason="DeepSpeed's accelerator reports no fp16 on this host")
RUN_VARIANTS = [v for v in VARIANTS if FP16 or v[2] != "fp16"]
STEPS, PRETRAIN, SPLIT = 6, 2, 4  # GAN phase from step 3; the split run saves at 4 and resumes to 6
# fp32 vs DDP, same seed and data, 2 ranks on CPU/gloo, measured: ZeRO 0 bit-identical; ZeRO 2 with
# grad_accum 2: losses within 4.3e-8 relative, grad norms within 1.1e-5 (D's norm ~1e-4 sums near-cancelling
# terms in another order). Bounds: ~20x / ~10x margins.
DDP_REL_TOL = 1e-6
NORM_REL_TOL = 1e-4
# DeepSpeed fp16 (fp16 weights, fp32 master) vs DDP AMP fp16 (fp32 weights, autocast): different roundings.
FP16_REL_TOL = 2e-3  # measured max 1.0e-4 / 2.6e-4 (ZeRO 1 fp16 vs DDP AMP fp16, 6 steps, two schedules)


def read_rows(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def loss_rows(run_dir: Path) -> list[tuple[int, float, float, float]]:
    return [
        (r["step"], r["loss_g_pixel"], r.get("loss_g_adversarial", 0.0), r.get("loss_d", 0.0))
        for r in read_rows(run_dir)
    ]


def torchrun(out_dir: Path, jobs: list[dict[str, Any]], timeout: int = 420) -> subprocess.CompletedProcess:
    jobs_file = out_dir / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    cmd = torchrun_cmd(2, WORKER, str(out_dir), str(jobs_file))
    return subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


# constant schedule after a warm-up (set_lr changes the lr on the first steps of each phase): the lr depends
# only on the step, so a run of 4 steps resumed to 6 must equal a run of 6
COMMON = {
    "train.schedule": "constant",
    "train.warmup_steps": 2,
    "train.deterministic": "true",
    "train.ckpt_every": 100,
    "train.val_every": 100,
}


def build_jobs(data: Path, out: Path) -> list[dict[str, Any]]:
    """For each variant an uninterrupted run and a run split at SPLIT (then resumed); three DDP references."""

    def job(tag: str, name: str, steps: int, resume: str, **extra: object) -> dict[str, Any]:
        return {
            "tag": tag,
            "resume": resume,
            "overrides": tiny_overrides(
                data, out, name=name, steps=steps, pretrain=PRETRAIN, **{**COMMON, **extra}
            ),
        }

    jobs = [
        job("ddp", "ddp", STEPS, "never", **{"dist.backend": "ddp"}),
        job("ddp_acc", "ddp_acc", STEPS, "never", **{"dist.backend": "ddp", "train.grad_accum": 2}),
        job("ddp_fp16", "ddp_fp16", STEPS, "never", **{"dist.backend": "ddp", "train.precision": "fp16"}),
    ]
    for tag, zero, precision, accum, extra in RUN_VARIANTS:
        ds = {
            "dist.backend": "deepspeed",
            "dist.zero_stage": zero,
            "train.precision": precision,
            "train.grad_accum": accum,
            **extra,
        }
        jobs += [
            job(f"{tag}_straight", f"{tag}_straight", STEPS, "never", **ds),
            job(f"{tag}_part", f"{tag}_split", SPLIT, "never", **ds),
            job(f"{tag}_resumed", f"{tag}_split", STEPS, "auto", **ds),
        ]
    return jobs


@pytest.fixture(scope="module")
def runs(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch running all jobs of :func:`build_jobs`."""
    out = tmp_path_factory.mktemp("ds_runs")
    proc = torchrun(out, build_jobs(tiny_shards, out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def weights(runs: Path, tag: str, rank: int) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(runs / f"{tag}_rank{rank}.pt", weights_only=True)["weights"]


# ----------------------------------------------------------------------------------------------- in-process
def test_config_is_filled_from_hpc_sr_config(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.batch_size=8",
            "train.grad_accum=2",
            "train.grad_clip=1.5",
            "dist.zero_stage=2",
            "train.precision=fp16",
        ],
    )
    ds = build_ds_config(cfg, world_size=2)
    batch_keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    assert [ds[k] for k in batch_keys] == [8, 2, 2]
    assert ds["gradient_clipping"] == 1.5 and ds["zero_optimization"]["stage"] == 2
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # 0 = dynamic loss scaling
    assert not ds["bf16"]["enabled"]


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("zero0.json", ["dist.zero_stage=0"]),
        ("zero1.json", ["dist.zero_stage=1"]),
        ("zero2.json", ["dist.zero_stage=2"]),
        ("bf16.json", ["train.precision=bf16", "dist.zero_stage=1"]),
        ("fp16.json", ["train.precision=fp16", "dist.zero_stage=2"]),
    ],
)
def test_shipped_json_files_build(name: str, overrides: list[str]) -> None:
    cfg = load_config(None, [f"dist.deepspeed_config={DS_CONFIGS / name}", "data.batch_size=4", *overrides])
    ds = build_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["zero_optimization"]["stage"] == cfg.dist.zero_stage
    assert ds["bf16"]["enabled"] == (cfg.train.precision == "bf16")


def test_fp16_with_zero0_is_refused_naming_the_alternatives() -> None:
    cfg = load_config(None, ["train.precision=fp16", "dist.zero_stage=0"])
    with pytest.raises(TrainingError, match="dist.zero_stage=1 or 2"):
        build_ds_config(cfg, world_size=1)


def test_json_disagreeing_with_config_names_each_key(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_batch_size": 32,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 1.0,
                "bf16": {"enabled": True},
                "zero_optimization": {"stage": 2},
            }
        )
    )
    cfg = load_config(
        None,
        [f"dist.deepspeed_config={path}", "data.batch_size=4", "train.grad_accum=1", "dist.zero_stage=1"],
    )
    with pytest.raises(TrainingError) as err:
        build_ds_config(cfg, world_size=1)
    msg = str(err.value)
    for needle in (
        "train_batch_size: ",
        "has 32",
        "gives 4",
        "gradient_clipping: ",
        "has 1.0",
        "gives 0.0",
        "bf16.enabled",
        "train.precision",
        "zero_optimization.stage",
        "has 2",
        "gives 1",
        str(path),
    ):
        assert needle in msg, needle
    assert "gradient_accumulation_steps" not in msg  # agrees


@pytest.mark.skipif(FP16, reason="this host supports fp16: nothing to refuse")
def test_unsupported_precision_is_refused_naming_the_alternatives() -> None:
    from hpc_sr.train.backends.deepspeed import DeepSpeedBackend

    cfg = load_config(None, ["train.precision=fp16", "dist.zero_stage=1", "dist.backend=deepspeed"])
    with pytest.raises(TrainingError, match=r"train\.precision=fp16 .*does not support fp16.*bf16 or fp32"):
        DeepSpeedBackend(cfg, torch.device("cpu"), 1)


def test_missing_json_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(None, [f"dist.deepspeed_config={tmp_path / 'nope.json'}"])
    with pytest.raises(TrainingError, match="nope.json"):
        build_ds_config(cfg, world_size=1)


# ----------------------------------------------------------------------------------------------- 2 ranks
@pytest.mark.parametrize("tag", [v[0] for v in RUN_VARIANTS])
def test_resume_gives_the_losses_of_an_uninterrupted_run(runs: Path, tag: str) -> None:
    straight, split = loss_rows(runs / f"{tag}_straight"), loss_rows(runs / f"{tag}_split")
    assert [r[0] for r in split] == list(range(1, STEPS + 1))
    assert all(r[2] > 0 and r[3] > 0 for r in straight if r[0] > PRETRAIN)  # GAN phase really ran
    assert split == straight  # bit-identical, before and after the resume at step SPLIT
    a, b = weights(runs, f"{tag}_straight", 0), weights(runs, f"{tag}_resumed", 0)
    for name in ("g", "d"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


@pytest.mark.parametrize("tag", [v[0] for v in RUN_VARIANTS])
def test_ranks_hold_identical_weights(runs: Path, tag: str) -> None:
    w0, w1 = weights(runs, f"{tag}_straight", 0), weights(runs, f"{tag}_straight", 1)
    assert set(w0) == {"g", "d"}
    for name in w0:
        same = all(torch.equal(w0[name][k], w1[name][k]) for k in w0[name])
        assert same, f"{tag}: {name} differs across ranks"
    rows = read_rows(runs / f"{tag}_straight")
    assert {r["world_size"] for r in rows} == {2}
    assert all(math.isfinite(r["loss_g_pixel"]) for r in rows)


def test_bf16_engines_train_in_bf16(runs: Path) -> None:
    ckpt = runs / "z2_bf16_straight" / "checkpoints" / f"step_{STEPS:08d}"
    saved = torch.load(
        ckpt / "engine_g" / "state" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    assert {v.dtype for v in saved["module"].values() if v.is_floating_point()} == {torch.bfloat16}
    master = consolidated_module_state(ckpt, "g")  # fp32 master weights, which round to the bf16 module
    assert all(v.dtype == torch.float32 for v in master.values())
    assert all(torch.equal(master[k].bfloat16(), saved["module"][k]) for k in master)
    assert any(not torch.equal(master[k], master[k].bfloat16().float()) for k in master)


@pytest.mark.parametrize("tag,ddp_tag", [("z0_fp32", "ddp"), ("z2_fp32", "ddp_acc")])  # ZeRO 2: grad_accum 2
def test_fp32_matches_ddp(runs: Path, tag: str, ddp_tag: str) -> None:
    ddp, ds = read_rows(runs / ddp_tag), read_rows(runs / f"{tag}_straight")
    assert [r["step"] for r in ddp] == [r["step"] for r in ds]
    keys = ("loss_g_pixel", "loss_g_adversarial", "loss_d", "grad_norm_g", "grad_norm_d")
    for a, b in zip(ddp, ds):
        for key in (k for k in keys if k in a):
            tol = NORM_REL_TOL if key.startswith("grad_norm") else DDP_REL_TOL
            assert math.isclose(a[key], b[key], rel_tol=tol), (key, a[key], b[key])


@NO_FP16
def test_zero1_fp16_stays_close_to_ddp_amp_fp16(runs: Path) -> None:
    ddp, ds = read_rows(runs / "ddp_fp16"), read_rows(runs / "z1_fp16_straight")
    assert [r["step"] for r in ddp] == [r["step"] for r in ds]
    for a, b in zip(ddp, ds):
        for key in ("loss_g_pixel", "loss_d"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=FP16_REL_TOL), (key, a, b)


def test_zero_partitions_optimizer_state_across_ranks(runs: Path) -> None:
    def opt_mb(tag: str) -> float:
        return torch.load(runs / f"{tag}_straight_rank0.pt", weights_only=True)["optimizer_mb"]["g"]

    # ZeRO 0: both Adam moments of every parameter on each rank; ZeRO 2 on 2 ranks: half the moments plus
    # half an fp32 master copy = 3/4 (measured exactly, up to padding of the flat partition).
    assert 0.7 < opt_mb("z2_fp32") / opt_mb("z0_fp32") < 0.8
    assert 0.7 < opt_mb("z1_bf16") / opt_mb("z0_fp32") < 0.8


def test_generator_exported_from_zero2_checkpoint_evaluates_like_the_engine(
    runs: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    from hpc_sr.apps.evaluate import evaluate
    from hpc_sr.models.artifacts import export_generator, generator_payload
    from hpc_sr.models.checkpoint_layout import atomic_torch_save

    ckpt = runs / "z2_fp32_straight" / "checkpoints" / f"step_{STEPS:08d}"
    assert (ckpt / "engine_g" / "latest").read_text().strip() == "state"  # relative: survives the rename
    exported = export_generator(ckpt, tmp_path / "G.pt", ema=False)
    engine_g = weights(runs, "z2_fp32_straight", 0)["g"]
    payload = torch.load(exported, weights_only=True)
    assert set(payload["state_dict"]) == set(engine_g)
    assert all(torch.equal(payload["state_dict"][k], engine_g[k]) for k in engine_g)
    own = tmp_path / "engine_G.pt"
    cfg = load_config(runs / "z2_fp32_straight" / "config.yaml")
    atomic_torch_save(
        generator_payload(
            json.loads(json.dumps(payload["model"])), cfg.data.scale, engine_g, "engine", STEPS
        ),
        own,
    )
    a = evaluate(exported, tiny_shards, split="test", quiet=True)
    b = evaluate(own, tiny_shards, split="test", quiet=True)
    assert a["n"] == b["n"] > 0
    for key in ("psnr", "ssim", "mse"):
        assert a["model"][key] == b["model"][key], key


# ----------------------------------------------------------------------------------------------- 1 process
@pytest.fixture
def one_process() -> Any:
    """In-process DeepSpeed: tear down the one-rank group and the launcher variables it set afterwards."""
    with in_process_group():
        yield


def make_trainer(overrides: list[str], resume: str) -> Any:
    from hpc_sr.dist.env import DistEnv
    from hpc_sr.train.trainer import Trainer

    return Trainer(load_config(None, overrides), DistEnv(), torch.device("cpu"), resume=resume)


def test_single_process_zero0_bf16_run_set_lr_and_fp32_masters(
    tiny_shards: Path, tmp_path: Path, one_process: None
) -> None:
    from hpc_sr.train.backends.deepspeed import DeepSpeedBackend, inner_optimizer

    trainer = make_trainer(
        tiny_overrides(
            tiny_shards,
            tmp_path,
            steps=3,
            pretrain=1,
            **{"dist.backend": "deepspeed", "train.precision": "bf16", "train.val_every": 100},
        ),
        resume="never",
    )
    backend = trainer.backend
    assert isinstance(backend, DeepSpeedBackend) and torch.distributed.get_world_size() == 1
    wrapper = backend.engine("g").optimizer
    inner = inner_optimizer(wrapper)
    assert inner is not None and inner is not wrapper  # DeepSpeed's bf16 wrapper around the client AdamW
    backend.set_lr("g", 0.0123)
    assert [g["lr"] for g in inner.param_groups] == [0.0123] * len(inner.param_groups)
    assert trainer.run() == 0
    rows = read_rows(tmp_path / "tiny")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["grad_norm_g"]) for r in rows)
    ckpt = tmp_path / "tiny" / "checkpoints" / "step_00000003"
    assert (ckpt / "engine_d" / "state").is_dir()
    master, module = consolidated_module_state(ckpt, "g"), backend.module("g").state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(master[k].bfloat16(), v) for k, v in module.items())
    assert any(not torch.equal(master[k], v.float()) for k, v in module.items())  # fp32 masters, not bf16


def test_two_rank_checkpoint_in_one_process_zero0_resumes_zero2_is_refused(
    runs: Path, tiny_shards: Path, tmp_path: Path, one_process: None
) -> None:
    from hpc_sr.errors import CheckpointError

    # refused before DeepSpeed is asked: a DDP checkpoint, and another ZeRO stage than the checkpoint's
    for tag, zero, match in (
        ("ddp", 0, "ddp checkpoint cannot resume with dist.backend=deepspeed"),
        ("z0_fp32_straight", 1, "checkpoint zero_stage 0 vs config dist.zero_stage 1"),
    ):
        shutil.copytree(runs / tag, tmp_path / f"refuse_{tag}")
        overrides = tiny_overrides(
            tiny_shards,
            tmp_path,
            name=f"refuse_{tag}",
            steps=STEPS + 1,
            pretrain=PRETRAIN,
            **{**COMMON, "dist.backend": "deepspeed", "dist.zero_stage": zero},
        )
        with pytest.raises(CheckpointError, match=match):
            make_trainer(overrides, resume="auto")
    for tag, zero in (("z0_fp32", 0), ("z2_fp32", 2)):
        shutil.copytree(runs / f"{tag}_straight", tmp_path / tag)
        overrides = tiny_overrides(
            tiny_shards,
            tmp_path,
            name=tag,
            steps=STEPS + 1,
            pretrain=PRETRAIN,
            **{**COMMON, "dist.backend": "deepspeed", "dist.zero_stage": zero},
        )
        if zero:
            with pytest.raises(CheckpointError, match="ZeRO-2 checkpoint written by 2 ranks cannot be"):
                make_trainer(overrides, resume="auto")
            continue
        trainer = make_trainer(overrides, resume="auto")
        assert trainer.step == STEPS
        saved = weights(runs, f"{tag}_straight", 0)["g"]
        resumed = trainer.backend.module("g").state_dict()
        assert all(torch.equal(v.float(), saved[k]) for k, v in resumed.items())
        assert trainer.run() == 0
        assert read_rows(tmp_path / tag)[-1]["world_size"] == 1


def test_engine_buckets_are_aligned_for_odd_parameter_counts() -> None:
    from hpc_sr.train.backends.deepspeed import engine_config

    odd = torch.nn.Linear(70_001, 1, bias=False)  # 70,001 parameters: odd, above the 65,536 floor
    zero = engine_config({"zero_optimization": {"stage": 2}}, odd)["zero_optimization"]
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        assert zero[key] % 512 == 0 and zero[key] >= 70_001
