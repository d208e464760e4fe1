"""Early stopping on validation PSNR in real tiny runs: where it stops, what it leaves, and exact resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from hpc_sr.apps import runs as agg
from hpc_sr.config import ConfigError, load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.models.checkpoint_layout import TRAINER_FILE
from hpc_sr.train.components import check_config
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides

VAL_EVERY = 2
# lr 0 and no EMA: G never changes, so every validation gives the PSNR of the first: a plateau from step 2
PLATEAU = {
    "train.lr_g": 0.0,
    "train.ema_decay": 0.0,
    "train.val_every": VAL_EVERY,
    "train.ckpt_every": VAL_EVERY,
    "train.keep_last": 20,
    "log.image_every": 0,
}


def run(data: Path, runs: Path, patience: int, steps: int = 40, **extra: object) -> Trainer:
    overrides = tiny_overrides(
        data, runs, name="es", steps=steps, pretrain=steps,
        **{**PLATEAU, "train.early_stop_patience": patience, **extra},
    )  # fmt: skip
    trainer = Trainer(load_config(None, overrides), DistEnv(), torch.device("cpu"))
    assert trainer.run() == 0
    return trainer


def records(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


def test_plateau_stops_patience_validations_after_the_best(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patience = 2
    trainer = run(tiny_shards, tmp_path, patience)
    run_dir = tmp_path / "es"
    best_step = VAL_EVERY  # the first validation is the best; none after it improves
    stop = best_step + patience * VAL_EVERY
    assert trainer.step == stop
    vals = records(run_dir, "val")
    assert [r["step"] for r in vals] == [2, 4, 6]
    assert len({r["model"]["psnr"] for r in vals}) == 1  # the plateau is exact
    assert max(r["step"] for r in records(run_dir, "train")) == stop
    (es,) = records(run_dir, "early_stop")
    best = vals[0]["model"]["psnr"]
    assert (es["step"], es["best_step"], es["best_psnr"], es["stale_validations"]) == (
        stop,
        2,
        best,
        patience,
    )
    out = capsys.readouterr().out
    assert f"early stop at step {stop}: best val PSNR {best:.3f} dB at step {best_step}" in out
    assert checkpoint_steps(run_dir) == [2, 4, 6]  # a final checkpoint at the stop
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    state = torch.load(run_dir / "checkpoints" / "step_00000006" / TRAINER_FILE, weights_only=True)
    assert (state["step"], state["best_step"], state["stale_validations"]) == (stop, best_step, patience)
    (row,) = agg.aggregate([run_dir])[0]
    assert (row["status"], row["best_step"], row["step"]) == ("early-stopped", best_step, stop)


def test_min_delta_counts_small_gains_as_none(tiny_shards: Path, tmp_path: Path) -> None:
    """A learning run whose gains are all below min_delta stops as a plateau does; best is the max."""
    trainer = run(tiny_shards, tmp_path, 1, **{"train.lr_g": 1e-3, "train.early_stop_min_delta": 1000.0})
    run_dir = tmp_path / "es"
    assert trainer.step == 4
    vals = {r["step"]: r["model"]["psnr"] for r in records(run_dir, "val")}
    (es,) = records(run_dir, "early_stop")
    assert es["best_psnr"] == max(vals.values()) and vals[es["best_step"]] == es["best_psnr"]


def test_resume_keeps_the_patience_count_and_an_early_stopped_run_stays_done(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patience = 3
    run(tiny_shards, tmp_path, patience)
    run_dir = tmp_path / "es"
    assert checkpoint_steps(run_dir) == [2, 4, 6, 8]  # uninterrupted: stops at 2 + 3 x 2
    # resuming the finished run trains nothing and stops again at once
    capsys.readouterr()
    again = run(tiny_shards, tmp_path, patience)
    assert again.step == 8 and records(run_dir, "train")[-1]["step"] == 8
    assert "early stop at step 8: best val PSNR" in capsys.readouterr().out
    # a "crash" after the step-4 checkpoint: the resumed run (1 stale validation saved) still stops at 8
    for step in (6, 8):
        shutil.rmtree(run_dir / "checkpoints" / f"step_{step:08d}")
    (run_dir / "checkpoints" / "latest").write_text("step_00000004\n")
    resumed = run(tiny_shards, tmp_path, patience)
    assert str(resumed.resumed_from).endswith("step_00000004") and resumed.step == 8
    assert records(run_dir, "early_stop")[-1]["step"] == 8
    (row,) = agg.aggregate([run_dir])[0]
    assert row["status"] == "early-stopped" and row["segments"] == 3


def test_a_checkpoint_without_the_count_resumes_and_counts_afresh(tiny_shards: Path, tmp_path: Path) -> None:
    run(tiny_shards, tmp_path, 2, steps=4)  # plain run to step 4 (validations at 2, 4: 1 stale)
    run_dir = tmp_path / "es"
    path = run_dir / "checkpoints" / "step_00000004" / TRAINER_FILE
    state = torch.load(path, weights_only=True)
    assert state["stale_validations"] == 1
    for key in ("best_step", "stale_validations"):  # as written before early stopping existed
        del state[key]
    torch.save(state, path)
    resumed = run(tiny_shards, tmp_path, 2, steps=40)
    assert str(resumed.resumed_from).endswith("step_00000004")
    assert resumed.step == 4 + 2 * VAL_EVERY  # the count starts at 0 on resume: 2 more validations
    (es,) = records(run_dir, "early_stop")
    assert es["best_step"] == 0  # not known from the old checkpoint


def test_early_stop_keys_are_checked(tiny_shards: Path, tmp_path: Path) -> None:
    def cfg(**extra: object):  # type: ignore[no-untyped-def]
        return load_config(None, tiny_overrides(tiny_shards, tmp_path, **extra))

    with pytest.raises(ConfigError, match=re.escape("train.early_stop_patience=-1: expected 0 (off)")):
        check_config(cfg(**{"train.early_stop_patience": -1}))
    with pytest.raises(ConfigError, match=re.escape("train.early_stop_min_delta=-0.5: expected dB >= 0")):
        check_config(cfg(**{"train.early_stop_min_delta": -0.5}))
    with pytest.raises(ConfigError, match=r"early_stop_patience=3 counts validations, but train.val_every=0"):
        check_config(cfg(**{"train.early_stop_patience": 3, "train.val_every": 0}))


@pytest.mark.slow  # a real 2-rank torchrun/gloo job
def test_two_ranks_stop_early_at_the_same_step_on_a_fold(tiny_shards: Path, tmp_path: Path) -> None:
    """Each rank validates its share of the held-out fold; the reduced PSNR is what both count, so both stop
    at the same step (a disagreement would hang the next collective or fail the job)."""
    import subprocess

    from tests.conftest import REPO, subprocess_env, torchrun_cmd

    overrides = tiny_overrides(
        tiny_shards, tmp_path, name="es", steps=40, pretrain=40,
        **{**PLATEAU, "train.early_stop_patience": 2, "data.folds": 3, "data.fold": 1, "data.val_images": 0},
    )  # fmt: skip
    cmd = torchrun_cmd(2, REPO / "tests" / "train" / "ddp_worker.py", str(tmp_path), *overrides)
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "es"
    (es,) = records(run_dir, "early_stop")
    assert (es["step"], es["best_step"]) == (6, 2) and max(r["step"] for r in records(run_dir, "train")) == 6
    assert {r["model"]["n"] for r in records(run_dir, "val")} == {14}  # fold 1: 14 of the 43 train+val pairs
    w0, w1 = (torch.load(tmp_path / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0["g"][k], w1["g"][k]) for k in w0["g"])
