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
    procs = {r["config"]: r for r in res["process_rows"]}
    assert set(procs) == {"1 rank", "2 ranks", "2 processes"} and procs["1 rank"]["ratio"] == 1.0
    assert all(r["cutouts_per_s"] > 0 for r in procs.values())
