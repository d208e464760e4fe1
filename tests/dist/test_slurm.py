"""SLURM's variables, read in one place: job ids (array jobs), restart count, task layout, node list."""

from __future__ import annotations

import pytest

from hpc_sr.dist.slurm import (
    SlurmTask,
    first_host,
    port_from_job_id,
    scontrol_job_id,
    slurm_job_id,
    slurm_procid,
    slurm_restart_count,
)
from hpc_sr.errors import EnvironmentVariableError


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("node01", "node01"), ("node[01-04]", "node01"), ("gpu[3,5-7],cpu1", "gpu3"), ("a-b[10-12]", "a-b10")],
)
def test_first_host_parsing(nodelist: str, first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # exercise the parser, not scontrol
    assert first_host(nodelist) == first


def test_job_ids_array_tasks_and_absent_values() -> None:
    assert slurm_job_id({}) is None and scontrol_job_id({}) is None
    assert scontrol_job_id({"SLURM_JOB_ID": ""}) is None
    single = {"SLURM_JOB_ID": "77"}
    assert slurm_job_id(single) == scontrol_job_id(single) == "77"
    array = {"SLURM_JOB_ID": "1002", "SLURM_ARRAY_JOB_ID": "1000", "SLURM_ARRAY_TASK_ID": "2"}
    assert slurm_job_id(array) == "1000_2"  # as people name it (and as the run lock records it)
    assert scontrol_job_id(array) == "1002"  # what scontrol requeue takes


def test_restart_count_and_procid_are_validated() -> None:
    assert slurm_restart_count({}) == 0 and slurm_restart_count({"SLURM_RESTART_COUNT": "3"}) == 3
    assert slurm_procid({}) == 0 and slurm_procid({"SLURM_PROCID": "5"}) == 5
    with pytest.raises(EnvironmentVariableError, match="SLURM_RESTART_COUNT='x'"):
        slurm_restart_count({"SLURM_RESTART_COUNT": "x"})
    with pytest.raises(EnvironmentVariableError, match="SLURM_PROCID='-1'"):
        slurm_procid({"SLURM_PROCID": "-1"})


def test_task_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # the node-list parser, not scontrol
    task = SlurmTask.from_environ({"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
                                   "SLURM_LOCALID": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "gpu[3-4]"})
    assert task == SlurmTask(job_id=4242, rank=5, ntasks=8, local_rank=1, nodes=2, nodelist="gpu[3-4]")
    assert task.master_port == port_from_job_id(4242) and task.master_host("x") == "gpu3"
    lone = SlurmTask.from_environ({})
    assert lone == SlurmTask() and lone.master_host("here") == "here"
    both = SlurmTask.from_environ(
        {"SLURM_JOB_NUM_NODES": "4", "SLURM_NNODES": "9", "SLURM_JOB_NODELIST": "a1", "SLURM_NODELIST": "b1"}
    )
    assert (both.nodes, both.nodelist) == (4, "a1")  # the job's variables win over the step's
    for name, value in [("SLURM_JOB_ID", "abc"), ("SLURM_NTASKS", "0"), ("SLURM_JOB_NUM_NODES", "")]:
        with pytest.raises(EnvironmentVariableError, match=f"{name}={value!r}"):
            SlurmTask.from_environ({name: value})
