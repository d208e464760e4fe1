"""The bench scripts run end to end with tiny sizes and end with one valid JSON line; their helpers work."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import PYTHON, REPO, subprocess_env
from tools import bench_common as bc
from tools.bench_scaling import allreduce_seconds
from tools.bench_train import BenchConfig, parse_variant, plan_configs

TINY = ["--channels", "4", "--blocks", "1", "--d-blocks", "2", "--batch", "4", "--patch", "8",
        "--hr-size", "32"]  # fmt: skip


def run_script(name: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run([PYTHON, str(REPO / "tools" / name), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)  # strict JSON: NaN would not parse back as a number


def test_bench_train_tiny(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    res = run_script("bench_train.py", *TINY, "--variants", "fp32,bf16+cl", "--backends", "ddp,zero1",
                     "--rounds", "2", "--window", "0.1", "--warmup", "1", "--sim-steps", "1",
                     "--out", str(out))  # fmt: skip
    assert json.loads(out.read_text()) == res
    assert res["bench"] == "train" and res["errors"] == {}
    rows = {(r["config"], r["phase"]): r for r in res["rows"]}
    assert set(rows) == {(c, p) for c in ("ddp/fp32", "ddp/bf16+cl", "zero1/fp32") for p in ("g", "gan")}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["windows"] == 2 and 0 < r["mfu"] < 1, r
    assert rows[("ddp/fp32", "g")]["ratio"] == 1.0 and rows[("ddp/fp32", "gan")]["ratio"] == 1.0
    # the GAN step does more work per image than the G step: more FLOPs, fewer images per second
    flops = res["train_flops_per_image"]
    assert flops["gan"] > flops["g"] == 3 * flops["g_forward"]
    assert rows[("ddp/fp32", "gan")]["images_per_s"] < rows[("ddp/fp32", "g")]["images_per_s"]
    assert rows[("ddp/bf16+cl", "g")]["peak_tflops"] >= rows[("ddp/fp32", "g")]["peak_tflops"]
    for phase in ("g", "gan"):
        assert 0 < res["simulate_share"][phase]["share"] < 1


def test_bench_scaling_tiny() -> None:
    res = run_script(
        "bench_scaling.py",
        *TINY,
        "--ranks",
        "1,2",
        "--repeats",
        "1",
        "--steps",
        "1",
        "--windows",
        "2",
        "--warmup",
        "1",
        "--probe-matmuls",
        "20",
    )
    rows = {(r["ranks"], r["phase"]): r for r in res["rows"]}
    assert set(rows) == {(n, p) for n in (1, 2) for p in ("g", "gan")}
    assert rows[(1, "g")]["efficiency"] == 1.0 and rows[(1, "g")]["allreduce_ms"] is None
    assert rows[(2, "gan")]["allreduce_ms"] > 0 and rows[(2, "g")]["images_per_s"] > 0
    assert rows[(1, "g")]["compute_ceiling"] == 1.0 and rows[(2, "g")]["compute_ceiling"] > 0
    proj = res["projection"]["rows"]
    assert {r["gpus"] for r in proj} == {8, 16, 64, 256}
    for phase in ("g", "gan"):  # crossing nodes costs more than NVLink alone
        by = {r["gpus"]: r for r in proj if r["phase"] == phase}
        assert by[16]["allreduce_ms"] > by[8]["allreduce_ms"] > 0


def test_bench_loader_tiny(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    args = ["--num", "40", "--hr-size", "16", "--workers", "0", "--repeats", "2", "--batch-size", "8"]
    res = run_script("bench_loader.py", *args, "--shard-size", "16", "--block-size", "8", "--out", str(out))
    assert json.loads(out.read_text()) == res and res["bench"] == "loader"
    rows = {(r["reader"], r["workers"]): r for r in res["rows"]}
    expected = {"npy files", "shards item", "shards block", "shards memory"}
    assert {name for name, _ in rows} == expected | {"pack npy->shards"}
    assert rows[("npy files", 0)]["ratio"] == 1.0
    for key, r in rows.items():
        assert r["pairs_per_s"] > 0
        if key[0] != "pack npy->shards":
            assert r["passes"] == 2


def test_plan_configs_and_variants() -> None:
    assert parse_variant("bf16+cl+compile") == ("bf16", True, True)
    configs = plan_configs("fp32,bf16+cl", "ddp,zero2", "bf16")
    assert [c.name for c in configs] == ["ddp/fp32", "ddp/bf16+cl", "zero2/bf16"]
    assert configs[-1] == BenchConfig("deepspeed", 2, "bf16")
    with pytest.raises(SystemExit, match="zero3"):
        plan_configs("fp32", "ddp,zero3", "fp32")
    with pytest.raises(SystemExit, match="unknown flag"):
        parse_variant("fp32+fast")


def test_allreduce_model() -> None:
    nbytes = 8e6
    assert allreduce_seconds(nbytes, 1, 8, 450, 100, 2e-5) == 0.0
    one_node = allreduce_seconds(nbytes, 8, 8, 450, 100, 0.0)
    assert one_node == pytest.approx(2 * 7 / 8 * nbytes / 450e9)
    two_nodes = allreduce_seconds(nbytes, 16, 8, 450, 100, 0.0)
    assert two_nodes == pytest.approx(one_node + 2 * 1 / 2 * nbytes / 100e9)


def test_cpu_peak_from_flags() -> None:
    assert bc.cpu_flops_per_cycle(["avx512f", "amx_bf16"]) == {"fp32": 64, "bf16": 1024, "fp16": 64}
    assert bc.cpu_flops_per_cycle(["avx2", "fma"])["fp32"] == 32
    assert bc.peak_tflops(torch.device("cpu"), "fp32", 2, override=3.5) == 3.5
    assert bc.peak_tflops(torch.device("cpu"), "fp32", 2) == pytest.approx(
        2 * bc.peak_tflops(torch.device("cpu"), "fp32", 1)
    )


def test_round_robin_interleaves() -> None:
    calls: list[str] = []

    def task(name: str) -> Any:
        def run() -> int:
            calls.append(name)
            time.sleep(0.002)
            return 2

        return run

    rates = bc.round_robin({"a": task("a"), "b": task("b"), "c": task("c")}, rounds=3, window_s=0.0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(v) == 3 and 0 < max(v) < 1000 for v in rates.values())


def test_peak_memory_sees_a_cpu_allocation() -> None:
    bc.fix_malloc_thresholds()
    with bc.PeakMemory(torch.device("cpu")) as small:
        torch.ones(1024).sum()
    with bc.PeakMemory(torch.device("cpu")) as big:
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        time.sleep(0.02)
        del x
    assert big.peak_mb > 48 and small.peak_mb < 16


def test_emit_writes_strict_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bc.emit({"a": float("nan"), "b": [1.5, float("inf")]}, str(tmp_path / "r.json"))
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == {"a": None, "b": [1.5, None]} == json.loads((tmp_path / "r.json").read_text())
