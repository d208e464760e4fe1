"""Launcher environments: torchrun and SLURM variables, validation, threads (pure units)."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.dist.env import DistEnv, configure_threads, env_float, env_int
from hpc_sr.dist.slurm import port_from_job_id
from hpc_sr.errors import EnvironmentVariableError


def test_torchrun_environment_wins() -> None:
    env = DistEnv.from_environment(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "n1",
            "MASTER_PORT": "1234",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == (
        3,
        8,
        1,
        "n1",
        1234,
        "torchrun",
    )


def test_slurm_environment_one_task_per_gpu() -> None:
    env = DistEnv.from_environment(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_ID": "123456",
            "SLURM_JOB_NODELIST": "gpu[07-08],gpu11",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (5, 8, 1, "slurm")
    assert env.master_port == port_from_job_id(123456) == 20000 + 123456 % 20000
    assert env.master_addr in ("gpu07", "gpu[07-08]")  # scontrol expands it where installed


def test_single_process_default() -> None:
    env = DistEnv.from_environment({})
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)
    assert DistEnv.from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"RANK": "", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "x"}, "MASTER_PORT"),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "four"}, "SLURM_NTASKS"),
        ({"SLURM_PROCID": "-1", "SLURM_NTASKS": "4"}, "SLURM_PROCID"),
    ],
)
def test_bad_launcher_variables_name_the_variable_and_value(environ: dict[str, str], name: str) -> None:
    with pytest.raises(EnvironmentVariableError, match=rf"{name}="):
        DistEnv.from_environment(environ)


def test_rank_outside_world_is_an_error() -> None:
    with pytest.raises(EnvironmentVariableError, match="rank 4 is outside world size 2"):
        DistEnv.from_environment({"RANK": "4", "WORLD_SIZE": "2"})


def test_env_helpers() -> None:
    assert env_int("N", 3, environ={}) == 3
    assert env_int("N", 3, environ={"N": " 7 "}) == 7
    with pytest.raises(EnvironmentVariableError, match=r"N='' is not an integer"):
        env_int("N", 3, environ={"N": ""})
    with pytest.raises(EnvironmentVariableError, match=r"N='0' must be >= 1"):
        env_int("N", 3, minimum=1, environ={"N": "0"})
    assert env_float("S", 1.5, environ={"S": "2.5"}) == 2.5
    with pytest.raises(EnvironmentVariableError, match="positive"):
        env_float("S", 1.5, environ={"S": "-1"})


def test_empty_omp_num_threads_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    with pytest.raises(EnvironmentVariableError, match="OMP_NUM_THREADS=''"):
        configure_threads(DistEnv())
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configure_threads(DistEnv())
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
