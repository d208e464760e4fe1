"""A 2-rank `hpc-sr upscale` job over 2,000 cutouts, one rank SIGKILLed at random moments (the other one
stopped by SIGTERM) and the job rerun each time: the outputs end bit-identical to an uninterrupted run's,
every unit is recorded done exactly once, and no temporary file is left. Real processes (RANK / WORLD_SIZE as
torchrun sets them), real signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.inference.ledger import LEDGER_DIR, Ledger, parse_lines, rank_file
from hpc_sr.apps.inference.plan import plan_units, shard
from hpc_sr.apps.inference.runner import run_inference
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE
from hpc_sr.models.artifacts import load_generator
from tests.apps.inference.test_runner import cutouts, export, generator
from tests.conftest import PYTHON, REPO, random_seed, subprocess_env

FILES, PER_FILE, SIDE = 40, 50, 16  # 2,000 cutouts


def start(
    rank: int, ckpt: Path, src: Path, out: Path, log: Path, extra: tuple[str, ...] | list[str] = ()
) -> subprocess.Popen[bytes]:
    env = subprocess_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_PORT="29500")
    argv = [PYTHON, "-m", "hpc_sr", "upscale", "--checkpoint", str(ckpt), "--device", "cpu", *extra]
    with open(log, "ab") as fh:
        return subprocess.Popen([*argv, "--out", str(out), str(src)], cwd=REPO, env=env, stdout=fh, stderr=fh)


def records(out: Path, rank: int) -> int:
    path = rank_file(out / LEDGER_DIR, rank)
    return sum(1 for _ in parse_lines(path.read_bytes())) if path.exists() else 0


def left_to_do(src: Path, out: Path, rank: int) -> int:
    mine = shard(plan_units([str(src)], out, InferenceOptions()).units, rank, 2)
    status = Ledger(out).status() if (out / LEDGER_DIR).exists() else {}
    return sum(1 for u in mine if status.get(u.id, {}).get("status") != "done")


def wait(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"rank did not finish in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path: Path) -> None:
    rng = random.Random(random_seed("kill moments"))
    ckpt = export(generator(), tmp_path / "G.pt")
    src = cutouts(tmp_path / "in", FILES, PER_FILE, side=SIDE)
    model, payload = load_generator(ckpt)
    ref = tmp_path / "ref"
    assert run_inference(model, payload, [str(src)], ref, InferenceOptions(), progress=False) == 0

    out, log = tmp_path / "out", tmp_path / "job.log"
    kills = 0
    while kills < 3:
        ranks = [r for r in (0, 1) if left_to_do(src, out, r) >= 2]
        assert ranks, "nothing left to interrupt"
        victim = rng.choice(ranks)
        target = records(out, victim) + rng.randint(1, max(1, left_to_do(src, out, victim) // 3))
        procs = [start(r, ckpt, src, out, log) for r in (0, 1)]
        deadline = time.monotonic() + 60
        while records(out, victim) < target and procs[victim].poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))  # anywhere in the next unit: reading, in the model, writing
        procs[victim].send_signal(signal.SIGKILL)
        procs[1 - victim].send_signal(
            signal.SIGTERM
        )  # the job ends: the other rank stops at a batch boundary
        killed = wait(procs[victim], log)
        assert killed in (0, -signal.SIGKILL), log.read_text()[-3000:]  # 0: it finished first (not counted)
        stopped = wait(procs[1 - victim], log)  # -SIGTERM: the signal came before its handler was installed
        assert stopped in (0, REQUEUE_EXIT_CODE, -signal.SIGTERM), log.read_text()[-3000:]
        kills += killed == -signal.SIGKILL

    procs = [start(r, ckpt, src, out, log) for r in (0, 1)]
    assert [wait(p, log) for p in procs] == [0, 0], log.read_text()[-3000:]

    names = sorted(p.name for p in ref.glob("*_sr.npy"))
    assert len(names) == FILES and sorted(p.name for p in out.glob("*_sr.npy")) == names
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    done = Counter(
        r["unit"]
        for path in (out / LEDGER_DIR).glob("rank_*.jsonl")
        for r in parse_lines(path.read_bytes())
        if r["status"] == "done"
    )
    assert sorted(done) == sorted(n.replace("_sr.npy", ".npy") for n in names)
    assert set(done.values()) == {1}, {u: n for u, n in done.items() if n != 1}
    statuses = {
        r["status"] for p in (out / LEDGER_DIR).glob("rank_*.jsonl") for r in parse_lines(p.read_bytes())
    }
    assert statuses == {"done"}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    report = json.loads((out / "upscale_report.json").read_text())
    assert report["counts"]["done"] == FILES and report["counts"]["pending"] == 0
    assert os.path.getsize(out / LEDGER_DIR / "run.json") > 0


@pytest.mark.slow
def test_a_killed_rank_resumes_an_hdf5_catalog_to_the_bytes_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """The catalog's rows go straight into one data file written by both ranks (pwrite): a rank SIGKILLed
    mid-run and the job rerun end with the images, ids and sigma of an uninterrupted run, each unit done
    once, and nothing of the parts left."""
    import h5py
    import numpy as np

    rng = random.Random(random_seed("kill moments hdf5"))
    ckpt = export(generator(), tmp_path / "G.pt")
    src = tmp_path / "in" / "cat.h5"
    src.parent.mkdir()
    lr = np.random.default_rng(0).uniform(0, 1, (FILES * PER_FILE, SIDE, SIDE)).astype(np.float32)
    with h5py.File(src, "w") as f:
        f.create_dataset("lr", data=lr)
        f.create_dataset("ids", data=np.arange(len(lr))[::-1])
    model, payload = load_generator(ckpt)
    opts = InferenceOptions(catalog_rows=PER_FILE)
    ref = tmp_path / "ref"
    assert run_inference(model, payload, [str(src)], ref, opts, progress=False) == 0

    out, log = tmp_path / "out", tmp_path / "job.log"
    extra = ["--catalog-rows", str(PER_FILE)]
    victim = rng.choice((0, 1))
    procs = [start(r, ckpt, src, out, log, extra) for r in (0, 1)]
    target = rng.randint(2, FILES // 4)
    deadline = time.monotonic() + 60
    while records(out, victim) < target and procs[victim].poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.05))
    procs[victim].send_signal(signal.SIGKILL)
    assert wait(procs[victim], log) in (0, -signal.SIGKILL), log.read_text()[-3000:]
    assert wait(procs[1 - victim], log) in (0, 1), log.read_text()[-3000:]  # 1: the input is not complete
    procs = [start(r, ckpt, src, out, log, extra) for r in (0, 1)]
    assert [wait(p, log) for p in procs] == [0, 0], log.read_text()[-3000:]

    with h5py.File(ref / "cat_sr.h5") as a, h5py.File(out / "cat_sr.h5") as b:
        for name in ("lr", "ids", "hpc_sr/scale"):
            if name in a:
                assert a[name][...].tobytes() == b[name][...].tobytes(), name
        assert b["lr"].attrs["hpc_sr_rows"] == len(lr)
    done = Counter(
        r["unit"]
        for path in (out / LEDGER_DIR).glob("rank_*.jsonl")
        for r in parse_lines(path.read_bytes())
        if r["status"] == "done"
    )
    assert len(done) == FILES and set(done.values()) == {1}
    assert sorted(p.name for p in out.iterdir()) == [".hpc_sr_ledger", "cat_sr.h5", "upscale_report.json"]
