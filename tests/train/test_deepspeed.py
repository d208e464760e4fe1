"""DeepSpeed back-end: config building in-process; real 2-rank trainings (torchrun, gloo on CPU) for ZeRO 0/1/2
in fp32 and bf16: exact resume, identical G across ranks, ZeRO 0 vs DDP, export of a ZeRO-2 checkpoint.

All 2-rank trainings run in ONE torchrun launch (tests/train/ds_worker.py runs the jobs one after the other in
the same process group); the tests below read what it wrote.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc_sr.config import load_config
from hpc_sr.errors import TrainingError
from hpc_sr.train.backend_deepspeed import build_ds_config, consolidated_module_state
from tests.conftest import PYTHON, REPO, subprocess_env, tiny_overrides

WORKER = REPO / "tests" / "train" / "ds_worker.py"
DS_CONFIGS = REPO / "configs" / "deepspeed"
# (tag, zero stage, precision): covers ZeRO 0, 1, 2 and fp32, bf16
VARIANTS = [("z0_fp32", 0, "fp32"), ("z1_bf16", 1, "bf16"), ("z2_fp32", 2, "fp32"), ("z2_bf16", 2, "bf16")]
STEPS, PRETRAIN, SPLIT = 6, 2, 4  # GAN phase from step 3; the split run saves at 4 and resumes to 6
# ZeRO 0 fp32 vs DDP, same seed and data: measured max relative loss difference 0 on this CPU (see report);
# the bound leaves room for a different reduction order of the gradient all-reduce.
DDP_REL_TOL = 1e-5


def read_rows(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def loss_rows(run_dir: Path) -> list[tuple[int, float, float, float]]:
    return [(r["step"], r["loss_g_pixel"], r.get("loss_g_adv", 0.0), r.get("loss_d", 0.0)) for r in read_rows(run_dir)]


def torchrun(out_dir: Path, jobs: list[dict[str, Any]], timeout: int = 420) -> subprocess.CompletedProcess:
    jobs_file = out_dir / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(out_dir), str(jobs_file)]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch: for each variant an uninterrupted run and a run split at SPLIT; one DDP run."""
    out = tmp_path_factory.mktemp("ds_runs")
    common = {"train.schedule": "constant", "train.deterministic": "true", "train.ckpt_every": 100,
              "train.val_every": 100}

    def job(tag: str, name: str, steps: int, resume: str, **extra: object) -> dict[str, Any]:
        return {"tag": tag, "resume": resume,
                "overrides": tiny_overrides(tiny_shards, out, name=name, steps=steps, pretrain=PRETRAIN,
                                            **{**common, **extra})}

    jobs = [job("ddp", "ddp", STEPS, "never", **{"dist.backend": "ddp"})]
    for tag, zero, precision in VARIANTS:
        ds = {"dist.backend": "deepspeed", "dist.zero_stage": zero, "train.precision": precision}
        jobs += [job(f"{tag}_straight", f"{tag}_straight", STEPS, "never", **ds),
                 job(f"{tag}_part", f"{tag}_split", SPLIT, "never", **ds),
                 job(f"{tag}_resumed", f"{tag}_split", STEPS, "auto", **ds)]
    proc = torchrun(out, jobs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def weights(runs: Path, tag: str, rank: int) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(runs / f"{tag}_rank{rank}.pt", weights_only=True)["weights"]


# ----------------------------------------------------------------------------------------------- in-process
def test_config_is_filled_from_hpc_sr_config(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.batch_size=8", "train.grad_accum=2", "train.grad_clip=1.5",
                             "dist.zero_stage=2", "train.precision=fp16"])
    ds = build_ds_config(cfg, world_size=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (8, 2, 2)
    assert ds["gradient_clipping"] == 1.5 and ds["zero_optimization"]["stage"] == 2
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0 and not ds["bf16"]["enabled"]  # dynamic scaling


@pytest.mark.parametrize("name,overrides", [
    ("zero0.json", ["dist.zero_stage=0"]), ("zero1.json", ["dist.zero_stage=1"]),
    ("zero2.json", ["dist.zero_stage=2"]), ("bf16.json", ["train.precision=bf16", "dist.zero_stage=1"]),
    ("fp16.json", ["train.precision=fp16"])])
def test_shipped_json_files_build(name: str, overrides: list[str]) -> None:
    cfg = load_config(None, [f"dist.deepspeed_config={DS_CONFIGS / name}", "data.batch_size=4", *overrides])
    ds = build_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["zero_optimization"]["stage"] == cfg.dist.zero_stage
    assert ds["bf16"]["enabled"] == (cfg.train.precision == "bf16")


def test_json_disagreeing_with_config_names_each_key(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 32, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                                "bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    cfg = load_config(None, [f"dist.deepspeed_config={path}", "data.batch_size=4", "train.grad_accum=1",
                             "dist.zero_stage=1"])
    with pytest.raises(TrainingError) as err:
        build_ds_config(cfg, world_size=1)
    msg = str(err.value)
    for needle in ("train_batch_size: ", "has 32", "gives 4", "gradient_clipping: ", "has 1.0", "gives 0.0",
                   "bf16.enabled", "train.precision", "zero_optimization.stage", "has 2", "gives 1", str(path)):
        assert needle in msg, needle
    assert "gradient_accumulation_steps" not in msg  # agrees


def test_missing_json_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(None, [f"dist.deepspeed_config={tmp_path / 'nope.json'}"])
    with pytest.raises(TrainingError, match="nope.json"):
        build_ds_config(cfg, world_size=1)


# ----------------------------------------------------------------------------------------------- 2 ranks
@pytest.mark.parametrize("tag", [v[0] for v in VARIANTS])
def test_resume_gives_the_losses_of_an_uninterrupted_run(runs: Path, tag: str) -> None:
    straight, split = loss_rows(runs / f"{tag}_straight"), loss_rows(runs / f"{tag}_split")
    assert [r[0] for r in split] == list(range(1, STEPS + 1))
    assert all(r[2] > 0 and r[3] > 0 for r in straight if r[0] > PRETRAIN)  # GAN phase really ran
    assert split == straight  # bit-identical, before and after the resume at step SPLIT
    a, b = weights(runs, f"{tag}_straight", 0), weights(runs, f"{tag}_resumed", 0)
    for name in ("g", "d"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


@pytest.mark.parametrize("tag", [v[0] for v in VARIANTS])
def test_ranks_hold_identical_weights(runs: Path, tag: str) -> None:
    w0, w1 = weights(runs, f"{tag}_straight", 0), weights(runs, f"{tag}_straight", 1)
    assert set(w0) == {"g", "d"}
    for name in w0:
        assert all(torch.equal(w0[name][k], w1[name][k]) for k in w0[name]), f"{tag}: {name} differs across ranks"
    rows = read_rows(runs / f"{tag}_straight")
    assert {r["world_size"] for r in rows} == {2}
    assert all(math.isfinite(r["loss_g_pixel"]) for r in rows)


def test_bf16_engines_train_in_bf16(runs: Path) -> None:
    ckpt = runs / "z2_bf16_straight" / "checkpoints" / f"step_{STEPS:08d}"
    saved = torch.load(ckpt / "engine_g" / "state" / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)
    assert {v.dtype for v in saved["module"].values() if v.is_floating_point()} == {torch.bfloat16}
    master = consolidated_module_state(ckpt, "g")  # fp32 master weights, which round to the bf16 module
    assert all(v.dtype == torch.float32 for v in master.values())
    assert all(torch.equal(master[k].bfloat16(), saved["module"][k]) for k in master)
    assert any(not torch.equal(master[k], master[k].bfloat16().float()) for k in master)


def test_zero0_fp32_matches_ddp(runs: Path) -> None:
    ddp, ds = loss_rows(runs / "ddp"), loss_rows(runs / "z0_fp32_straight")
    assert [r[0] for r in ddp] == [r[0] for r in ds]
    for a, b in zip(ddp, ds):
        for x, y in zip(a[1:], b[1:]):
            assert math.isclose(x, y, rel_tol=DDP_REL_TOL, abs_tol=1e-9), (a, b)


def test_generator_exported_from_zero2_checkpoint_evaluates_like_the_engine(runs: Path, tiny_shards: Path,
                                                                           tmp_path: Path) -> None:
    from hpc_sr.eval.evaluate import evaluate
    from hpc_sr.train.checkpoint import atomic_torch_save, export_generator, generator_payload

    ckpt = runs / "z2_fp32_straight" / "checkpoints" / f"step_{STEPS:08d}"
    assert (ckpt / "engine_g" / "latest").read_text().strip() == "state"  # relative: survives the rename
    exported = export_generator(ckpt, tmp_path / "G.pt", ema=False)
    engine_g = weights(runs, "z2_fp32_straight", 0)["g"]
    payload = torch.load(exported, weights_only=True)
    assert set(payload["state_dict"]) == set(engine_g)
    assert all(torch.equal(payload["state_dict"][k], engine_g[k]) for k in engine_g)
    own = tmp_path / "engine_G.pt"
    cfg = load_config(runs / "z2_fp32_straight" / "config.yaml")
    atomic_torch_save(generator_payload(json.loads(json.dumps(payload["model"])), cfg.data.scale, engine_g,
                                        "engine", STEPS), own)
    a = evaluate(exported, tiny_shards, split="test", quiet=True)
    b = evaluate(own, tiny_shards, split="test", quiet=True)
    assert a["n"] == b["n"] > 0
    for key in ("psnr", "ssim", "mse"):
        assert a["model"][key] == b["model"][key], key
