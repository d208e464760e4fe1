"""Shard datasets with real DataLoader workers and samplers; aligned crops; augmentation; simulation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from hpc_sr.data.dataset import (
    BlockShardDataset,
    InMemoryShardDataset,
    ShardDataset,
    build_dataset,
    seed_worker,
)
from hpc_sr.data.shards import pack_to_shards, simulate_to_shards
from hpc_sr.errors import DataError

N = 50  # 40 train / 5 val / 5 test


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packed pairs whose HR pixel (0, 0) is global_index / 1000 (LR = 2x2 mean of HR)."""
    base = tmp_path_factory.mktemp("marked")
    rng = np.random.default_rng(0)
    (base / "src" / "HR").mkdir(parents=True)
    (base / "src" / "LR").mkdir()
    for i in range(N):
        hr = rng.random((32, 32), dtype=np.float32)
        hr[0, 0] = i / 1000
        np.save(base / "src" / "HR" / f"{i:03d}.npy", hr)
        np.save(base / "src" / "LR" / f"{i:03d}.npy", hr.reshape(16, 2, 16, 2).mean((1, 3)))
    pack_to_shards("deeplense", base / "src", base / "out", shard_size=16, seed=1)
    return base / "out"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "out"
    simulate_to_shards(out, num=24, hr_size=32, seed=4, shard_size=10, split=(1.0, 0.0, 0.0))
    return out


def markers(hr: torch.Tensor) -> list[int]:
    return [int(round(float(v) * 1000)) for v in hr[:, 0, 0, 0]]


def test_distributed_sampler_with_workers_sees_each_index_once(marked: Path) -> None:
    ds = ShardDataset(marked, "train")
    want = ds.manifest.split_indices("train").tolist()
    seen: list[int] = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        dl = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, worker_init_fn=seed_worker)
        got = [m for _, hr in dl for m in markers(hr)]
        assert len(got) == len(want) // 2
        seen += got
    assert sorted(seen) == want


@pytest.mark.parametrize("world", [2, 3])
def test_block_dataset_splits_blocks_across_ranks_and_workers(marked: Path, world: int) -> None:
    want = set(ShardDataset(marked, "train", verify=False).manifest.split_indices("train").tolist())
    seen: list[int] = []
    for rank in range(world):
        ds = BlockShardDataset(marked, "train", block_size=4, rank=rank, world_size=world, verify=False)
        ds.set_epoch(1)
        dl = DataLoader(ds, batch_size=5, num_workers=2)
        got = [m for _, hr in dl for m in markers(hr)]
        assert len(got) == len(ds) == -(-len(want) // world)
        seen += got
    assert set(seen) == want
    if world == 2:
        assert len(seen) == len(set(seen))


def test_block_order_shuffled_per_epoch_and_content_exact(marked: Path) -> None:
    item = ShardDataset(marked, "train", verify=False)
    by_marker = {markers(hr[None])[0]: (lr, hr) for lr, hr in (item[i] for i in range(len(item)))}
    block = BlockShardDataset(marked, "train", block_size=4, verify=False)
    orders = []
    for epoch in (0, 1):
        block.set_epoch(epoch)
        got = list(block)
        for lr, hr in got:
            ref = by_marker[markers(hr[None])[0]]
            assert torch.equal(lr, ref[0]) and torch.equal(hr, ref[1])
        orders.append([markers(hr[None])[0] for _, hr in got])
    assert sorted(orders[0]) == sorted(by_marker) and orders[0] != orders[1]


def test_in_memory_equals_item_reads(marked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InMemoryShardDataset, "stage_rows", 3)  # several staged reads per shard
    for split in ("train", "test"):
        item, mem = ShardDataset(marked, split), InMemoryShardDataset(marked, split, verify=False)
        assert len(item) == len(mem)
        for i in range(len(item)):
            assert all(torch.equal(a, b) for a, b in zip(item[i], mem[i]))


def test_crops_and_augment_independent_of_workers_and_reproducible(marked: Path) -> None:
    ds = ShardDataset(marked, "train", patch_size=6, augment=True, seed=5)

    def run(workers: int, epoch: int) -> torch.Tensor:
        ds.set_epoch(epoch)
        return torch.cat([hr for _, hr in DataLoader(ds, batch_size=8, num_workers=workers)])

    a, b = run(0, 2), run(2, 2)
    assert a.shape == (40, 1, 12, 12) and torch.equal(a, b)
    assert not torch.equal(a, run(0, 3))
    mem = InMemoryShardDataset(marked, "train", patch_size=6, augment=True, seed=5)
    mem.set_epoch(2)
    assert torch.equal(torch.stack([mem[i][1] for i in range(len(mem))]), a)


def dihedral(x: torch.Tensor, k: int, flip: int) -> torch.Tensor:
    y = torch.rot90(x, k, (-2, -1))
    return y.flip(-1) if flip else y


def test_crops_aligned_and_augment_keeps_pairing(simulated: Path) -> None:
    plain = ShardDataset(simulated, "train", patch_size=5, seed=2)
    aug = ShardDataset(simulated, "train", patch_size=5, augment=True, seed=2)
    changed = 0
    for i in range(len(plain)):
        lr0, hr0 = plain[i]
        lr, hr = aug[i]
        assert lr.shape == (1, 5, 5) and hr.shape == (1, 10, 10)
        torch.testing.assert_close(F.avg_pool2d(hr0[None], 2)[0], lr0, atol=1e-6, rtol=0)
        torch.testing.assert_close(F.avg_pool2d(hr[None], 2)[0], lr, atol=1e-6, rtol=0)
        # the augmented pair is one of the 8 dihedral transforms of the same crop, the same for LR and HR
        hits = [k * 2 + f for k in range(4) for f in range(2)
                if torch.equal(dihedral(lr0, k, f), lr) and torch.equal(dihedral(hr0, k, f), hr)]
        assert hits, f"item {i}: augmented pair is not a dihedral transform of the crop"
        changed += 0 not in hits
    assert changed > 0


def test_patch_too_large_names_both_sizes(marked: Path) -> None:
    msg = r"patch_size=17 \(HR 34\) does not fit the LR images 16x16 \(HR 32x32\)"
    with pytest.raises(DataError, match=msg):
        ShardDataset(marked, "train", patch_size=17, verify=False)
    with pytest.raises(DataError, match="scale 2, the dataset was asked for scale 4"):
        ShardDataset(marked, "train", scale=4, verify=False)
    with pytest.raises(DataError, match="unknown loader"):
        build_dataset(marked, loader="lmdb")


def test_handles_are_lazy_and_not_pickled(marked: Path) -> None:
    ds = build_dataset(marked, "val", loader="item")
    assert ds._handles == {}
    first = ds[0]
    assert len(ds._handles) == 1
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {}
    assert torch.equal(clone[0][1], first[1])
    ds.close()


class _Draws(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return float(np.random.rand())


def test_seed_worker_gives_workers_distinct_reproducible_numpy_streams() -> None:
    def draws() -> list[float]:
        g = torch.Generator().manual_seed(3)
        dl = DataLoader(_Draws(), batch_size=None, num_workers=2, worker_init_fn=seed_worker, generator=g)
        return [float(x) for x in dl]

    a = draws()
    assert a[0] != a[1]  # items 0 and 1 come from different workers
    assert a == draws()
