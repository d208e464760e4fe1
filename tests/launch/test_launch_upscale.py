"""`hpc-sr submit-upscale`: the sbatch script, arrays, argument checks, the job callable, and on the one-host
SLURM cluster a 2-task upscale job preempted with USR2, requeued and finished with every cutout written once.

The cluster tests run the job plumbing with :func:`standin_upscale` (the runner's contract in miniature, so
they run before the survey runner lands) and the real `hpc-sr upscale` once
``hpc_sr.apps.inference.runner.run_inference`` exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import submitit

from hpc_sr.atomic import atomic_open
from hpc_sr.cli import main as cli_main
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, agree, install_stop_flag
from hpc_sr.errors import HpcSrError
from hpc_sr.launch.upscale import SlurmUpscaleJob, parse_upscale_argv, submit_upscale
from tests.launch.launch_slurm_util import job_info, release_requeued, wait_final, wait_for
from tests.launch.test_launch_submit import _directives

REPO = Path(__file__).resolve().parents[2]
STANDIN = "tests.launch.test_launch_upscale:standin_upscale"
RUNNER_LANDED = importlib.util.find_spec("hpc_sr.apps.inference.runner") is not None


# ----------------------------------------------------------------------------------------------- stand-in
def _ledger(out: Path) -> list[dict]:
    """The stand-in's ledger: one JSON line per finished cutout (rank files)."""
    return [json.loads(line) for f in sorted((out / "ledger").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def standin_upscale(argv: list[str]) -> int:
    """The runner's contract in miniature: `hpc-sr upscale` argv; rank r of WORLD_SIZE takes cutouts
    r::world, skips what the ledger holds, agrees on a stop at every cutout boundary, appends each finished
    cutout to its ledger file, returns REQUEUE_EXIT_CODE when stopped. ``$STANDIN_STEP_S`` per cutout."""
    import time

    import torch

    from hpc_sr.dist import env as dist_env

    assert argv[0] == "upscale"
    args = parse_upscale_argv(argv[1:])
    flag = install_stop_flag()
    env = dist_env.DistEnv.from_environment()  # RANK/WORLD_SIZE (submitit) or SLURM_PROCID/NTASKS (srun)
    rank, world = env.rank, env.world_size
    dist_env.init_distributed(env, torch.device("cpu"), timeout_s=120)
    out = Path(args.out)
    (out / "ledger").mkdir(parents=True, exist_ok=True)
    done = {r["unit"] for r in _ledger(out)}
    files = sorted(Path(args.inputs[0]).glob("*.npy"))
    rounds = -(-len(files) // world)  # every rank calls agree() equally often
    stopped = False
    for i in range(rounds):
        if agree(flag):
            stopped = True
            break
        k = i * world + rank
        if k >= len(files) or files[k].name in done:
            continue
        time.sleep(float(os.environ.get("STANDIN_STEP_S", "0")))
        with atomic_open(out / f"{files[k].stem}{args.suffix}.npy") as fh:
            np.save(fh, np.load(files[k]))
        with open(out / "ledger" / f"rank{rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"unit": files[k].name, "rank": rank, "world": world,
                                 "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    dist_env.shutdown_distributed(wait_for_peers=True)
    return REQUEUE_EXIT_CODE if stopped else 0


SEEN: list[list[str]] = []


def _record_argv(argv: list[str]) -> int:
    SEEN.append(list(argv))
    return 0


def cutouts(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"c{i:04d}.npy", rng.random((8, 8), dtype=np.float32))
    return folder


def _argv(tmp_path: Path, out: str = "sr") -> list[str]:
    return ["--checkpoint", "G.pt", "--out", str(tmp_path / out), str(tmp_path / "in")]


# ----------------------------------------------------------------------------------------------- no cluster
def test_dry_run_is_a_requeueable_job_running_upscale(tmp_path: Path) -> None:
    lines: list[str] = []
    assert submit_upscale(_argv(tmp_path), tasks_per_node=2, nodes=2, time="00:30:00", partition="debug",
                          cpus_per_task=1, dry_run=True, echo=lines.append) == []
    text = "\n".join(lines)
    d = _directives(text)
    assert d["signal"] == "USR2@90" and "requeue" in d and d["job-name"] == "hpc_sr_upscale"
    assert (d["nodes"], d["ntasks-per-node"], d["time"], d["partition"]) == ("2", "2", "30", "debug")
    assert d["output"] == f"{tmp_path / 'sr'}/.slurm/%j_0_log.out"
    assert f"# task 0: hpc-sr upscale --checkpoint G.pt --out {tmp_path / 'sr'} {tmp_path / 'in'}" in text
    gpu = _directives("\n".join(_lines(lambda e: submit_upscale(_argv(tmp_path), gpus_per_node=4,
                                                                dry_run=True, echo=e))))
    assert gpu["gpus-per-node"] == "4" and gpu["ntasks-per-node"] == "4"  # one rank per GPU


def _lines(call: object) -> list[str]:
    lines: list[str] = []
    call(lines.append)  # type: ignore[operator]
    return lines


def test_array_one_task_per_line_each_with_its_own_out(tmp_path: Path) -> None:
    parts = tmp_path / "parts.txt"
    parts.write_text(f"# field A\n--out {tmp_path / 'a'} {tmp_path / 'A'}\n\n--out {tmp_path / 'b'} "
                     f"{tmp_path / 'B'}  # field B\n")
    text = "\n".join(_lines(lambda e: submit_upscale(["--checkpoint", "G.pt"], array=parts, dry_run=True,
                                                     echo=e)))
    d = _directives(text)
    assert d["array"] == "0-1%2" and d["output"] == f"{tmp_path}/.slurm/%A_%a_0_log.out"
    assert f"# task 1: hpc-sr upscale --checkpoint G.pt --out {tmp_path / 'b'} {tmp_path / 'B'}" in text
    parts.write_text(f"--out {tmp_path / 'a'} x\n--out {tmp_path / 'a'} y\n")
    with pytest.raises(HpcSrError, match="every task needs its own --out"):
        submit_upscale(["--checkpoint", "G.pt"], array=parts, dry_run=True)
    parts.write_text("# nothing\n")
    with pytest.raises(HpcSrError, match="no task"):
        submit_upscale(["--checkpoint", "G.pt"], array=parts, dry_run=True)


def test_upscale_arguments_are_checked_before_submitting(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(HpcSrError, match="upscale arguments: the following arguments are required: --out"):
        submit_upscale(["--checkpoint", "G.pt", "x.npy"], dry_run=True)
    with pytest.raises(HpcSrError, match="upscale arguments: unrecognized arguments: --bogus"):
        submit_upscale([*_argv(tmp_path), "--bogus"], dry_run=True)
    assert cli_main(["submit-upscale", "--dry-run", "--tasks-per-node", "2", "--", *_argv(tmp_path)]) == 0
    assert "#SBATCH --ntasks-per-node=2" in capsys.readouterr().out
    assert cli_main(["submit-upscale", "--dry-run"]) == 2
    assert "no upscale arguments: hpc-sr submit-upscale [job options] --" in capsys.readouterr().err


def test_job_runs_the_entry_in_the_submission_dir_and_refuses_a_stop_it_cannot_requeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.chdir(REPO)  # put back after the job's chdir
    cutouts(tmp_path / "in", 5)
    argv = ["--checkpoint", "G.pt", "--out", "sr", "in"]  # relative: resolved in cwd
    assert SlurmUpscaleJob(argv, entry=STANDIN, cwd=str(tmp_path))() == 0
    assert sorted(r["unit"] for r in _ledger(tmp_path / "sr")) == [f"c{i:04d}.npy" for i in range(5)]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued run resumes: the first run's --overwrite goes
    SlurmUpscaleJob([*argv, "--overwrite"], entry=f"{__name__}:_record_argv", cwd=str(tmp_path))()
    assert SEEN[-1] == ["upscale", *argv]
    os.kill(os.getpid(), signal.SIGUSR2)  # the flag the job installed records it
    with pytest.raises(HpcSrError, match="stopped by SIGUSR2 with its finished outputs in the ledger, but "
                                         r"not requeued \(max_requeues=3\)"):
        SlurmUpscaleJob(["--checkpoint", "G.pt", "--out", "sr2", "in"], entry=STANDIN, cwd=str(tmp_path))()


# ----------------------------------------------------------------------------------------------- cluster
def _preempt_and_finish(jid: str, progress: object, at: int) -> dict[str, str]:
    """Wait for ``at`` finished cutouts, USR2, the requeue, SLURM's hold skipped, the end; -> job record."""
    wait_for(lambda: progress() >= at, 180, f"job {jid}: {at} cutouts")  # type: ignore[operator]
    subprocess.run(["scancel", "-s", "USR2", jid], check=True, timeout=30)
    wait_for(lambda: job_info(jid).get("JobState") == "PENDING" and job_info(jid).get("Restarts") == "1",
             90, f"job {jid} to be requeued")
    release_requeued(jid)
    return wait_final(jid, 240)


@pytest.mark.slurm
def test_two_task_upscale_job_preempted_requeued_and_resumed(slurm_cluster: Path, jobs: list[str],
                                                            tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The job plumbing end to end: 300 cutouts, 2 ranks, USR2 -> stop at a boundary, requeue, resume."""
    n = 300
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the stand-in entry lives in tests/
    monkeypatch.setenv("STANDIN_STEP_S", "0.05")
    cutouts(tmp_path / "in", n)
    out = tmp_path / "sr"
    ids = submit_upscale(_argv(tmp_path), tasks_per_node=2, cpus_per_task=1, time="00:05:00", entry=STANDIN,
                         echo=lambda _: None)
    jobs += ids
    info = _preempt_and_finish(ids[0], lambda: len(_ledger(out)), 40)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1"
    ledger = _ledger(out)
    assert sorted(r["unit"] for r in ledger) == [f"c{i:04d}.npy" for i in range(n)]  # each exactly once
    assert {r["world"] for r in ledger} == {2} and {r["rank"] for r in ledger} == {0, 1}
    first = sum(r["restart"] == 0 for r in ledger)
    assert 40 <= first < n and {r["restart"] for r in ledger} == {0, 1}  # stopped part-way, then resumed
    assert len(list(out.glob("*_sr.npy"))) == n
    job = submitit.SlurmJob(folder=out / ".slurm", job_id=ids[0])
    assert job.result() == 0
    assert "requeued (restart 1" in (out / ".slurm" / f"{ids[0]}_0_log.err").read_text()


@pytest.mark.slurm
def test_upscale_sbatch_one_rank_per_task_requeued_by_the_script(slurm_cluster: Path, jobs: list[str],
                                                                 tmp_path: Path) -> None:
    """slurm/upscale.sbatch: srun, 2 ranks from SLURM_PROCID/NTASKS, USR2 -> exit 3 -> the script requeues."""
    n = 200
    cutouts(tmp_path / "in", n)
    out = tmp_path / "sb"
    env = {**os.environ, "PYTHON": sys.executable, "ENTRY": "-m tests.launch.test_launch_upscale",
           "PYTHONPATH": str(REPO), "STANDIN_STEP_S": "0.05", "CHECKPOINT": "G.pt", "OUT": str(out),
           "INPUTS": str(tmp_path / "in")}
    cmd = ["sbatch", "--parsable", "-o", str(tmp_path / "sb-%j.out"), "-N1", "--ntasks-per-node=2", "-c1",
           "--time=5", str(REPO / "slurm" / "upscale.sbatch")]
    jid = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout.strip().split(";")[0]
    jobs.append(jid)
    info = _preempt_and_finish(jid, lambda: len(_ledger(out)), 30)
    log = (tmp_path / f"sb-{jid}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    assert "srun exit code 3" in log and "requeue (restart 1, max 3)" in log and "srun exit code 0" in log
    ledger = _ledger(out)
    assert sorted(r["unit"] for r in ledger) == [f"c{i:04d}.npy" for i in range(n)]
    assert {r["world"] for r in ledger} == {2} and {r["restart"] for r in ledger} == {0, 1}


@pytest.mark.slurm
@pytest.mark.skipif(not RUNNER_LANDED, reason="hpc_sr.apps.inference.runner (run_inference) not there yet")
def test_real_upscale_job_preempted_requeued_and_every_cutout_written_once(
    slurm_cluster: Path, jobs: list[str], tmp_path: Path
) -> None:
    """`hpc-sr upscale` itself (the survey runner, its ledger) under submit-upscale: 2 ranks, USR2, resume."""
    from collections import Counter

    import torch

    from hpc_sr.apps.inference.ledger import LEDGER_DIR, parse_lines
    from hpc_sr.models.artifacts import generator_payload
    from hpc_sr.models.registry import generator_from_spec, generator_spec

    n = 300
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(n):  # 64 x 64 through a 32-channel EDSR: ~20 ms a cutout, time to signal the job
        np.save(tmp_path / "in" / f"c{i:04d}.npy", rng.random((64, 64), dtype=np.float32))
    spec = {"g": {"arch": "edsr", "options": {"channels": 32, "blocks": 4}}}
    torch.save(generator_payload(spec, 2, generator_from_spec(generator_spec(spec["g"]), 2).state_dict(),
                                 "test", 0), tmp_path / "G.pt")
    out = tmp_path / "sr"
    argv = ["--checkpoint", str(tmp_path / "G.pt"), "--out", str(out), "--device", "cpu", "--batch-size", "2",
            "--overwrite", str(tmp_path / "in")]  # --overwrite: the first run only
    ids = submit_upscale(argv, tasks_per_node=2, cpus_per_task=1, time="00:05:00", echo=lambda _: None)
    jobs += ids
    info = _preempt_and_finish(ids[0], lambda: len(list(out.glob("*_sr.npy"))), 20)
    err = (out / ".slurm" / f"{ids[0]}_0_log.err").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", err
    assert "requeued (restart 1" in err
    assert sorted(p.name for p in out.glob("*_sr.npy")) == [f"c{i:04d}_sr.npy" for i in range(n)]
    ranks = sorted((out / LEDGER_DIR).glob("rank_*.jsonl"))
    assert [f.name for f in ranks] == ["rank_00000.jsonl", "rank_00001.jsonl"]
    records = [r for f in ranks for r in parse_lines(f.read_bytes())]
    done = Counter(r["unit"] for r in records if r["status"] == "done")
    assert sorted(done) == [f"c{i:04d}.npy" for i in range(n)] and set(done.values()) == {1}  # once each
    assert len(records) == n  # nothing failed or redone
    assert submitit.SlurmJob(folder=out / ".slurm", job_id=ids[0]).result() == 0


if __name__ == "__main__":  # ENTRY="-m tests.launch.test_launch_upscale" for slurm/upscale.sbatch
    sys.exit(standin_upscale(["upscale", *sys.argv[1:]]))
