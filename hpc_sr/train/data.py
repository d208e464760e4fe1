"""The trainer's data: an endless, resumable stream of per-rank micro-batches and a rank-sharded val set.

``source: shards`` reads HDF5 shards through a DataLoader with a DistributedSampler (set_epoch every epoch)
that can start mid-epoch, so a resumed run sees exactly the batches the uninterrupted run would have seen.
``source: simulate`` renders batches on the fly (on the training device when asked) from a torch.Generator
whose state is checkpointed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from hpc_sr.config import Config
from hpc_sr.errors import DataError
from hpc_sr.train.distributed import DistEnv


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can skip the first ``start`` indices of this rank's share of an epoch."""

    def __init__(self, dataset: Dataset, env: DistEnv, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class ShardStream:
    """Endless per-rank micro-batches from the train split of a shard directory."""

    def __init__(self, cfg: Config, env: DistEnv, device: torch.device, micro_batch: int) -> None:
        from hpc_sr.data.dataset import BlockShardDataset, build_dataset, seed_worker

        d = cfg.data
        self.dataset = build_dataset(
            d.path,
            split="train",
            loader=d.loader,
            patch_size=d.patch_size,
            augment=d.augment,
            seed=cfg.train.seed,
            block_size=d.block_size,
            scale=d.scale,
        )
        n = len(self.dataset.indices)
        if n < micro_batch * env.world_size:
            raise DataError(
                f"{d.path}: train split has {n} pairs, fewer than one global micro-batch "
                f"({micro_batch} x {env.world_size} ranks)"
            )
        # block reads: contiguous chunks, shuffled blocks + buffer, split over ranks by the dataset itself
        self.block = isinstance(self.dataset, BlockShardDataset)
        self.sampler = None if self.block else ResumableSampler(self.dataset, env, cfg.train.seed)
        self.micro_batch = micro_batch
        self.device = device
        self._loader_kwargs: dict[str, Any] = dict(
            batch_size=micro_batch,
            sampler=self.sampler,
            num_workers=d.num_workers,
            drop_last=True,
            worker_init_fn=seed_worker,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if d.num_workers > 0 else None,
        )
        self.epoch = 0
        self.position = 0  # micro-batches of this epoch already consumed on this rank
        self._it: Iterator[Any] | None = None

    def _start_epoch(self) -> None:
        self.dataset.set_epoch(self.epoch)
        if self.sampler is not None:
            self.sampler.set_position(self.epoch, self.position * self.micro_batch)
        self._it = iter(DataLoader(self.dataset, **self._loader_kwargs))
        if self.sampler is None:  # block reads cannot seek: replay the consumed batches of this epoch
            for _ in range(self.position):
                next(self._it, None)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._start_epoch()
        try:
            lr, hr = next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            lr, hr = next(self._it)  # type: ignore[arg-type]
        self.position += 1
        return lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A finished epoch is detected by __next__ (empty iterator -> next epoch).
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._it = None


class SimulatedStream:
    """Endless per-rank micro-batches rendered by the lensing simulator (no DataLoader workers)."""

    def __init__(self, cfg: Config, env: DistEnv, device: torch.device, micro_batch: int) -> None:
        from hpc_sr.data.lensing import LensingSimulator

        d = cfg.data
        sim_device = device if d.sim_device == "auto" else torch.device(d.sim_device)
        self.sim = LensingSimulator(d.preset, hr_size=d.hr_size, scale=d.scale, device=sim_device)
        self.generator = torch.Generator(device=sim_device)
        self.generator.manual_seed(cfg.train.seed * 1_000_003 + env.rank)
        self.micro_batch = micro_batch
        self.patch = d.patch_size
        self.scale = d.scale
        self.device = device

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.sim.sample(self.micro_batch, generator=self.generator)
        lr, hr = batch.lr, batch.hr
        if self.patch:
            lr, hr = random_aligned_crop(lr, hr, self.patch, self.scale, self.generator)
        return lr.to(self.device), hr.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def random_aligned_crop(
    lr: torch.Tensor, hr: torch.Tensor, patch: int, scale: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random LR patch p x p per batch (and its HR patch sp x sp)."""
    h, w = lr.shape[-2:]
    if patch > min(h, w):
        raise DataError(f"data.patch_size={patch} is larger than the LR image {h}x{w}")
    y = int(torch.randint(0, h - patch + 1, (1,), generator=generator, device=generator.device))
    x = int(torch.randint(0, w - patch + 1, (1,), generator=generator, device=generator.device))
    return (
        lr[..., y : y + patch, x : x + patch],
        hr[..., y * scale : (y + patch) * scale, x * scale : (x + patch) * scale],
    )


def make_train_stream(cfg: Config, env: DistEnv, device: torch.device, micro_batch: int) -> Any:
    if cfg.data.source == "simulate":
        return SimulatedStream(cfg, env, device, micro_batch)
    return ShardStream(cfg, env, device, micro_batch)


def make_val_loader(cfg: Config, env: DistEnv, batch_size: int) -> DataLoader | None:
    """This rank's share (indices rank::world) of the val split, whole images, no augmentation."""
    d = cfg.data
    if d.source == "simulate":
        from hpc_sr.data.lensing import LensingSimulator

        n = d.val_images or 64
        sim = LensingSimulator(d.preset, hr_size=d.hr_size, scale=d.scale)
        gen = torch.Generator().manual_seed(cfg.train.seed + 987_654_321)
        batch = sim.sample(n, generator=gen)
        dataset: Dataset = torch.utils.data.TensorDataset(batch.lr, batch.hr)
    else:
        from hpc_sr.data.dataset import ShardDataset
        from hpc_sr.data.shards import load_manifest

        if len(load_manifest(d.path).split_indices("val")) == 0:
            return None  # a set packed without a val split: training runs without validation
        dataset = ShardDataset(d.path, split="val", scale=d.scale)
    n = len(dataset)  # type: ignore[arg-type]
    if d.val_images:
        n = min(n, d.val_images)
    if n == 0:
        return None
    mine = list(range(env.rank, n, env.world_size))
    return DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=0)
