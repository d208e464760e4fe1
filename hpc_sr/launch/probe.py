"""A tiny stand-in for the trainer to test the SLURM plumbing end to end (same signature as train_main).

Each task joins a gloo group, all-reduces ``rank + 1``, then runs ``train.steps`` "steps" of
``$HPC_SR_PROBE_STEP_S`` seconds, checking the stop flag at every step boundary like the trainer:
flag -> agree -> save a tiny json checkpoint -> requeue_self -> return REQUEUE_EXIT_CODE. It writes
under ``<runs_dir>/<name>/probe/``: ``ckpt.json`` (next step), ``progress.json`` (rank 0, every step),
``rank<r>.json`` (last attempt) and ``rank<r>.attempt<k>.json`` (every attempt).

    python -m hpc_sr.launch.probe [--config FILE] [--resume auto|none] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

from hpc_sr.config import atomic_write_text, load_config
from hpc_sr.dist.env import env_float, env_int
from hpc_sr.dist.signals import REQUEUE_EXIT_CODE, agree, install_stop_flag, requeue_self


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def _init_dist(timeout_s: int) -> tuple[int, int]:
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ and "SLURM_JOB_ID" in os.environ:
        from hpc_sr.launch.requeue import export_slurm_dist_env

        export_slurm_dist_env()
    world = env_int("WORLD_SIZE", 1, minimum=1) or 1
    rank = env_int("RANK", 0) or 0
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world


def probe_main(config_path: str | None, overrides: list[str], resume: str = "auto") -> int:
    """Run the probe; 0 when all steps ran, REQUEUE_EXIT_CODE when stopped by a signal (checkpoint saved)."""
    import torch
    import torch.distributed as dist

    from hpc_sr.dist.collectives import barrier

    cfg = load_config(config_path, overrides)
    out = cfg.run_dir / "probe"
    out.mkdir(parents=True, exist_ok=True)
    flag = install_stop_flag()
    rank, world = _init_dist(cfg.dist.timeout_s)
    t = torch.tensor([float(rank + 1)])
    if world > 1:
        dist.all_reduce(t)
    ckpt = out / "ckpt.json"
    start = json.loads(ckpt.read_text())["step"] if resume == "auto" and ckpt.is_file() else 0
    step_s = env_float("HPC_SR_PROBE_STEP_S", 0.0, positive=False)
    restarts = env_int("SLURM_RESTART_COUNT", 0) or 0
    record = {"rank": rank, "world": world, "sum": t.item(), "host": socket.gethostname(),
              "node": os.environ.get("SLURMD_NODENAME", ""),
              "master": os.environ.get("MASTER_ADDR", ""), "job_id": os.environ.get("SLURM_JOB_ID", ""),
              "restart_count": restarts, "start_step": start, "steps": cfg.train.steps}
    status, step = "done", start
    while step < cfg.train.steps:
        if agree(flag):
            status = "stopped"
            break
        time.sleep(step_s)
        step += 1
        if rank == 0:
            _write_json(out / "progress.json", {"step": step, "restart_count": restarts})
    if rank == 0 and (status == "stopped" or step >= cfg.train.steps):
        _write_json(ckpt, {"step": step})
    if world > 1:
        barrier()
    record.update(end_step=step, status=status, reason=flag.reason)
    _write_json(out / f"rank{rank}.json", record)
    _write_json(out / f"rank{rank}.attempt{restarts}.json", record)
    if world > 1:
        dist.destroy_process_group()
    if status == "stopped":
        requeue_self(cfg.slurm.max_requeues, flag)
        return REQUEUE_EXIT_CODE
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc_sr.launch.probe", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--resume", default="auto")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    return probe_main(a.config, a.overrides, resume=a.resume)


if __name__ == "__main__":
    sys.exit(main())
