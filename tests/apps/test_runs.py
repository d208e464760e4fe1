"""`hpc-sr runs` on tiny runs: plain, requeued, still running, TensorBoard-only."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc_sr.apps import runs as agg
from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import PYTHON, subprocess_env, tiny_overrides

COMMON = {"train.val_every": 2, "train.ckpt_every": 2, "train.keep_last": 10, "log.image_every": 0}
LRS = {"lr_hi": 1e-3, "lr_lo": 3e-4, "requeued": 1e-3, "truncated": 3e-4, "tb_only": 1e-3}
_SWEEPS: dict[Path, dict[str, Any]] = {}


def train(data: Path, runs: Path, name: str, steps: int, resume: str = "auto", **extra: Any) -> Trainer:
    overrides = tiny_overrides(data, runs, name=name, steps=steps, pretrain=steps,
                               **{**COMMON, "train.lr_g": LRS.get(name, 1e-3), **extra})
    trainer = Trainer(load_config(None, overrides), DistEnv(), torch.device("cpu"), resume=resume)
    assert trainer.run() == 0
    return trainer


def build_sweep(data: Path, root: Path) -> dict[str, Any]:
    """Five runs under root/sweep (built once per session, shared with test_checkpoints.py).

    requeued: segment 1 runs to step 3, then "crashes" before its step-3 checkpoint survives (deleted), so
    segment 2 resumes from step 2 and logs steps 3..6 again; the first segment's step-3 records are orphans.
    truncated: metrics.jsonl cut after the step-2 validation, in the middle of the next line (a run writing).
    tb_only: metrics.jsonl moved out of the run (kept as root/tb_only.metrics.jsonl for the expectations).
    """
    if root in _SWEEPS:
        return _SWEEPS[root]
    sweep = root / "sweep"
    trainers = {n: train(data, sweep, n, steps=4) for n in ("lr_hi", "lr_lo", "truncated", "tb_only")}
    train(data, sweep, "requeued", steps=3)
    shutil.rmtree(sweep / "requeued" / "checkpoints" / "step_00000003")
    trainers["requeued"] = train(data, sweep, "requeued", steps=6)
    assert trainers["requeued"].resumed_from.name == "step_00000002"

    jsonl = sweep / "truncated" / "metrics.jsonl"
    lines = jsonl.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"kind": "val"' in line) + 1
    jsonl.write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2])
    shutil.move(sweep / "tb_only" / "metrics.jsonl", root / "tb_only.metrics.jsonl")
    _SWEEPS[root] = {"sweep": sweep, "root": root, "trainers": trainers}
    return _SWEEPS[root]


@pytest.fixture(scope="module")
def sweep(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_sweep(tiny_shards, tmp_path_factory.getbasetemp() / "tools_sweep")


# ----------------------------------------------------------------------------------------------- oracle
def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Complete lines only (a partial last line has no newline)."""
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def expected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the table should say, straight from the records: segments split at "start"; a segment that
    starts at step s invalidates earlier records past s."""
    segments: list[list[dict[str, Any]]] = []
    for r in rows:
        if r["kind"] == "start":
            segments.append([])
        segments[-1].append(r)
    walls = [(max(r["wall"] for r in seg), seg[0]["world_size"]) for seg in segments]  # orphans took time too
    scalar_walls = [max(r["wall"] for r in seg if r["kind"] in ("train", "val")) for seg in segments]
    live: list[dict[str, Any]] = []
    for seg in segments:
        live = [r for r in live if r["step"] <= seg[0]["step"]] + seg
    train = {r["step"]: r for r in live if r["kind"] == "train"}
    val = {r["step"]: r for r in live if r["kind"] == "val"}
    final = val[max(val)]
    best_step = max(val, key=lambda s: val[s]["model"]["psnr"])
    return {
        "segments": len(segments), "step": max(r["step"] for r in live), "final_step": max(val),
        "final_psnr": final["model"]["psnr"], "final_ssim": final["model"]["ssim"], "best_step": best_step,
        "best_psnr": val[best_step]["model"]["psnr"], "bicubic_psnr": final["bicubic"]["psnr"],
        "gain_db": final["model"]["psnr"] - final["bicubic"]["psnr"],
        "images_per_s": statistics.median(r["images_per_s"] for r in train.values()),
        "wall_s": sum(w for w, _ in walls), "scalar_wall_s": sum(scalar_walls),
        "device_hours": sum(w * n for w, n in walls) / 3600,
        "train_steps": sorted(train), "val_steps": sorted(val),
    }


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = agg.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {r["run"]: r for r in csv.DictReader(io.StringIO(text))}


# ----------------------------------------------------------------------------------------------- tests
def test_csv_numbers_equal_those_computed_from_metrics_jsonl(sweep: dict[str, Any],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(capsys, str(sweep["sweep"]), "--format", "csv")
    assert rc == 0, err
    table = csv_rows(out)
    assert set(table) == set(LRS)
    for name, row in table.items():
        tb = name == "tb_only"
        source = sweep["root"] / "tb_only.metrics.jsonl" if tb else sweep["sweep"] / name / "metrics.jsonl"
        exp = expected(jsonl_rows(source))
        for key in ("segments", "step", "final_step", "best_step"):
            assert int(row[key]) == exp[key], (name, key)
        for key in ("final_psnr", "final_ssim", "best_psnr", "bicubic_psnr", "gain_db", "images_per_s"):
            # TensorBoard stores float32 scalars; metrics.jsonl round-trips float64 exactly.
            tol = {"rel": 1e-6, "abs": 1e-5} if tb else {"rel": 1e-12}
            assert float(row[key]) == pytest.approx(exp[key], **tol), (name, key)
        if tb:  # TensorBoard's last event is the last validation (the checkpoint record comes after it)
            assert float(row["wall_s"]) == pytest.approx(exp["scalar_wall_s"], abs=0.5)
            assert float(row["device_hours"]) == pytest.approx(exp["scalar_wall_s"] / 3600, abs=0.5 / 3600)
        else:
            assert float(row["wall_s"]) == pytest.approx(exp["wall_s"], rel=1e-12), name
            assert float(row["device_hours"]) == pytest.approx(exp["device_hours"], rel=1e-12), name
        assert float(row["train.lr_g"]) == LRS[name]
    assert table["truncated"]["status"] == "running"  # fresh file, not at train.steps
    assert {table[n]["status"] for n in ("lr_hi", "lr_lo", "requeued", "tb_only")} == {"finished"}
    assert table["requeued"]["train.steps"] == "6" and table["lr_hi"]["train.steps"] == "4"


def test_requeued_run_drops_orphans_and_keeps_the_last_value_per_step(sweep: dict[str, Any]) -> None:
    run = sweep["sweep"] / "requeued"
    rows = jsonl_rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "start"] == [0, 2]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [2, 3, 4, 6]  # step 3 orphaned by the resume
    history = agg.read_run(run)
    assert sorted(history.train) == list(range(1, 7)) and sorted(history.val) == [2, 4, 6]
    step3 = [r for r in rows if r["kind"] == "train" and r["step"] == 3]
    assert len(step3) == 2 and step3[0]["lr_g"] != step3[1]["lr_g"]  # schedule over 3 vs 6 steps
    assert history.train[3]["lr_g"] == step3[1]["lr_g"]
    assert [s.start_step for s in history.segments] == [0, 2]


def test_truncated_last_line_is_skipped_and_tensorboard_only_runs_are_read(sweep: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    truncated = agg.read_run(sweep["sweep"] / "truncated")
    assert truncated.bad_lines == 1 and sorted(truncated.train) == [1, 2] and sorted(truncated.val) == [2]
    tb = agg.read_run(sweep["sweep"] / "tb_only")
    assert tb.source == "tensorboard"
    exp = expected(jsonl_rows(sweep["root"] / "tb_only.metrics.jsonl"))
    assert sorted(tb.train) == exp["train_steps"] and sorted(tb.val) == exp["val_steps"]
    requeued = Path(shutil.copytree(sweep["sweep"] / "requeued", tmp_path / "requeued"))
    (requeued / "metrics.jsonl").unlink()
    tb = agg.read_run(requeued)  # one event file per segment; the orphaned step-3 validation is dropped
    assert len(tb.segments) == 2 and sorted(tb.train) == list(range(1, 7)) and sorted(tb.val) == [2, 4, 6]
    step3 = [r for r in jsonl_rows(sweep["sweep"] / "requeued" / "metrics.jsonl") if r["kind"] == "train"
             and r["step"] == 3]
    assert tb.train[3]["lr_g"] == pytest.approx(step3[-1]["lr_g"], rel=1e-6)


def test_markdown_shows_only_differing_config_keys_and_stale_runs_are_stopped(
        sweep: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(capsys, str(sweep["sweep"]), "--stale-after", "0")
    assert rc == 0
    lines = out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "run" and {"train.lr_g", "train.steps", "best_psnr", "device_hours"} <= set(header)
    assert "data.options.num_workers" not in header and "log.name" not in header
    assert set(lines[1].replace("|", "")) == {"-"}
    body = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(body) == set(LRS)
    assert body["truncated"]["status"] == "stopped"


def test_by_key_groups_runs_with_mean_and_std(sweep: dict[str, Any],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(capsys, str(sweep["sweep"]), "--format", "csv")
    best = {name: float(r["best_psnr"]) for name, r in csv_rows(out).items()}
    rc, out, err = run_main(capsys, str(sweep["sweep"]), "--by", "train.lr_g", "--format", "csv")
    assert rc == 0, err
    groups = {float(r["train.lr_g"]): r for r in csv.DictReader(io.StringIO(out))}
    assert set(groups) == {1e-3, 3e-4}
    for lr, group in groups.items():
        members = [n for n in LRS if LRS[n] == lr]
        assert sorted(group["members"].split()) == sorted(members) and int(group["runs"]) == len(members)
        values = [best[n] for n in members]
        assert float(group["best_psnr_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert float(group["best_psnr_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
    rc, _, err = run_main(capsys, str(sweep["sweep"]), "--by", "train.lr")
    assert rc == 2 and "train.lr" in err and "train.lr_g" in err  # unknown key named, closest suggested


def test_json_rows_and_plot(sweep: dict[str, Any], capsys: pytest.CaptureFixture[str],
                            tmp_path: Path) -> None:
    png = tmp_path / "plots" / "curves.png"
    rc, out, err = run_main(capsys, str(sweep["sweep"] / "lr_hi"), str(sweep["sweep"] / "requeued"), "--json",
                            "--plot", str(png))
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["run"] for r in rows] == ["lr_hi", "requeued"]
    assert rows[1]["config"] == {"train.steps": 6, "train.pretrain_steps": 6} and rows[1]["segments"] == 2
    assert all(math.isfinite(r["best_psnr"]) for r in rows)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["curves.png"]  # no temp file left behind


def test_bad_paths_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_main(capsys, str(tmp_path / "nope"))
    assert rc == 2 and "nope" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main(capsys, str(tmp_path / "empty"))
    assert rc == 2 and "no run directories" in err


def test_runs_through_the_command(sweep: dict[str, Any]) -> None:
    proc = subprocess.run([PYTHON, "-m", "hpc_sr", "runs", str(sweep["sweep"] / "lr_lo"), "--format", "csv"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert csv_rows(proc.stdout)["lr_lo"]["status"] == "finished"


def test_noise_ceiling_is_above_bicubic_and_noise_free_render_matches_hr_closely(tiny_shards: Path) -> None:
    from hpc_sr.studies.ceiling import ceiling

    result = ceiling(str(tiny_shards), split="train", limit=16)
    assert result["ceiling"]["n"] == 16
    # knowing the noise-free sky beats bicubic; the LR projection can only lower the error further
    assert result["ceiling"]["psnr"] > result["bicubic"]["psnr"]
    assert result["ceiling"]["mse"] <= result["noise_free"]["mse"] + 1e-12
