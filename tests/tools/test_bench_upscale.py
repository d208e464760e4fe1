"""tools/bench_upscale.py end to end with a tiny generator and a few 12x12 cutouts: all rows, one JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.apps.inference.test_runner import export, generator
from tests.conftest import PYTHON, REPO, subprocess_env


@pytest.mark.slow  # ~40 s: five process runs beside the in-process rows
def test_bench_upscale_tiny(tmp_path: Path) -> None:
    ckpt = export(generator(), tmp_path / "G.pt")
    out = tmp_path / "upscale.json"
    argv = ["--checkpoint", str(ckpt), "--num", "6", "--side", "12", "--batches", "2,4", "--rounds", "1",
            "--window", "0.01", "--out", str(out)]  # fmt: skip
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "bench_upscale.py"), *argv], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == res and res["bench"] == "upscale"
    configs = {r["config"]: r for r in res["rows"]}
    assert {"files", "stack b=2", "stack b=4", "io only"} <= set(configs)
    assert ("onnx" in configs) != ("onnx" in res["errors"]) and ("catalog" in configs) != (
        "catalog" in res["errors"]
    )
    assert configs["stack b=2"]["ratio"] == 1.0 and all(r["cutouts_per_s"] > 0 for r in res["rows"])
    # the model's forward alone on resident batches, per batch size (and the onnx session's when it runs)
    assert {"resident b=2", "resident b=4"} <= set(configs)
    assert ("resident onnx b=2" in configs) == ("onnx" in configs)
    resident_of = {"files": "resident b=2", "stack b=2": "resident b=2", "stack b=4": "resident b=4",
                   "catalog": "resident b=2", "onnx": "resident onnx b=2"}  # fmt: skip
    for name, r in configs.items():  # each engine row over the resident row of its engine and batch size
        assert ("of_resident" in r) == (name in resident_of), name
        if name in resident_of:
            want = r["cutouts_per_s"] / configs[resident_of[name]]["cutouts_per_s"]
            assert r["of_resident"] is not None and abs(r["of_resident"] - want) <= 0.02 * want + 0.001, name
    table = proc.stdout.splitlines()
    header = next(line for line in table if line.startswith("config"))
    assert "of resident" in header and any(line.startswith("resident b=4 ") for line in table)
    procs = {r["config"]: r for r in res["process_rows"]}
    assert set(procs) == {"1 rank", "2 ranks", "2 processes"} and procs["1 rank"]["ratio"] == 1.0
    assert all(r["cutouts_per_s"] > 0 for r in procs.values())
    assert "fits io only" in configs and "fits io only, durability=file" in configs
    assert res["durability_ratio"]["of_medians"] > 0


def bench(*argv: str) -> tuple[dict, list[str]]:
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "bench_upscale.py"), *argv], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), lines


def test_bench_upscale_io_only_compares_batch_and_file_durability_of_fits_cutouts() -> None:
    pytest.importorskip("astropy")
    res, table = bench("--io-only", "--num", "6", "--side", "12", "--rounds", "2", "--window", "0.01")
    configs = {r["config"]: r for r in res["rows"]}
    assert set(configs) == {"io only", "catalog io only", "fits io only", "fits io only, durability=file"}
    assert res["checkpoint"] is None and res["process_rows"] == [] and configs["io only"]["ratio"] == 1.0
    ratio = res["durability_ratio"]
    want = (
        configs["fits io only"]["cutouts_per_s"] / configs["fits io only, durability=file"]["cutouts_per_s"]
    )
    assert len(ratio["per_round"]) == 2 and abs(ratio["of_medians"] - want) <= 0.02 * want
    assert any(line.startswith("fits io only, batch over file durability:") for line in table)


def test_bench_upscale_memory_runs_each_catalog_in_a_fresh_process() -> None:
    res, table = bench("--memory", "--memory-rows", "300,600", "--memory-side", "8")
    rows = res["rows"]
    assert [r["rows"] for r in rows] == [300, 600] and [r["done_rows"] for r in rows] == [300, 600]
    assert all(r["peak_rss_mib"] >= r["rss_before_mib"] > 0 for r in rows) and rows[0]["peak_ratio"] == 1.0
    assert rows[1]["peak_ratio"] == round(rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"], 3)
    assert any("peak RSS MiB" in line for line in table)
