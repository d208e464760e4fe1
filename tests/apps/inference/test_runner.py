"""run_inference / `hpc-sr upscale` in this process on real files: batches across files, reruns, refusals,
--overwrite, bad files, a stop signal, samples with sigma."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.inference.ledger import LEDGER_DIR, Ledger
from hpc_sr.apps.inference.runner import execute, run_inference
from hpc_sr.cli import main
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE
from hpc_sr.errors import LedgerError
from hpc_sr.models.artifacts import generator_payload, load_generator
from hpc_sr.models.checkpoint_layout import atomic_torch_save
from hpc_sr.models.registry import build_generator

SPEC = {"g": {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}}}


def generator(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    g = build_generator("srresnet", SPEC["g"]["options"], 2)
    torch.nn.init.normal_(g.tail.weight, std=0.05)  # not plain bicubic: batching mistakes would show
    return g.eval()


def export(g: torch.nn.Module, path: Path) -> Path:
    atomic_torch_save(generator_payload(SPEC, 2, g.state_dict(), "test", 0), path)
    return path


def cutouts(folder: Path, files: int, per_file: int, side: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        np.save(folder / f"s{i:02d}.npy", rng.uniform(0, 1, (per_file, side, side)).astype(np.float32))
    return folder


def inodes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in folder.glob("*_sr.npy")}


def test_batches_across_files_equal_the_model_on_each_image(tmp_path: Path) -> None:
    g = generator()
    src = cutouts(tmp_path / "in", 5, 3)  # 15 images in batches of 4 that straddle the files
    np.save(src / "odd.npy", np.random.default_rng(1).uniform(0, 1, (7, 9)).astype(np.float32))
    opts = InferenceOptions(batch_size=4, normalize="none")
    result = execute(g, None, [str(src)], tmp_path / "out", opts, progress=False)
    assert result.status == 0 and sorted(o.status for o in result.outcomes) == ["done"] * 6
    for f in sorted(src.glob("*.npy")):
        lr = np.load(f)
        with torch.no_grad():
            want = g(torch.from_numpy(lr.reshape(-1, 1, *lr.shape[-2:])))[:, 0].numpy().reshape(-1)
        got = np.load(tmp_path / "out" / f"{f.stem}_sr.npy")
        assert got.shape[-2:] == (2 * lr.shape[-2], 2 * lr.shape[-1])
        np.testing.assert_allclose(got.reshape(-1), want, rtol=0, atol=1e-5)
    report = json.loads((tmp_path / "out" / "upscale_report.json").read_text())
    assert report["counts"] == {"planned": 6, "done": 6, "skipped": 0, "failed": 0, "pending": 0}


def test_rerun_skips_other_settings_are_refused_overwrite_redoes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = export(generator(), tmp_path / "G.pt")
    src = cutouts(tmp_path / "in", 3, 2)
    out = tmp_path / "out"
    base = ["upscale", "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out), str(src)]
    assert main(base) == 0
    first, records = inodes(out), (out / LEDGER_DIR / "rank_00000.jsonl").read_bytes()
    assert main(base) == 0  # everything done: nothing read, written or recorded
    assert inodes(out) == first and (out / LEDGER_DIR / "rank_00000.jsonl").read_bytes() == records
    capsys.readouterr()
    assert main([*base, "--tile", "8", "--overlap", "2"]) == 2
    err = capsys.readouterr().err
    assert "options.tile (was 0, now 8)" in err and "options.overlap (was 8, now 2)" in err
    assert "--overwrite" in err and "batch_size" not in err  # how, not what: not compared
    assert main([*base, "--batch-size", "3"]) == 0
    other = export(generator(seed=1), tmp_path / "G2.pt")
    with pytest.raises(LedgerError, match=r"model\.weights_sha256 \(was"):
        run_inference(generator(seed=1), None, [str(src)], out, InferenceOptions(), progress=False)
    assert main([*base[:2], str(other), *base[3:]]) == 2
    assert main([*base[:2], str(other), *base[3:], "--overwrite"]) == 0
    again = inodes(out)  # each output replaced (its new inode allocated while the old one was alive)
    assert set(again) == set(first) and all(again[n] != first[n] for n in first)
    assert main([*base[:2], str(other), *base[3:]]) == 0  # the new settings are the folder's now


def test_bad_files_are_reported_and_the_good_ones_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = export(generator(), tmp_path / "G.pt")
    src = cutouts(tmp_path / "in", 3, 2)
    (src / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(src / "rank5.npy", np.ones((2, 2, 2, 2, 2), np.float32))
    np.save(src / "allnan.npy", np.full((2, 6, 6), np.nan, np.float32))
    (src / "notes.txt").write_text("a catalogue")
    np.savez(src / "empty.npz")
    out = tmp_path / "out"
    argv = ["upscale", "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out), str(src)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "skipped: " in err and "notes.txt" in err and "3 of 6 unit(s) done" in err and "3 failed" in err
    report = json.loads((out / "upscale_report.json").read_text())
    assert report["done"]["units"] == 3 and report["done"]["outputs"] == 3 and report["done"]["images"] == 6
    failed = {f["unit"]: f["reason"] for f in report["failed"]}
    assert "cannot read" in failed["corrupt.npy"] and "is not an image" in failed["rank5.npy"]
    assert "blank" in failed["allnan.npy"]
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"notes.txt", "empty.npz"} and "holds no arrays" in skipped["empty.npz"]
    assert main(argv) == 1  # failures are tried again (and fail again); the done ones are not redone
    status = Ledger(out).status()
    assert [status[u]["status"] for u in ("s00.npy", "corrupt.npy")] == ["done", "failed"]
    assert main([*argv, "--on-error", "stop"]) == 2
    assert "allnan.npy: every pixel" in capsys.readouterr().err  # the first bad unit in order


def test_a_stop_signal_finishes_the_batch_then_a_rerun_completes(tmp_path: Path) -> None:
    g = generator()
    src = cutouts(tmp_path / "in", 30, 4, side=24)
    out = tmp_path / "out"
    opts = InferenceOptions(batch_size=4, normalize="none")
    ledger = out / LEDGER_DIR / "rank_00000.jsonl"

    def stop_after_the_first_record() -> None:
        while not (ledger.exists() and ledger.stat().st_size):
            threading.Event().wait(0.005)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=stop_after_the_first_record, daemon=True).start()
    first = execute(g, None, [str(src)], out, opts, progress=False, handle_signals=True)
    assert first.status == REQUEUE_EXIT_CODE
    done = [o.unit.id for o in first.outcomes if o.status == "done"]
    assert 1 <= len(done) < 30 and all(o.status == "done" for o in first.outcomes)
    assert sorted(p.name for p in out.glob("*_sr.npy")) == sorted(u.replace(".npy", "_sr.npy") for u in done)
    report = json.loads((out / "upscale_report.json").read_text())
    assert report["counts"]["pending"] == 30 - len(done)
    second = execute(g, None, [str(src)], out, opts, progress=False)
    assert second.status == 0 and {o.unit.id for o in second.outcomes}.isdisjoint(done)
    assert len(second.outcomes) + len(done) == 30


def test_samples_write_the_mean_and_a_sigma_file(tmp_path: Path) -> None:
    from tests.models.test_stochastic import tiny

    g = tiny("srresnet", 1)
    src = tmp_path / "in"
    src.mkdir()
    lr = (np.random.default_rng(2).uniform(0, 1, (3, 8, 10)) * 100).astype(np.float32)
    np.save(src / "x.npy", lr)
    np.savez(src / "y.npz", a=lr[0], b=lr[1:])
    opts = InferenceOptions(samples=4, flux="per-pixel", normalize="max")
    for out in (tmp_path / "out", tmp_path / "again"):
        assert run_inference(g, None, [str(src)], out, opts, progress=False) == 0
    mean, sigma = np.load(tmp_path / "out" / "x_sr.npy"), np.load(tmp_path / "out" / "x_sr_sigma.npy")
    assert mean.shape == sigma.shape == (3, 16, 20) and (sigma >= 0).all() and sigma.max() > 0
    with np.load(tmp_path / "out" / "y_sr.npz") as z:
        assert z.files == ["a", "b", "a_sigma", "b_sigma"] and z["b_sigma"].shape == (2, 16, 20)
    for name in ("x_sr.npy", "x_sr_sigma.npy", "y_sr.npz"):  # the noise is seeded by the unit's id
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_the_requeue_limit_is_the_jobs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_sr.apps.inference.runner import requeue_limit
    from hpc_sr.config import SlurmConfig
    from hpc_sr.dist.slurm import MAX_REQUEUES_VAR
    from hpc_sr.errors import EnvironmentVariableError
    from hpc_sr.launch.upscale import SlurmUpscaleJob

    monkeypatch.delenv(MAX_REQUEUES_VAR, raising=False)
    assert requeue_limit() == SlurmConfig().max_requeues
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    job = SlurmUpscaleJob(["--help-not-run"], max_requeues=7, entry="tests.apps.inference.test_runner:_limit")
    assert job.run() == 7  # submit-upscale's --max-requeues reaches the runner inside the job
    monkeypatch.setenv(MAX_REQUEUES_VAR, "many")
    with pytest.raises(EnvironmentVariableError, match=f"{MAX_REQUEUES_VAR}='many'"):
        requeue_limit()


def _limit(argv: list[str]) -> int:
    """A job entry that answers with the requeue limit the runner would use."""
    from hpc_sr.apps.inference.runner import requeue_limit

    return requeue_limit()


def test_the_same_warning_of_many_files_is_counted_not_repeated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    import warnings

    from hpc_sr.apps.fits_io import UpscaleWarning

    ckpt = export(generator(), tmp_path / "G.pt")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)

    def write(i: int) -> None:  # an unknown BUNIT and blank pixels (as many as i + 1): two warnings per file
        img = rng.uniform(0, 1, (6, 6)).astype(np.float32)
        img.reshape(-1)[: i + 1] = np.nan
        fits.PrimaryHDU(img, header=fits.Header([("BUNIT", "furlong")])).writeto(src / f"f{i:02d}.fits")

    for i in range(8):
        write(i)
    out = tmp_path / "out"
    argv = ["upscale", "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out), str(src)]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    furlong = [line for line in err if "furlong" in line]
    blank = [line for line in err if "blank (NaN/inf)" in line]
    assert len(furlong) == 2 and len(blank) == 2  # the first one as it came, then one line counting them all
    assert "f00.fits" in furlong[0] and "8 warnings" not in furlong[0]
    assert (
        "8 warnings \"BUNIT 'furlong'" in furlong[1]
        and "f00.fits" in furlong[1]
        and "and 5 more" in furlong[1]
    )
    assert "1 blank (NaN/inf) pixel(s)" in blank[0] and '8 warnings "# blank (NaN/inf) pixel(s)' in blank[1]
    assert "16 warning(s)" in err[-1]  # the summary line
    report = json.loads((out / "upscale_report.json").read_text())
    w = report["warnings"]
    assert w["total"] == 16 and [k["count"] for k in w["kinds"]] == [8, 8] and w["other"] == 0
    assert all(len(k["examples"]) == 3 and "f00.fits" in k["message"] for k in w["kinds"])

    for i in range(8, 12):  # a rerun over more files: the counts of both runs add up
        write(i)
    assert main(argv) == 0
    assert sum("furlong" in line for line in capsys.readouterr().err.splitlines()) == 2
    report = json.loads((out / "upscale_report.json").read_text())
    assert report["warnings"]["total"] == 24 and report["counts"]["done"] == 12

    g, _ = load_generator(ckpt)  # the library path (no on_warning): warned at the end, once per kind + counts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = execute(g, None, [str(src)], tmp_path / "lib", InferenceOptions(), progress=False)
    assert result.status == 0
    messages = [str(c.message) for c in caught if issubclass(c.category, UpscaleWarning)]
    assert len(messages) == 4 and sum(m.startswith("12 warnings ") for m in messages) == 2
