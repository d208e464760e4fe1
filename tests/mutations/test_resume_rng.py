"""A resumed run continues the global random streams (python, numpy, torch) of the run it resumes.

Nothing in the shipped training loop draws from the global generators between steps (every crop, sample and
permutation has its own seeded generator), so the exact-resume tests pass even when a resume forgets the
per-rank RNG states. Anything that does draw from them (dropout, a user's loss term or stream, the val
DataLoader's base seed) would then diverge after a resume; this test pins the contract down.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from hpc_sr.config import load_config
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


def _next_draws() -> tuple[float, list[float], list[float]]:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_resume_continues_the_global_rng_streams_of_the_saved_run(tiny_shards: Path, tmp_path: Path) -> None:
    over = tiny_overrides(tiny_shards, tmp_path, steps=2, pretrain=2, **{
        "data.options.loader": "memory", "train.ckpt_every": 2, "train.val_every": 100,
        "log.tensorboard": "false", "log.image_every": 0,
    })
    first = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="never")
    _next_draws()  # the process draws from every global generator before its checkpoint
    assert first.run() == 0  # ends with the step-2 checkpoint, nothing drawn after it
    expected = _next_draws()  # what the interrupted process would have drawn next

    second = Trainer(load_config(None, over), DistEnv(), torch.device("cpu"), resume="auto")
    assert second.step == 2  # the constructor re-seeded, then the resume restored the saved states
    got = _next_draws()
    assert got[0] == expected[0], "python's random stream was not restored"
    assert got[1] == expected[1], "numpy's global stream was not restored"
    assert got[2] == expected[2], "torch's CPU stream was not restored"
