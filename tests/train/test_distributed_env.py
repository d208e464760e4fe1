"""Launcher environments, seeds, EMA and learning-rate schedules (pure units)."""

from __future__ import annotations

import math

import pytest
import torch

from hpc_sr.dist.env import DistEnv, configure_threads, env_float, env_int, first_host, port_from_job_id
from hpc_sr.errors import EnvironmentVariableError
from hpc_sr.train.ema import ModelEMA
from hpc_sr.train.rng import rng_state, seed_everything, set_rng_state
from hpc_sr.train.schedule import lr_at


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
    ("nodelist", "first"),
    [("node01", "node01"), ("node[01-04]", "node01"), ("gpu[3,5-7],cpu1", "gpu3"), ("a-b[10-12]", "a-b10")],
)
def test_first_host_parsing(nodelist: str, first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # exercise the parser, not scontrol
    assert first_host(nodelist) == first


def test_rng_state_round_trip_restores_all_generators() -> None:
    import random

    import numpy as np

    seed_everything(7)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_ema_tracks_parameters_and_buffers_in_float32() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).bfloat16()
    ema = ModelEMA(model, decay=0.5)
    assert all(v.dtype in (torch.float32, torch.int64) for v in ema.module.state_dict().values())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
    before = ema.module.state_dict()["0.weight"].clone()
    ema.update(model)
    decay = min(0.5, 2 / 11)
    expected = before * decay + model.state_dict()["0.weight"].float() * (1 - decay)
    torch.testing.assert_close(ema.module.state_dict()["0.weight"], expected)
    assert ema.module.state_dict()["1.running_mean"].abs().sum() > 0  # buffers averaged too
    assert ema.module.state_dict()["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"]


def test_schedules_warm_up_and_decay() -> None:
    assert lr_at(0, 1.0, 100, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 100, warmup=10, kind="cosine") == pytest.approx(1.0)
    assert lr_at(100, 1.0, 100, warmup=10, kind="cosine", min_ratio=0.01) == pytest.approx(0.01)
    mid = lr_at(55, 1.0, 100, warmup=10, kind="cosine", min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(80, 1.0, 100, kind="step") == pytest.approx(0.25)
    assert lr_at(50, 1.0, 100, kind="constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(50, 1.0, 100, kind="linear")


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
