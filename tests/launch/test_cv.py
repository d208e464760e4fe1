"""`hpc-sr cv`: every fold of a tiny k-fold cross-validation end to end, resumable, summarised like
`hpc-sr runs --by data.fold`; `--slurm --dry-run` and `submit --folds` print one job array."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from hpc_sr import cli
from hpc_sr.apps import runs as agg
from hpc_sr.config import config_to_dict, load_config
from tests.conftest import tiny_overrides

FOLDS = 3
# learning runs that stop early at step 4: the first validation (step 2) is the best by more than any later
# gain can be (min_delta), patience 1
TINY = {
    "train.val_every": 2,
    "train.ckpt_every": 2,
    "train.keep_last": 10,
    "train.early_stop_patience": 1,
    "train.early_stop_min_delta": 1000.0,
    "log.image_every": 0,
    "log.log_every": 2,
    "data.val_images": 0,
}


def write_config(data: Path, tmp_path: Path) -> Path:
    cfg = load_config(
        None, tiny_overrides(data, tmp_path / "runs", name="cvtiny", steps=10, pretrain=10, **TINY)
    )
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def cv(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["cv", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def best_of(run_dir: Path) -> tuple[float, float]:
    vals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r["model"] for r in vals if r["kind"] == "val"]
    best = max(vals, key=lambda m: m["psnr"])
    return best["psnr"], best["ssim"]


def test_cv_trains_every_fold_resumes_skips_done_ones_and_summarises(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tiny_shards, tmp_path)
    root = tmp_path / "runs" / "cvtiny"
    rc, out, err = cv(
        capsys, str(config), "--folds", str(FOLDS), "train.lr_g=2e-3"
    )  # overrides after options
    assert rc == 0, err
    assert sorted(p.name for p in root.iterdir()) == [f"fold_{k}" for k in range(FOLDS)]
    fold_sizes = []
    for k in range(FOLDS):
        run = root / f"fold_{k}"
        saved = load_config(run / "config.yaml")
        assert (saved.data.folds, saved.data.fold, saved.train.lr_g) == (FOLDS, k, 2e-3)
        assert f"fold {k}/{FOLDS}: training {run}" in out
        assert "early stop at step 4: best val PSNR" in out
        val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        fold_sizes.append(next(r for r in val if r["kind"] == "val")["model"]["n"])
    assert sorted(fold_sizes) == [14, 14, 15]  # 43 train+val pairs of the tiny set in 3 balanced folds
    pairs = [json.loads((root / f"fold_{k}" / "pairs.json").read_text()) for k in range(FOLDS)]
    split = json.loads((tiny_shards / "manifest.json").read_text())["split"]["indices"]
    pool = sorted(split["train"] + split["val"])
    assert sorted(i for p in pairs for i in p["val"]) == pool  # each pair validated on in exactly one fold
    assert all(sorted(p["train"] + p["val"]) == pool for p in pairs)  # the rest of the pool trains
    assert [len(p["val"]) for p in pairs] == fold_sizes and {p["folds"] for p in pairs} == {FOLDS}

    best = [best_of(root / f"fold_{k}") for k in range(FOLDS)]
    mean, std = statistics.fmean(b[0] for b in best), statistics.stdev(b[0] for b in best)
    ssim_mean = statistics.fmean(b[1] for b in best)
    summary = out[out.index("| data.fold |") :]
    for k in range(FOLDS):
        assert re.search(rf"\| {k} \| fold_{k} \| early-stopped \| 4 \| [24] \| {best[k][0]:.3f} \|", summary)
    assert (
        f"over all {FOLDS} folds: best val PSNR {mean:.3f} +- {std:.3f} dB, SSIM {ssim_mean:.4f}" in summary
    )

    # `hpc-sr runs DIR --by data.fold`: one group per fold, then mean +- std over the folds
    capsys.readouterr()
    assert agg.main([str(root), "--by", "data.fold", "--format", "csv"]) == 0
    groups = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(g["data.fold"]) for g in groups] == list(range(FOLDS))
    assert [float(g["best_psnr_mean"]) for g in groups] == pytest.approx([b[0] for b in best], rel=1e-12)
    assert [float(g["best_ssim_mean"]) for g in groups] == pytest.approx([b[1] for b in best], rel=1e-12)
    assert agg.main([str(root), "--by", "data.fold"]) == 0
    assert f"over all {FOLDS} runs: best val PSNR {mean:.3f} +- {std:.3f} dB" in capsys.readouterr().out

    # again: every fold is done and skipped; a fold whose last checkpoint was lost resumes, alone
    shutil.rmtree(root / "fold_2" / "checkpoints" / "step_00000004")
    (root / "fold_2" / "checkpoints" / "latest").write_text("step_00000002\n")
    rc, out, err = cv(capsys, "--folds", str(FOLDS), "--config", str(config), "train.lr_g=2e-3")
    assert rc == 0, err
    assert [line for line in out.splitlines() if "skipped" in line] == [
        f"fold {k}/{FOLDS}: {root / f'fold_{k}'} early-stopped, skipped" for k in (0, 1)
    ]
    assert f"fold 2/{FOLDS}: training {root / 'fold_2'}" in out and "resumed from" in out
    assert (root / "fold_2" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    rc, out, _ = cv(capsys, str(config), "--folds", str(FOLDS), "train.lr_g=2e-3", "--dry-run")
    assert rc == 0 and out.count("skipped") == FOLDS and "training" not in out


def directives(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))


def test_slurm_dry_run_is_one_job_array_over_the_folds(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tiny_shards, tmp_path)
    root = tmp_path / "runs" / "cvtiny"
    rc, out, err = cv(capsys, str(config), "--folds", "4", "--slurm", "--dry-run", "--time", "30")
    assert rc == 0, err
    d = directives(out)
    assert d["array"] == "0-3%4" and d["job-name"] == "cvtiny-cv" and d["time"] == "30"
    assert d["output"].startswith(str(root / "slurm"))
    for k in range(4):
        assert re.search(
            rf"# run fold_{k}: .*data.folds=4 log.runs_dir={root} .*data.fold={k} log.name=fold_{k}$",
            out,
            re.M,
        )
    assert f"hpc-sr runs {root} --by data.fold" in out
    assert not root.exists() or not any(root.glob("fold_*"))  # nothing trained, nothing submitted

    capsys.readouterr()
    assert cli.main(["submit", "--config", str(config), "--folds", "4", "--dry-run"]) == 0
    assert directives(capsys.readouterr().out)["array"] == "0-3%4"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--folds", "1"], "--folds 1: k-fold cross-validation needs K >= 2"),
        (["--folds", "3", "--time", "10"], "--time: SLURM resources need --slurm"),
        (["--folds", "3", "data.train_pairs=40"], "data.train_pairs=40 is more than the 28 training pairs"),
        (
            ["--folds", "3", "data.source=simulate", "data.options={}"],
            "data.source=simulate draws fresh pairs",
        ),
    ],
)
def test_cv_errors_name_the_problem(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    config = write_config(tiny_shards, tmp_path)
    rc, _, err = cv(capsys, str(config), *args)
    assert rc == 2 and message in err
    assert not (tmp_path / "runs").exists()
