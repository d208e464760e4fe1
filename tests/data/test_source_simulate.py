"""The simulate source: rank-aware per-sample windows, resumable from its generator state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.config import DataConfig
from hpc_sr.data.streams import make_train_stream
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError

CPU = torch.device("cpu")


def test_simulated_stream_rank_aware_per_sample_windows_and_resumable() -> None:
    data = DataConfig(source="simulate", options={"hr_size": 32}, patch_size=6, augment=False)
    s0 = make_train_stream(data, 0, DistEnv(), CPU, 3)
    lr, hr = next(s0)
    assert lr.shape == (3, 1, 6, 6) and hr.shape == (3, 1, 12, 12)
    torch.testing.assert_close(F.avg_pool2d(hr, 2), lr, atol=1e-6, rtol=0)
    state = s0.state_dict()
    after = next(s0)
    s1 = make_train_stream(data, 0, DistEnv(rank=1, world_size=2), CPU, 3)
    assert not torch.equal(next(s1)[1], hr)
    again = make_train_stream(data, 0, DistEnv(), CPU, 3)
    again.load_state_dict(state)
    assert torch.equal(next(again)[1], after[1])
    with pytest.raises(DataError, match="data.patch_size=20"):
        tall = DataConfig(source="simulate", options={"hr_size": 32}, patch_size=20)
        make_train_stream(tall, 0, DistEnv(), CPU, 3)
