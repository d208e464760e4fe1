"""Run under torchrun by tests/train/test_deepspeed.py: several tiny trainings in one process group.

    torchrun --nproc_per_node 2 tests/train/ds_worker.py OUT_DIR JOBS.json

JOBS.json is a list of {"tag": str, "overrides": [...], "resume": "never"|"auto"}; after each job every rank
writes OUT_DIR/<tag>_rank<r>.pt with its G (and D) weights in float32, the MiB of optimiser state it holds per
model and the time the job took.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from hpc_sr.config import load_config
from hpc_sr.dist import env as du
from hpc_sr.train.backends.deepspeed import optimizer_state_mb
from hpc_sr.train.trainer import Trainer


def main(out_dir: str, jobs_file: str) -> int:
    env = du.DistEnv.from_environment()
    du.configure_threads(env)
    device = du.select_device(env)
    du.init_distributed(env, device)
    try:
        for job in json.loads(Path(jobs_file).read_text()):
            t0 = time.perf_counter()
            cfg = load_config(None, job["overrides"])
            trainer = Trainer(cfg, env, device, resume=job.get("resume", "auto"))
            code = trainer.run()
            if code != 0:
                return code
            weights = {name: {k: v.detach().cpu().float().clone()
                              for k, v in trainer.backend.module(name).state_dict().items()}
                       for name in trainer.backend.names()}
            opt_mb = {name: optimizer_state_mb(trainer.backend, name) for name in trainer.backend.names()}
            torch.save({"weights": weights, "optimizer_mb": opt_mb, "seconds": time.perf_counter() - t0},
                       Path(out_dir) / f"{job['tag']}_rank{env.rank}.pt")
            torch.distributed.barrier()
        return 0
    finally:
        du.shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
