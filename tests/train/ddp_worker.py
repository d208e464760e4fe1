"""Run under torchrun by the tests: train a tiny config, then dump this rank's G and D weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hpc_sr.config import load_config
from hpc_sr.dist import env as du
from hpc_sr.train.trainer import Trainer


def main(out_dir: str, overrides: list[str]) -> int:
    env = du.DistEnv.from_environment()
    du.configure_threads(env)
    cfg = load_config(None, overrides)
    device = du.select_device(env)
    du.init_distributed(env, device, timeout_s=cfg.dist.timeout_s)
    try:
        trainer = Trainer(cfg, env, device, resume="auto")
        code = trainer.run()
        weights = {
            name: {k: v.detach().cpu().float() for k, v in trainer.backend.module(name).state_dict().items()}
            for name in trainer.backend.names()
        }
        torch.save(weights, Path(out_dir) / f"weights_rank{env.rank}.pt")
        return code
    finally:
        du.shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
