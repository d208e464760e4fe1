"""`hpc-sr simulate | pack | verify | inspect` through hpc_sr.cli.main, and one real `python -m hpc_sr`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_sr.cli import main
from tests.conftest import bicubic_psnr, read_shards


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sim"
    rc = main(["simulate", "--out", str(out), "--num", "64", "--hr-size", "32", "--shard-size", "40",
               "--seed", "2"])
    assert rc == 0
    return out


def test_simulate_writes_manifest_and_params(simulated: Path) -> None:
    man = json.loads((simulated / "manifest.json").read_text())
    assert man["count"] == 64 and [s["count"] for s in man["shards"]] == [40, 24]
    assert man["hr_shape"] == [1, 32, 32] and man["lr_shape"] == [1, 16, 16]
    assert man["split"]["sizes"] == {"train": 52, "val": 6, "test": 6}
    assert man["param_names"] and man["provenance"]["preset"] == "deeplense_sr"
    assert man["provenance"]["seed"] == 2 and man["provenance"]["command"] == "simulate"


def test_verify_and_inspect(simulated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(simulated)]) == 0
    assert "ok, 64 pairs in 2 shard(s)" in capsys.readouterr().out
    png = tmp_path / "grid.png"
    assert main(["inspect", str(simulated), "--sample", "8", "--png", str(png), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "splits: train 52, val 6, test 6" in out and "sample of 6 from val" in out
    assert "bicubic_psnr" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_returns_metrics(simulated: Path) -> None:
    from hpc_sr.apps.inspect import inspect_dataset

    r = inspect_dataset(simulated, sample=16, quiet=True)
    s = r["sample"]
    assert s["n"] == 16 and 0 <= s["hr"]["min"] <= s["hr"]["max"] <= 1
    assert s["lr_minus_mean_pooled_hr_mae"] < 1e-6  # the simulator's LR is the 2x2 mean of HR
    # the same 16 evenly spaced train pairs, read straight from the shards, upsampled here
    lr, hr, _ = read_shards(simulated, split="train")
    pos = np.unique(np.linspace(0, len(hr) - 1, 16).round().astype(int))
    assert s["bicubic_psnr"] == pytest.approx(bicubic_psnr(lr[pos], hr[pos]), abs=1e-6)
    assert s["hr"]["max"] == pytest.approx(float(hr[pos].max()))


def test_inspect_falls_back_to_psnr_without_metrics_module(simulated: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_sr.apps.inspect import inspect_dataset

    full = inspect_dataset(simulated, sample=8, quiet=True)["sample"]
    monkeypatch.setitem(sys.modules, "hpc_sr.eval.metrics", None)  # import now fails
    local = inspect_dataset(simulated, sample=8, quiet=True)["sample"]
    assert "bicubic_ssim" in full and "bicubic_ssim" not in local
    assert local["bicubic_psnr"] == pytest.approx(full["bicubic_psnr"], abs=1e-3)


def pack_and_verify(kind: str, src: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["pack", "--from", kind, "--src", str(src), "--out", str(out), "--shard-size", "2",
                 "--seed", "5", "--split", "0.6,0.2,0.2"]) == 0, capsys.readouterr().err
    assert main(["verify", str(out)]) == 0
    assert "ok, 5 pairs in 3 shard(s)" in capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())
    assert man["provenance"]["command"] == "pack" and man["provenance"]["kind"] == kind
    assert man["split"]["seed"] == 5 and man["split"]["sizes"] == {"train": 3, "val": 1, "test": 1}
    return man


def source_pairs(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """n distinct (16x16, 8x8) float32 pairs; LR is the 2x2 mean of HR."""
    hr = np.random.default_rng(7).random((n, 16, 16), dtype=np.float32)
    return hr, hr.reshape(n, 8, 2, 8, 2).mean((2, 4))


def test_pack_npz_folder_and_stacked_file_through_the_cli(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    hr, lr = source_pairs()
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in (3, 0, 4, 1, 2):  # written out of order: packed sorted by name
        np.savez(folder / f"img{i}.npz", hr=hr[i], lr=lr[i])
    pack_and_verify("npz", folder, tmp_path / "from_folder", capsys)
    got_lr, got_hr, names = read_shards(tmp_path / "from_folder")
    assert names == [f"img{i}" for i in range(5)]
    np.testing.assert_array_equal(got_hr[:, 0], hr)
    np.testing.assert_array_equal(got_lr[:, 0], lr)

    stacked = tmp_path / "all.npz"
    np.savez(stacked, hr=hr[:, None], lr=lr[:, None])
    pack_and_verify("npz", stacked, tmp_path / "from_file", capsys)
    got_lr, got_hr, names = read_shards(tmp_path / "from_file")
    assert names == [f"all[{i}]" for i in range(5)]
    np.testing.assert_array_equal(got_hr[:, 0], hr)
    np.testing.assert_array_equal(got_lr[:, 0], lr)


def test_pack_fits_through_the_cli_then_a_scale_mismatch_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    hr, lr = source_pairs()
    src = tmp_path / "src"
    for sub in ("HR", "LR"):
        (src / sub).mkdir(parents=True)
    for i in range(5):  # big-endian float64, as FITS files usually are
        fits.PrimaryHDU(hr[i].astype(">f8")).writeto(src / "HR" / f"lens{i}.fits")
        fits.PrimaryHDU(lr[i].astype(">f8")).writeto(src / "LR" / f"lens{i}.fits")
    man = pack_and_verify("fits", src, tmp_path / "out", capsys)
    assert man["hr_shape"] == [1, 16, 16] and man["lr_shape"] == [1, 8, 8] and man["scale"] == 2
    got_lr, got_hr, names = read_shards(tmp_path / "out")
    assert names == [f"lens{i}" for i in range(5)] and got_hr.dtype == np.float32
    np.testing.assert_array_equal(got_hr[:, 0], hr)
    np.testing.assert_array_equal(got_lr[:, 0], lr.astype(np.float32))
    rc = main(["pack", "--from", "fits", "--src", str(src), "--out", str(tmp_path / "x4"), "--scale", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "lens0.fits" in err, err
    assert not (tmp_path / "x4" / "manifest.json").exists()


def test_pack_bad_pair_then_skip_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    (src / "HR").mkdir(parents=True)
    (src / "LR").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        hr = rng.random((16, 16), dtype=np.float32)
        np.save(src / "HR" / f"p{i}.npy", hr)
        np.save(src / "LR" / f"p{i}.npy", hr[::2, ::2] if i != 4 else hr[::2, ::3])
    out = str(tmp_path / "out")
    args = ["pack", "--from", "deeplense", "--src", str(src), "--out", out, "--shard-size", "4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "p4.npy" in err
    assert main([*args, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped bad pair" in err and "p4.npy" in err
    assert main(["verify", str(tmp_path / "out")]) == 0
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["count"] == 9 and man["provenance"]["skipped"][0]["file"].endswith("p4.npy")


def test_verify_subprocess_names_corrupt_shard(simulated: Path, tmp_path: Path) -> None:
    d = tmp_path / "copy"
    d.mkdir()
    for p in simulated.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hpc_sr", "verify", str(d)]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    data = bytearray((d / "shard-00001.h5").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "shard-00001.h5").write_bytes(bytes(data))
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "shard-00001.h5 fails its sha256" in bad.stderr and "Traceback" not in bad.stderr
