"""Training sources: the registry, the batched resident stream (exact resume, rank-disjoint), simulation, the
one
crop/augment transform."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpc_sr.config import ConfigError, DataConfig
from hpc_sr.data.augment import Draws, crop_and_augment, draw
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.data.streams import MemoryStream, make_train_stream, source_names
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("streams") / "data"
    simulate_to_shards(out, 40, hr_size=32, seed=3, shard_size=16)
    return out


def _data(path: Path, **kw: object) -> DataConfig:
    base = dict(source="shards", path=str(path), loader="memory", patch_size=6, augment=True, num_workers=0)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def _reference(img: torch.Tensor, y: int, x: int, e: int, p: int) -> torch.Tensor:
    out = torch.rot90(img[..., y : y + p, x : x + p], e // 2, dims=(-2, -1))
    return out.flip(-1) if e % 2 else out


def test_crop_and_augment_matches_rot90_and_flip_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    lr, hr = torch.rand(16, 1, 10, 10, generator=g), torch.rand(16, 1, 20, 20, generator=g)
    d = draw(16, (10, 10), 4, True, g)
    assert len(set(d.e.tolist())) > 3  # transforms differ across the batch
    lr_p, hr_p = crop_and_augment(lr, hr, d, 4, 2)
    for i in range(16):
        y, x, e = int(d.y[i]), int(d.x[i]), int(d.e[i])
        assert torch.equal(lr_p[i], _reference(lr[i], y, x, e, 4))
        assert torch.equal(hr_p[i], _reference(hr[i], 2 * y, 2 * x, e, 8))


def test_crop_from_a_resident_split_by_index_and_multichannel() -> None:
    lr, hr = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 16, 16)
    d = Draws(torch.tensor([0, 4]), torch.tensor([3, 1]), torch.tensor([5, 2]))
    index = torch.tensor([4, 1])
    lr_p, hr_p = crop_and_augment(lr, hr, d, 4, 2, index=index)
    for j, i in enumerate(index.tolist()):
        assert torch.equal(lr_p[j], _reference(lr[i], int(d.y[j]), int(d.x[j]), int(d.e[j]), 4))
        assert torch.equal(hr_p[j], _reference(hr[i], 2 * int(d.y[j]), 2 * int(d.x[j]), int(d.e[j]), 8))


def test_registry_and_unknown_source() -> None:
    assert {"shards", "simulate"} <= set(source_names())
    with pytest.raises(ConfigError, match="data.source: unknown source 'shard' \\(did you mean 'shards'"):
        make_train_stream(DataConfig(source="shard"), 0, DistEnv(), CPU, 4)


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


def test_simulated_stream_rank_aware_per_sample_windows_and_resumable() -> None:
    data = DataConfig(source="simulate", hr_size=32, patch_size=6, augment=False)
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
        make_train_stream(DataConfig(source="simulate", hr_size=32, patch_size=20), 0, DistEnv(), CPU, 3)
