"""End to end on a real one-host SLURM cluster (two slurmd): submitit jobs, job arrays, the sbatch
scripts, preemption with requeue and resume. The job function is hpc_sr.launch.probe (see its doc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from hpc_sr.launch.slurm import submit
from tests.launch.launch_slurm_util import job_info, wait_final, wait_for

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
PROBE = "hpc_sr.launch.probe:probe_main"


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _submit(runs: Path, name: str, *overrides: str, **kw) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    kw.setdefault("cpus_per_task", 1)
    kw.setdefault("time", "00:05:00")
    ids = submit(None, [f"log.runs_dir={runs}", f"log.name={name}", *overrides], entry=PROBE,
                 echo=lines.append, **kw)
    return ids, lines


def _sbatch(script: str, runs: Path, name: str, steps: int, *sbatch_args: str,
            step_s: float = 0.0) -> str:
    env = {**os.environ, "PYTHON": sys.executable, "ENTRY": "-m hpc_sr.launch.probe", "RUN": name,
           "RUNS_DIR": str(runs), "OVERRIDES": f"train.steps={steps}", "HPC_SR_PROBE_STEP_S": str(step_s)}
    out = subprocess.run(["sbatch", "--parsable", "-o", str(runs / f"{name}-%j.out"), *sbatch_args,
                          str(REPO / "slurm" / script)], env=env, capture_output=True, text=True, timeout=60,
                         check=True, cwd=runs)
    return out.stdout.strip().split(";")[0]


def _preempt_and_release(jid: str, progress: Path, at_step: int) -> None:
    """Wait until the job ran ``at_step`` steps, send USR2, wait for the requeue, skip SLURM's hold."""
    wait_for(lambda: progress.is_file() and _read(progress)["step"] >= at_step, 60,
             f"job {jid} step {at_step}")
    subprocess.run(["scancel", "-s", "USR2", jid], check=True, timeout=30)
    wait_for(lambda: job_info(jid).get("JobState") == "PENDING" and job_info(jid).get("Restarts") == "1",
             60, f"job {jid} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True, timeout=30)


def test_submit_two_task_cpu_job(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    ids, lines = _submit(tmp_path, "two", "train.steps=2", tasks_per_node=2)
    jobs += ids
    assert wait_final(ids[0])["JobState"] == "COMPLETED"
    job = submitit.SlurmJob(folder=tmp_path / "two" / "slurm", job_id=ids[0])
    assert job.result() == 0
    assert job.watcher.get_state(ids[0], mode="force") == "COMPLETED"  # the sacct stand-in, read by submitit
    recs = [_read(tmp_path / "two" / "probe" / f"rank{r}.json") for r in range(2)]
    assert [r["rank"] for r in recs] == [0, 1] and {r["world"] for r in recs} == {2}
    assert {r["sum"] for r in recs} == {3.0}  # gloo all_reduce of rank+1 over 2 tasks
    assert recs[0]["master"] == "hpcsr1" and recs[0]["end_step"] == 2
    text = "\n".join(lines)
    assert f"submitted job {ids[0]}" in text and str(job.paths.stdout) in text
    assert f"tensorboard --logdir {tmp_path / 'two' / 'tb'} --host 127.0.0.1 --port 6006" in text
    assert "ssh -L 6006:127.0.0.1:6006" in text


def test_submit_two_nodes(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    ids, _ = _submit(tmp_path, "nodes", "train.steps=1", nodes=2, tasks_per_node=1)
    jobs += ids
    assert wait_final(ids[0])["JobState"] == "COMPLETED"
    recs = [_read(tmp_path / "nodes" / "probe" / f"rank{r}.json") for r in range(2)]
    assert sorted(r["node"] for r in recs) == ["hpcsr1", "hpcsr2"]
    assert {r["sum"] for r in recs} == {3.0}


def test_sweep_is_a_job_array(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: sw\ngrid:\n  train.steps: [1, 3]\n")
    ids, _ = _submit(tmp_path, "ignored", sweep=str(sweep), tasks_per_node=1)
    jobs += ids
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1")
    for i, steps in enumerate((1, 3)):
        wait_for(lambda i=i: (tmp_path / f"sw_{i}" / "probe" / "rank0.json").is_file(), 60, f"array task {i}")
        assert _read(tmp_path / f"sw_{i}" / "probe" / "rank0.json")["end_step"] == steps
        job = submitit.SlurmJob(folder=tmp_path / "sw" / "slurm", job_id=ids[i])
        assert wait_for(job.done, 30, f"result of {ids[i]}") and job.result() == 0


def test_train_sbatch_one_task_per_rank(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    jid = _sbatch("train.sbatch", tmp_path, "sb", 2, "-N1", "--ntasks-per-node=2", "-c1")
    jobs.append(jid)
    info = wait_final(jid)
    log = (tmp_path / f"sb-{jid}.out").read_text()
    assert info["JobState"] == "COMPLETED", log
    recs = [_read(tmp_path / "sb" / "probe" / f"rank{r}.json") for r in range(2)]
    assert {r["world"] for r in recs} == {2} and {r["sum"] for r in recs} == {3.0}
    assert "srun exit code 0" in log


def test_torchrun_sbatch_two_nodes_preempted_and_resumed(slurm_cluster: Path, jobs: list[str],
                                                         tmp_path: Path) -> None:
    """USR2 reaches the torchrun workers (torchrun ignores it); they save, rank 0 requeues, it resumes."""
    jid = _sbatch("torchrun.sbatch", tmp_path, "tr", 12, "-N2", "-c1", "--time=5", step_s=0.25)
    jobs.append(jid)
    out = tmp_path / "tr" / "probe"
    _preempt_and_release(jid, out / "progress.json", 3)
    info = wait_final(jid, 90)
    assert info["JobState"] == "COMPLETED", (tmp_path / f"tr-{jid}.out").read_text()
    first = [_read(out / f"rank{r}.attempt0.json") for r in range(2)]
    last = [_read(out / f"rank{r}.json") for r in range(2)]
    assert {r["status"] for r in first} == {"stopped"} and {r["reason"] for r in first} == {"SIGUSR2"}
    assert len({r["end_step"] for r in first}) == 1  # both ranks stopped at the same step
    assert {r["start_step"] for r in last} == {first[0]["end_step"]} and first[0]["end_step"] >= 3
    assert {r["end_step"] for r in last} == {12} and {r["restart_count"] for r in last} == {1}
    assert {r["world"] for r in last} == {2}


def test_submitit_preempted_requeued_and_resumed(slurm_cluster: Path, jobs: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPC_SR_PROBE_STEP_S", "0.25")
    ids, _ = _submit(tmp_path, "pre", "train.steps=12", tasks_per_node=2)
    jobs += ids
    out = tmp_path / "pre" / "probe"
    _preempt_and_release(ids[0], out / "progress.json", 3)
    assert wait_final(ids[0], 90)["JobState"] == "COMPLETED"
    job = submitit.SlurmJob(folder=tmp_path / "pre" / "slurm", job_id=ids[0])
    assert job.result() == 0
    first, last = _read(out / "rank0.attempt0.json"), _read(out / "rank0.json")
    assert first["status"] == "stopped" and first["end_step"] >= 3
    assert last["start_step"] == first["end_step"] and last["end_step"] == 12 and last["restart_count"] == 1
    assert "requeued (restart 1" in (tmp_path / "pre" / "slurm" / f"{ids[0]}_0_log.err").read_text()


def test_no_requeue_past_max_timeouts(slurm_cluster: Path, jobs: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 5 min limit every signal counts as a time-out (submitit's rule); max_requeues=0 -> job fails."""
    monkeypatch.setenv("HPC_SR_PROBE_STEP_S", "0.25")
    ids, _ = _submit(tmp_path, "max", "train.steps=40", tasks_per_node=1, max_requeues=0)
    jobs += ids
    progress = tmp_path / "max" / "probe" / "progress.json"
    wait_for(lambda: progress.is_file() and _read(progress)["step"] >= 2, 60, "first steps")
    subprocess.run(["scancel", "-s", "USR2", ids[0]], check=True, timeout=30)
    info = wait_final(ids[0])
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0"
    job = submitit.SlurmJob(folder=tmp_path / "max" / "slurm", job_id=ids[0])
    with pytest.raises(submitit.core.utils.FailedJobError, match="not requeued"):
        job.result()
    assert _read(tmp_path / "max" / "probe" / "ckpt.json")["step"] >= 2  # the checkpoint was saved anyway


def test_time_limit_signal_requeues(slurm_cluster: Path, jobs: list[str], tmp_path: Path) -> None:
    """A real time limit: --time=1 --signal=USR2@50 sends USR2 ~10-25 s in (slurmctld's timer is coarse);
    the probe stops, counts it as a time-out and requeues. The requeued run is cancelled, not waited for."""
    jid = _sbatch("train.sbatch", tmp_path, "tl", 400, "-N1", "-n1", "-c1", "--time=1", "--signal=USR2@50",
                  step_s=0.25)
    jobs.append(jid)
    wait_for(lambda: job_info(jid).get("Restarts") == "1", 75, f"job {jid} to be requeued at its time limit")
    first = _read(tmp_path / "tl" / "probe" / "rank0.attempt0.json")
    assert first["status"] == "stopped" and first["reason"] == "SIGUSR2" and 0 < first["end_step"] < 400
    assert _read(tmp_path / "tl" / "probe" / "ckpt.json")["step"] == first["end_step"]
    log = wait_for(lambda: "requeued" in (tmp_path / f"tl-{jid}.out").read_text()
                   and (tmp_path / f"tl-{jid}.out").read_text(), 30, "the requeue message")
    assert "timed-out; requeued (restart 1" in log
