"""End to end on a real one-host SLURM cluster (two slurmd): the real trainer (hpc_sr.train.entry:train_main,
tiny configs on simulated data) through submitit jobs, a job array (--sweep), the sbatch scripts, two nodes,
preemption with requeue and resume, a real time limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from hpc_sr.cli import main as cli_main
from hpc_sr.config import load_config
from hpc_sr.launch.slurm import submit
from tests.conftest import tiny_overrides
from tests.launch.launch_slurm_util import (
    job_info,
    last_step,
    metrics,
    release_requeued,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def _tiny(runs: Path, name: str, steps: int, **extra: object) -> list[str]:
    """A tiny real training run on simulated data; checkpoints only at the end (and on a stop)."""
    return tiny_overrides(None, runs, name=name, steps=steps, pretrain=steps // 2, **{
        "train.val_every": steps, "train.ckpt_every": steps, "log.image_every": 0, "dist.timeout_s": 120,
        **extra})


def _submit(runs: Path, overrides: list[str], entry: str | None = None, **kw) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    kw.setdefault("cpus_per_task", 1)
    kw.setdefault("time", "00:05:00")
    if entry:
        kw["entry"] = entry
    ids = submit(None, [f"log.runs_dir={runs}", *overrides], echo=lines.append, **kw)
    return ids, lines


def _sbatch(script: str, runs: Path, name: str, overrides: list[str], *sbatch_args: str) -> str:
    """sbatch one of slurm/*.sbatch with the real `hpc-sr train` entry."""
    env = {**os.environ, "PYTHON": sys.executable, "ENTRY": "-m hpc_sr train", "RUN": name,
           "RUNS_DIR": str(runs), "OVERRIDES": " ".join(overrides)}
    out = subprocess.run(["sbatch", "--parsable", "-o", str(runs / f"{name}-%j.out"), *sbatch_args,
                          str(REPO / "slurm" / script)], env=env, capture_output=True, text=True, timeout=60,
                         check=True, cwd=runs)
    return out.stdout.strip().split(";")[0]


def _preempt_and_release(jid: str, run: Path, at_step: int) -> None:
    """Wait until the job logged ``at_step`` steps, send USR2, wait for the requeue, skip SLURM's hold."""
    wait_for(lambda: last_step(run) >= at_step, 120, f"job {jid} step {at_step}")
    subprocess.run(["scancel", "-s", "USR2", jid], check=True, timeout=30)
    wait_for(lambda: job_info(jid).get("JobState") == "PENDING" and job_info(jid).get("Restarts") == "1",
             90, f"job {jid} to be requeued")
    release_requeued(jid)


def _check_finished(run: Path, steps: int, world: int) -> None:
    """metrics.jsonl has every step once, at ``world`` ranks; the final checkpoint holds all ranks' states."""
    train = metrics(run, "train")
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert {r["world_size"] for r in train} == {world}
    assert {r["phase"] for r in train} == {"pretrain", "gan"}
    final = run / "checkpoints" / f"step_{steps:08d}"
    assert (run / "checkpoints" / "latest").read_text().strip() == final.name
    assert sorted(p.name for p in (final / "rng").iterdir()) == [f"rank_{r:05d}.pt" for r in range(world)]
    assert [r["step"] for r in metrics(run, "val")] == [steps]


def _check_resumed(run: Path, steps: int, world: int) -> int:
    """One stop (SIGUSR2) with a save, a second start that resumed from it, the curve continued; -> step."""
    stops = metrics(run, "stop")
    assert len(stops) == 1 and stops[0]["reason"] == "SIGUSR2"
    saved = stops[0]["step"]
    assert 0 < saved < steps
    starts = metrics(run, "start")
    assert [s["resumed_from"] for s in starts] == [None, str(run / "checkpoints" / f"step_{saved:08d}")]
    assert starts[1]["step"] == saved
    _check_finished(run, steps, world)  # steps 1..saved, then saved+1..steps: continued, not restarted
    return saved


def test_submit_two_task_cpu_job(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    ids, lines = _submit(tmp_path, _tiny(tmp_path, "two", 4), tasks_per_node=2)
    jobs += ids
    job = submitit.SlurmJob(folder=tmp_path / "two" / "slurm", job_id=ids[0])
    assert wait_final(ids[0], 180)["JobState"] == "COMPLETED", job.stderr()
    assert job.result() == 0
    assert job.watcher.get_state(ids[0], mode="force") == "COMPLETED"  # the sacct stand-in, read by submitit
    _check_finished(tmp_path / "two", 4, world=2)
    text = "\n".join(lines)
    assert f"submitted job {ids[0]}" in text and str(job.paths.stdout) in text
    assert f"tensorboard --logdir {tmp_path / 'two' / 'tb'} --host 127.0.0.1 --port 6006" in text
    assert "ssh -L 6006:127.0.0.1:6006" in text


def test_submit_two_nodes_through_the_cli(slurm_cluster: Path, jobs: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`hpc-sr submit --nodes 2` (the real CLI code, in-process): one rank per node, the real trainer."""
    argv = ["submit", "--nodes", "2", "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "5",
            *_tiny(tmp_path, "nodes", 2)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    match = re.search(r"submitted job (\d+): run nodes", out)
    assert match, out
    jobs.append(match.group(1))
    info = wait_final(match.group(1), 180)
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == "hpcsr[1-2]" and info["NumNodes"] == "2"
    _check_finished(tmp_path / "nodes", 2, world=2)


def test_sweep_is_a_job_array_of_real_trainings(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    """`--sweep`: one array task per grid point, each the real trainer in its own run directory."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: sw\ngrid:\n  train.steps: [3, 4]\n")
    ids, _ = _submit(tmp_path, _tiny(tmp_path, "ignored", 4), sweep=str(sweep), tasks_per_node=1)
    jobs += ids
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1")
    for i, steps in enumerate((3, 4)):
        assert wait_final(ids[i], 180)["JobState"] == "COMPLETED"
        job = submitit.SlurmJob(folder=tmp_path / "sw" / "slurm", job_id=ids[i])
        assert wait_for(job.done, 30, f"result of {ids[i]}") and job.result() == 0
        run = tmp_path / f"sw_{i}"
        cfg = load_config(run / "config.yaml")
        assert (cfg.log.name, cfg.train.steps, cfg.train.pretrain_steps) == (f"sw_{i}", steps, 2)
        _check_finished(run, steps, world=1)
    assert not (tmp_path / "ignored").exists()  # the base name only names the array


def test_train_sbatch_one_task_per_rank(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    overrides = _tiny(tmp_path, "sb", 4)
    jid = _sbatch("train.sbatch", tmp_path, "sb", overrides, "-N1", "--ntasks-per-node=2", "-c1")
    jobs.append(jid)
    info = wait_final(jid, 180)
    log = (tmp_path / f"sb-{jid}.out").read_text()
    assert info["JobState"] == "COMPLETED", log
    assert "srun exit code 0" in log
    _check_finished(tmp_path / "sb", 4, world=2)


def test_torchrun_sbatch_two_nodes_preempted_and_resumed(slurm_cluster: Path, jobs: list[str],
                                                         tmp_path: Path) -> None:
    """USR2 reaches the torchrun workers (torchrun ignores it); they save, rank 0 requeues, it resumes."""
    steps = 300
    jid = _sbatch("torchrun.sbatch", tmp_path, "tr", _tiny(tmp_path, "tr", steps), "-N2", "-c1", "--time=5")
    jobs.append(jid)
    _preempt_and_release(jid, tmp_path / "tr", 3)
    info = wait_final(jid, 240)
    assert info["JobState"] == "COMPLETED", (tmp_path / f"tr-{jid}.out").read_text()
    assert info["Restarts"] == "1" and info["NodeList"] == "hpcsr[1-2]"
    _check_resumed(tmp_path / "tr", steps, world=2)


def test_submitit_preempted_requeued_and_resumed(slurm_cluster: Path, jobs: list[str],
                                                 tmp_path: Path) -> None:
    steps = 300
    ids, _ = _submit(tmp_path, _tiny(tmp_path, "pre", steps), tasks_per_node=2)
    jobs += ids
    _preempt_and_release(ids[0], tmp_path / "pre", 3)
    assert wait_final(ids[0], 240)["JobState"] == "COMPLETED"
    job = submitit.SlurmJob(folder=tmp_path / "pre" / "slurm", job_id=ids[0])
    assert job.result() == 0
    _check_resumed(tmp_path / "pre", steps, world=2)
    assert "requeued (restart 1" in (tmp_path / "pre" / "slurm" / f"{ids[0]}_0_log.err").read_text()


def test_no_requeue_past_max_timeouts(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    """With a 5 min limit every signal counts as a time-out (submitit's rule); max_requeues=0 -> job fails."""
    ids, _ = _submit(tmp_path, _tiny(tmp_path, "max", 100000, **{"log.log_every": 10}), tasks_per_node=1,
                     max_requeues=0)
    jobs += ids
    run = tmp_path / "max"
    wait_for(lambda: last_step(run) >= 10, 120, "first steps")
    subprocess.run(["scancel", "-s", "USR2", ids[0]], check=True, timeout=30)
    info = wait_final(ids[0], 120)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0"
    job = submitit.SlurmJob(folder=run / "slurm", job_id=ids[0])
    with pytest.raises(submitit.core.utils.FailedJobError, match="not requeued"):
        job.result()
    stop = metrics(run, "stop")
    assert len(stop) == 1  # the checkpoint was saved anyway
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stop[0]['step']:08d}"


def test_time_limit_signal_requeues(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    """A real time limit: --time=2 --signal=USR2@80 sends USR2 ~40-55 s in (slurmctld's timer is coarse);
    the trainer stops, saves, counts it as a time-out and requeues. The requeued run is cancelled.
    (With --time=1 and USR2@50 the signal came ~10 s in: on a loaded CI machine, before Python had installed
    its handler, which killed the task instead.)"""
    overrides = _tiny(tmp_path, "tl", 100000, **{"log.log_every": 10})
    jid = _sbatch("train.sbatch", tmp_path, "tl", overrides, "-N1", "-n1", "-c1", "--time=2",
                  "--signal=USR2@80")
    jobs.append(jid)
    wait_for(lambda: job_info(jid).get("Restarts") == "1", 180, f"job {jid} to be requeued at its time limit")
    run = tmp_path / "tl"
    stop = metrics(run, "stop")
    assert len(stop) == 1 and stop[0]["reason"] == "SIGUSR2" and 0 < stop[0]["step"] < 100000
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stop[0]['step']:08d}"
    log = wait_for(lambda: "requeued" in (tmp_path / f"tl-{jid}.out").read_text()
                   and (tmp_path / f"tl-{jid}.out").read_text(), 30, "the requeue message")
    assert "timed-out; requeued (restart 1" in log
