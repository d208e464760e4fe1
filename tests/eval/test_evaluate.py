"""`hpc-sr evaluate` / `upscale`: checkpoints, exported generators, files; exact reduction over ranks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.cli import main
from hpc_sr.config import load_config
from hpc_sr.eval.evaluate import evaluate, self_ensemble, upscale_files
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.models.srgan import Generator
from hpc_sr.train.checkpoint import export_generator, load_generator
from hpc_sr.train.distributed import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import REPO, subprocess_env, tiny_overrides, torchrun_cmd


@pytest.fixture(scope="module")
def trained_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    trainer = Trainer(
        load_config(None, tiny_overrides(tiny_shards, runs, steps=4, pretrain=4)),
        DistEnv(),
        torch.device("cpu"),
        resume="never",
    )
    assert trainer.run() == 0
    return runs / "tiny"


def test_evaluate_checkpoint_and_exported_generator_agree(
    trained_run: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(trained_run),
            "--data",
            str(tiny_shards),
            "--json",
            str(out),
            "--save-images",
            "2",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "bicubic" in table and "gain over bicubic" in table
    result = json.loads(out.read_text())
    assert result["n"] == 5 and set(result["model"]) >= {"psnr", "psnr_pooled", "ssim", "mse", "flux_err"}
    assert list((tmp_path / "images").glob("test_*.png"))
    g_file = export_generator(trained_run, tmp_path / "G.pt")
    again = evaluate(g_file, tiny_shards, quiet=True)
    assert again["model"] == pytest.approx(result["model"], rel=1e-6)
    assert again["bicubic"] == result["bicubic"]


def test_untrained_bicubic_skip_generator_equals_bicubic() -> None:
    lr = torch.rand(2, 1, 12, 12)
    g = Generator(channels=8, blocks=1, scale=2)
    torch.testing.assert_close(g(lr), bicubic_upscale(lr, 2))
    torch.testing.assert_close(self_ensemble(g, lr), bicubic_upscale(lr, 2), atol=1e-5, rtol=0)


def test_evaluate_under_torchrun_reduces_exactly(
    trained_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    single = evaluate(trained_run, tiny_shards, split="train", quiet=True)
    out = tmp_path / "dist.json"
    cmd = torchrun_cmd(
        2,
        "-m",
        "hpc_sr",
        "evaluate",
        "--checkpoint",
        str(trained_run),
        "--data",
        str(tiny_shards),
        "--split",
        "train",
        "--json",
        str(out),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dist = json.loads(out.read_text())
    assert dist["n"] == single["n"] == 38
    for who in ("model", "bicubic"):
        assert dist[who] == pytest.approx(single[who], rel=1e-9)


def test_upscale_keeps_formats_and_any_size(trained_run: Path, tmp_path: Path) -> None:
    from astropy.io import fits

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    np.save(src / "a.npy", rng.random((20, 24)).astype(np.float64))
    np.save(src / "b.npy", rng.random((1, 16, 16)).astype(np.float32))
    np.savez(src / "c.npz", lr=rng.random((3, 10, 10)).astype(np.float32))
    fits.PrimaryHDU(rng.random((14, 14)).astype(np.float32)).writeto(src / "d.fits")
    written = upscale_files(trained_run, tmp_path / "out", [str(p) for p in sorted(src.iterdir())])
    assert [p.name for p in written] == ["a.npy", "b.npy", "c.npz", "d.fits"]
    a = np.load(tmp_path / "out" / "a.npy")
    assert a.shape == (40, 48) and a.dtype == np.float64 and a.min() >= 0 and a.max() <= 1
    assert np.load(tmp_path / "out" / "b.npy").shape == (1, 32, 32)
    assert np.load(tmp_path / "out" / "c.npz")["lr"].shape == (3, 20, 20)
    with fits.open(tmp_path / "out" / "d.fits") as hdul:
        assert hdul[0].data.shape == (28, 28)
    model, _ = load_generator(trained_run)
    expected = model(torch.from_numpy(np.load(src / "b.npy"))[None]).clamp(0, 1).detach().numpy()[0]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "b.npy"), expected, rtol=1e-6)


def test_upscale_rejects_bad_files_by_name(trained_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((8, 8), np.nan, dtype=np.float32))
    assert main(["upscale", "--checkpoint", str(trained_run), "--out", str(tmp_path / "o"), str(bad)]) == 2
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    assert main(["upscale", "--checkpoint", str(trained_run), "--out", str(tmp_path / "o"), str(txt)]) == 2
