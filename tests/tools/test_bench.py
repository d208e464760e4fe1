"""The bench scripts run end to end with tiny sizes and end with one valid JSON line; their helpers work."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc_sr.data.augment import crop_and_augment, draw
from tests.conftest import PYTHON, REPO, subprocess_env
from tools import bench_common as bc
from tools.bench_loader import check_alternatives, gather_int32, gather_strided
from tools.bench_scaling import FileBarrier, allreduce_seconds
from tools.bench_train import BenchConfig, parse_variant, plan_configs, resolve_options

pytestmark = pytest.mark.slow  # the benchmark scripts as processes (DDP ranks among them)

G4 = '{"channels": 4, "blocks": 1}'
TINY = ["--g-options", G4, "--d-options", '{"channels": 4, "blocks": 2}', "--batch", "4", "--patch", "8",
        "--hr-size", "32"]  # fmt: skip


def run_script(name: str, *args: str, timeout: float = 180) -> dict[str, Any]:
    proc = subprocess.run([PYTHON, str(REPO / "tools" / name), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)  # strict JSON: NaN would not parse back as a number


def test_bench_train_tiny_two_archs(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    res = run_script("bench_train.py", "--arch", "srresnet,edsr", "--g-options", "tiny", "--d-options",
                     "tiny", "--batch", "4", "--patch", "8", "--hr-size", "32", "--variants", "fp32,bf16+cl",
                     "--backends", "ddp,zero1", "--rounds", "2", "--window", "0.05", "--warmup", "1",
                     "--sim-steps", "1", "--out", str(out))  # fmt: skip
    assert json.loads(out.read_text()) == res
    assert res["bench"] == "train" and res["errors"] == {}
    rows = {(r["config"], r["phase"]): r for r in res["rows"]}
    configs = [f"{a}:{c}" for a in ("srresnet", "edsr") for c in ("ddp/fp32", "ddp/bf16+cl", "zero1/fp32")]
    assert set(rows) == {(c, p) for c in configs for p in ("g", "gan")}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["windows"] == 2 and 0 < r["mfu"] < 1, r
    assert (
        rows[("srresnet:ddp/fp32", "g")]["ratio"] == 1.0
        and rows[("srresnet:ddp/fp32", "gan")]["ratio"] == 1.0
    )
    # every arch has its own FLOPs; the GAN step does more work per image than the G step
    flops = res["train_flops_by_arch"]
    assert flops["srresnet"]["g_forward"] != flops["edsr"]["g_forward"]
    for f in flops.values():
        assert f["gan"] > f["g"] == 3 * f["g_forward"]
    assert res["params_by_arch"]["edsr"]["g"] != res["params_by_arch"]["srresnet"]["g"]
    assert (
        rows[("srresnet:ddp/bf16+cl", "g")]["peak_tflops"] >= rows[("srresnet:ddp/fp32", "g")]["peak_tflops"]
    )
    for phase in ("g", "gan"):
        assert 0 < res["simulate_share"][phase]["share"] < 1


def test_bench_scaling_tiny_ddp_vs_independent() -> None:
    # UNet D: spectral-norm vectors are buffers; the back-end broadcasts them once, not before every forward
    res = run_script("bench_scaling.py", "--g-options", G4, "--d-arch", "unet", "--d-options", "tiny",
                     "--batch", "4", "--patch", "8", "--hr-size", "32", "--repeats", "1", "--steps", "1",
                     "--windows", "2", "--warmup", "1", "--probe-matmuls", "5", "--profile-steps", "1",
                     "--ddp-variants", "default,bcast")  # fmt: skip
    rows = {(r["job"], r["phase"]): r for r in res["rows"]}
    assert set(rows) == {(j, p) for j in ("1 process", "ddp 2", "indep 2") for p in ("g", "gan")}
    assert rows[("1 process", "g")]["efficiency"] == 1.0 and rows[("1 process", "g")]["allreduce_ms"] is None
    assert rows[("ddp 2", "gan")]["allreduce_ms"] > 0 and rows[("indep 2", "g")]["images_per_s"] > 0
    assert set(res["ddp_over_indep"]) == {"2|g", "2|gan"} and all(
        v > 0 for v in res["ddp_over_indep"].values()
    )
    assert res["replicas_identical"] is True and res["buffers"]["d"] > 0
    prof = res["profile"][0]
    assert prof["gan"]["comm_calls_per_step"] > prof["g"]["comm_calls_per_step"] > 0
    variants = {(r["variant"], r["phase"]): r for r in res["variants"]}
    assert set(variants) == {(v, p) for v in ("default", "bcast") for p in ("g", "gan")}
    assert all(r["replicas_identical"] for r in variants.values())
    proj = res["projection"]["rows"]
    assert {r["gpus"] for r in proj} == {8, 16, 64, 256}
    for phase in ("g", "gan"):  # crossing nodes costs more than NVLink alone
        by = {r["gpus"]: r for r in proj if r["phase"] == phase}
        assert by[16]["allreduce_ms"] > by[8]["allreduce_ms"] > 0


def test_bench_loader_tiny(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    res = run_script("bench_loader.py", "--num", "48", "--hr-size", "32", "--patch", "8", "--batches", "4,8",
                     "--rounds", "2", "--window", "0.05", "--shard-size", "16", "--block-size", "8",
                     "--cpu-device-rows", "--out", str(out))  # fmt: skip
    assert json.loads(out.read_text()) == res and res["bench"] == "loader"
    rows = {(r["reader"], r["batch"]): r for r in res["rows"]}
    readers = {"item", "block", "memory", "device", "v1 whole", "v1 per-item crop",
               "alt:current", "alt:int32-maps", "alt:strided", "alt:rows-2copies", "alt:crop-only",
               "alt:draw-only"}  # fmt: skip
    assert set(rows) == {(r, b) for r in readers for b in (4, 8)}
    for (reader, _b), r in rows.items():
        assert r["pairs_per_s"] > 0 and r["windows"] == 2, r
        if reader == "v1 whole":
            assert r["ratio_v1"] == 1.0
        if reader == "memory":
            assert r["ratio_memory"] == 1.0
    kinds = ("current", "int32-maps", "strided", "rows-2copies", "crop-only")
    assert res["alternatives_match_current"] == {k: True for k in kinds}
    assert set(res["memory_meets_target"]) == {"4", "8"}  # JSON keys


@pytest.mark.parametrize("c", [1, 3])
def test_gather_alternatives_equal_crop_and_augment(c: int) -> None:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(10, c, 20, 20, generator=g)
    lr = torch.rand(10, c, 10, 10, generator=g)
    if c == 1:
        assert all(check_alternatives(lr, hr, 4, 2).values())
        d = draw(6, (10, 10), 4, True, g)
        index = torch.tensor([9, 0, 3, 3, 7, 1])
        want = crop_and_augment(lr, hr, d, 4, 2, index=index)[1]
        got = gather_int32(hr, index, d.y * 2, d.x * 2, d.e, 8, 8)
        assert torch.equal(got, want) and torch.equal(
            gather_strided(hr, index, d.y * 2, d.x * 2, d.e, 8, 8), want
        )
    else:
        with pytest.raises(ValueError, match="one channel"):
            gather_int32(hr, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), 8, 8)


def test_bench_gpu_kit_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "kit"
    env = subprocess_env(BENCH_GPU_DEVICE="cpu", BENCH_GPU_TINY="1", PYTHON=PYTHON)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "tools" / "bench_gpu.sh"), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "errors.txt").read_text() == ""
    for name in ("env", "loader", "simulate", "train"):
        json.loads((out / f"{name}.json").read_text())
    assert not (out / "scaling.json").exists() and "scaling: skipped" in (out / "notes.txt").read_text()
    report = (out / "REPORT.md").read_text()
    for title in ("## Training streams", "## Simulator", "## Training step", "| ddp/bf16 | gan |"):
        assert title in report, title
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"env", "loader", "simulate", "train", "upscale"}
    assert took < 120, f"the CPU smoke run took {took:.0f} s"


def test_bench_report_names_what_is_missing(tmp_path: Path) -> None:
    from tools.bench_report import main as report_main

    (tmp_path / "train.json").write_text("{not json")
    (tmp_path / "errors.txt").write_text("train: exit 124 (timed out)\n")
    assert report_main([str(tmp_path)]) == 0
    text = (tmp_path / "REPORT.md").read_text()
    assert "Not measured (train.json is not JSON" in text and "Not measured (no result file)" in text
    assert "train: exit 124 (timed out)" in text
    assert report_main([str(tmp_path / "absent")]) == 2


def test_plan_configs_variants_and_options() -> None:
    assert parse_variant("bf16+cl+compile") == ("bf16", True, True)
    configs = plan_configs("fp32,bf16+cl", "ddp,zero2", "bf16")
    assert [c.name for c in configs] == ["ddp/fp32", "ddp/bf16+cl", "zero2/bf16"]
    assert configs[-1] == BenchConfig("deepspeed", 2, "bf16")
    zoo = plan_configs("fp32", "ddp", "fp32", ["srresnet", "rcan"])
    assert [c.name for c in zoo] == ["srresnet:ddp/fp32", "rcan:ddp/fp32"]
    with pytest.raises(SystemExit, match="zero3"):
        plan_configs("fp32", "ddp,zero3", "fp32")
    with pytest.raises(SystemExit, match="unknown flag"):
        parse_variant("fp32+fast")
    assert resolve_options("auto", "srresnet", {"srresnet": {"channels": 32}}, "g") == {"channels": 32}
    assert resolve_options('{"edsr": {"blocks": 2}}', "edsr", {}, "g") == {"blocks": 2}
    assert resolve_options("tiny", "rcan", {}, "g")["channels"] < 64
    with pytest.raises(SystemExit, match="model.g.options.chanels"):
        resolve_options('{"chanels": 8}', "srresnet", {}, "g")
    with pytest.raises(SystemExit, match="unknown 'nope'"):
        resolve_options("auto", "nope", {}, "g")


def test_file_barrier_waits_for_every_process(tmp_path: Path) -> None:
    late = FileBarrier(tmp_path, 1, 2)
    (tmp_path / "1.0").touch()  # rank 0 arrived at barrier 1
    late()  # rank 1 passes at once
    pid = os.fork()
    if pid == 0:  # a real second process arrives 0.2 s later at barrier 2
        time.sleep(0.2)
        (tmp_path / "2.0").touch()
        os._exit(0)
    t0 = time.monotonic()
    late()
    os.waitpid(pid, 0)
    assert time.monotonic() - t0 >= 0.15


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
