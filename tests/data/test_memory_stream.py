"""The resident stream: the split held once, chunks of crops, exact resume, rank-disjoint epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.config import DataConfig
from hpc_sr.data.memory_stream import MemoryStream
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.data.streams import make_train_stream
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError

CPU = torch.device("cpu")




@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("streams") / "data"
    simulate_to_shards(out, 40, hr_size=32, seed=3, shard_size=16)
    return out


def _data(path: Path, loader: str = "memory", **kw: object) -> DataConfig:
    base = dict(source="shards", path=str(path), options={"loader": loader}, patch_size=6, augment=True)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def _take(stream: object, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(stream) for _ in range(n)]  # type: ignore[call-overload]


@pytest.mark.parametrize("loader", ["memory", "device"])
def test_memory_stream_pairs_aligned_and_deterministic(shards: Path, loader: str) -> None:
    a = _take(make_train_stream(_data(shards, loader=loader), 1, DistEnv(), CPU, 4), 12)
    b = _take(make_train_stream(_data(shards, loader=loader), 1, DistEnv(), CPU, 4), 12)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    for lr, hr in a:
        assert lr.shape == (4, 1, 6, 6) and hr.shape == (4, 1, 12, 12)
        torch.testing.assert_close(F.avg_pool2d(hr, 2), lr, atol=1e-6, rtol=0)  # LR is the 2x2 mean of HR
    other_seed = _take(make_train_stream(_data(shards), 2, DistEnv(), CPU, 4), 1)
    assert not torch.equal(other_seed[0][1], a[0][1])


def test_memory_stream_resumes_exactly_mid_epoch_and_across_epochs(shards: Path) -> None:
    s = make_train_stream(_data(shards), 0, DistEnv(), CPU, 4)
    per_epoch = s.batches_per_epoch
    _take(s, per_epoch - 2)
    state = s.state_dict()
    expected = _take(s, 5)  # crosses the epoch boundary
    resumed = make_train_stream(_data(shards), 0, DistEnv(), CPU, 4)
    resumed.load_state_dict(state)
    got = _take(resumed, 5)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(expected, got))
    assert resumed.state_dict()["epoch"] == 1


def test_memory_stream_ranks_are_disjoint_within_an_epoch(shards: Path) -> None:
    plain = _data(shards, patch_size=0, augment=False)
    seen = []
    for rank in (0, 1):
        s = MemoryStream(plain, 0, DistEnv(rank=rank, world_size=2), CPU, 4)
        batches = _take(s, s.batches_per_epoch)
        seen.append(
            {tuple(hr.flatten()[:8].tolist()) for _, b in [(None, x[1]) for x in batches] for hr in b}
        )
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_memory_stream_patch_check_names_sizes(shards: Path) -> None:
    with pytest.raises(DataError, match=r"data.patch_size=17 \(HR 34\) does not fit the LR images 16x16"):
        MemoryStream(_data(shards, patch_size=17), 0, DistEnv(), CPU, 4)
