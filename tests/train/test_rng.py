"""Per-rank RNG state: saved and restored for every generator a run draws from."""

from __future__ import annotations

import torch

from hpc_sr.train.rng import rng_state, seed_everything, set_rng_state


def test_rng_state_round_trip_restores_all_generators() -> None:
    import random

    import numpy as np

    seed_everything(7)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
