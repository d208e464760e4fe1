"""The ground-to-space study (hpc_sr.studies.instruments): baselines, scratch, pre-training, k-fold tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_sr.studies.instruments import main, verdicts


def _row(psnr: float, ssim: float, std: float | None = None) -> dict:
    r = {"psnr": psnr, "psnr_pooled": psnr, "ssim": ssim, "psnr_clean": psnr, "ssim_clean": ssim,
         "lr_residual": 0.01}  # fmt: skip
    if std is not None:
        r.update(psnr_std=std, ssim_std=0.001, folds=[{}] * 5)
    return r


def test_verdicts_state_each_target_from_the_rows() -> None:
    rows = {
        "bicubic": _row(24.0, 0.60), "richardson_lucy": _row(27.0, 0.80), "wiener": _row(26.0, 0.70),
        "scratch on 6000": _row(30.0, 0.90), "scratch on 300": _row(28.0, 0.85, 0.1),
        "fine-tuned on 300": _row(29.8, 0.89, 0.1),
    }  # fmt: skip
    text = "\n".join(verdicts(rows, 5, 300))
    assert "+1.80 dB, fold std 0.10 dB: beats it" in text
    assert "reaches 97% of the 6,000-pair model's gain" in text
    assert "every learned row beats it" in text
    rows["scratch on 300"] = _row(26.5, 0.85, 0.1)  # below richardson_lucy's PSNR
    assert "NOT beaten in PSNR and SSIM by: scratch on 300" in "\n".join(verdicts(rows, 5, 300))


@pytest.mark.slow
def test_the_study_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    argv = [
        "--out",
        str(tmp_path),
        "--num",
        "60",
        "--few",
        "40",
        "--hr-size",
        "48",
        "--steps",
        "3",
        "--folds",
        "2",
        "--limit",
        "4",
        "--scratch",
        "16",
        "--parts",
        "baselines,scratch,pretrain,folds",
    ]
    assert main(argv) == 0
    out = json.loads((tmp_path / "instruments.json").read_text())
    rows = out["rows"]
    assert {"bicubic", "wiener", "richardson_lucy", "noise-free HR", "scratch on 16",
            "pre-trained on simulation only", "scratch on 20", "fine-tuned on 20"} <= set(rows)  # fmt: skip
    assert all(r["n"] == 4 for name, r in rows.items() if "folds" not in r)
    assert len(rows["fine-tuned on 20"]["folds"]) == 2
    assert rows["noise-free HR"]["psnr_clean"] > 90  # scored against itself
    assert rows["bicubic"]["psnr"] < rows["noise-free HR"]["psnr"]
    fold_run = tmp_path / "runs" / "few_finetune_f1"
    cfg = (fold_run / "config.yaml").read_text()
    assert "fold: 1" in cfg and "folds: 2" in cfg and "sim_pretrain" in cfg
    md = (tmp_path / "instruments.md").read_text()
    assert "| fine-tuned on 20 (2 folds) |" in md and "richardson_lucy" in md
    mtime = (fold_run / "checkpoints" / "latest").stat().st_mtime
    assert main([*argv[:-1], "folds"]) == 0  # resumable: nothing retrained, the table kept whole
    assert (fold_run / "checkpoints" / "latest").stat().st_mtime == mtime
    assert set(json.loads((tmp_path / "instruments.json").read_text())["rows"]) == set(rows)
