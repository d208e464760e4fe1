"""hpc_sr.launch.slurm without a cluster: --dry-run scripts, sweep expansion, CLI flags, job-side env."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from hpc_sr.config import ConfigError
from hpc_sr.dist import signals
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE
from hpc_sr.launch.requeue import SlurmTrainJob, master_port, resolve_entry, slurm_dist_env
from hpc_sr.launch.slurm import add_submit_arguments, run_submit, submit, sweep_points


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> None:
    """Jobs run in-process install the process-wide stop flag: take it out again after the test."""
    yield
    if signals._process_flag is not None:
        signals._process_flag.uninstall()
        signals._process_flag = None


def _dry(tmp_path: Path, *overrides: str, **kw) -> str:
    lines: list[str] = []
    ids = submit(None, [f"log.runs_dir={tmp_path}", "log.name=exp", *overrides], dry_run=True,
                 echo=lines.append, **kw)
    assert ids == []
    return "\n".join(lines)


def _directives(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            out[key] = value
    return out


def test_dry_run_cpu_tasks(tmp_path: Path) -> None:
    text = _dry(tmp_path, tasks_per_node=2, nodes=2, cpus_per_task=1, time="01:30:00", partition="debug")
    d = _directives(text)
    assert d["signal"] == "USR2@90" and "requeue" in d
    assert d["ntasks-per-node"] == "2" and d["nodes"] == "2" and d["cpus-per-task"] == "1"
    assert d["time"] == "90" and d["partition"] == "debug" and d["job-name"] == "exp"
    assert "gpus-per-node" not in d
    assert d["output"] == f"{tmp_path.resolve()}/exp/slurm/%j_0_log.out"
    assert "-m submitit.core._submit" in text and text.index("srun") > text.index("#SBATCH")


def test_dry_run_one_task_per_gpu(tmp_path: Path) -> None:
    d = _directives(_dry(tmp_path, "slurm.account=proj", gpus_per_node=4, tasks_per_node=1, mem="64G",
                         qos="high", constraint="a100"))
    assert d["gpus-per-node"] == "4" and d["ntasks-per-node"] == "4"
    assert d["account"] == "proj" and d["mem"] == "64G" and d["qos"] == "high" and d["constraint"] == "a100"


def test_dry_run_defaults_come_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"slurm": {"nodes": 3, "time": "02:00:00", "cpus_per_task": 8},
                                   "log": {"name": "fromfile", "runs_dir": str(tmp_path)}}))
    lines: list[str] = []
    submit(str(cfg), [], dry_run=True, echo=lines.append)
    d = _directives("\n".join(lines))
    assert d["nodes"] == "3" and d["time"] == "120" and d["cpus-per-task"] == "8"
    assert d["job-name"] == "fromfile"


def test_sweep_grid_points() -> None:
    pts = sweep_points({"name": "lr", "grid": {"train.lr_g": [1e-4, 2e-4], "model.blocks": [4, 8, 16]}}, "x")
    assert [n for n, _ in pts] == [f"lr_{i}" for i in range(6)]
    assert pts[0][1] == ["train.lr_g=0.0001", "model.blocks=4"]
    assert {tuple(o) for _, o in pts} == {(f"train.lr_g={a}", f"model.blocks={b}")
                                          for a in ("0.0001", "0.0002") for b in (4, 8, 16)}


def test_sweep_list_form_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump([["train.steps=10"], {"train.steps": 20, "model.channels": 32}],
                               sort_keys=False))
    assert sweep_points(f, "base") == [("base_0", ["train.steps=10"]),
                                       ("base_1", ["train.steps=20", "model.channels=32"])]
    f.write_text("grid: 3\n")
    with pytest.raises(ConfigError, match="s.yaml"):
        sweep_points(f, "base")
    with pytest.raises(ConfigError, match="cannot read sweep file"):
        sweep_points(tmp_path / "missing.yaml", "base")


def test_dry_run_sweep_is_an_array_and_checks_keys(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    grid = {"train.lr_g": [1e-4, 2e-4], "model.blocks": [4, 8]}
    sweep.write_text(yaml.safe_dump({"name": "grid", "grid": grid}))
    text = _dry(tmp_path, sweep=str(sweep))
    assert _directives(text)["array"] == "0-3%4"
    assert _directives(text)["output"].endswith("grid/slurm/%A_%a_0_log.out")
    assert all(f"log.name=grid_{i}" in text for i in range(4))
    sweep.write_text(yaml.safe_dump({"grid": {"train.lr_gen": [1e-4]}}))
    with pytest.raises(ConfigError, match="train.lr_gen"):
        _dry(tmp_path, sweep=str(sweep))


def test_bad_time_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="soon"):
        _dry(tmp_path, time="soon")


def test_cli_flags_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_submit_arguments(p)
    args = p.parse_args(["--dry-run", "--tasks-per-node", "2", "--time", "10", "--max-requeues", "1",
                         f"log.runs_dir={tmp_path}", "log.name=cli"])
    assert run_submit(args) == 0
    d = _directives(capsys.readouterr().out)
    assert d["ntasks-per-node"] == "2" and d["time"] == "10" and d["job-name"] == "cli"


def test_job_side_env_and_entry() -> None:
    env = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_PROCID": "3",
           "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu7,gpu9"}
    assert slurm_dist_env(env) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                   "MASTER_ADDR": "gpu7", "MASTER_PORT": str(master_port(123456))}
    assert 20000 <= master_port(123456) < 40000 and master_port(1) != master_port(2)
    assert resolve_entry("hpc_sr.launch.probe:probe_main").__name__ == "probe_main"
    with pytest.raises(Exception, match="no_such"):
        resolve_entry("hpc_sr.no_such:f")


def test_train_job_runs_entry_outside_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The submitted callable, called in-process without SLURM, runs the probe to the end."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    job = SlurmTrainJob(None, [f"log.runs_dir={tmp_path}", "log.name=local", "train.steps=2"],
                        entry="hpc_sr.launch.probe:probe_main")
    assert job() == 0
    assert (tmp_path / "local" / "probe" / "rank0.json").is_file()
    assert REQUEUE_EXIT_CODE != 0
