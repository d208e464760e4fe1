"""Training source ``shards``: the train split of the packed data set at ``data.path`` (HDF5 shards), or the
run's selection of its pairs (``data.folds``/``data.fold``, ``data.train_pairs``: :mod:`hpc_sr.data.folds`).

``data.options`` (:class:`ShardsOptions`): ``loader: item | block`` reads through a DataLoader (per-item reads
with a DistributedSampler that can start mid-epoch, or contiguous block reads), crops/flips per item;
``loader: memory | device`` holds the split resident (:class:`~hpc_sr.data.memory_stream.MemoryStream`: in
RAM, or on the training device) and crops/flips a chunk of micro-batches in one gather.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hpc_sr.config import ConfigError, DataConfig
from hpc_sr.data.memory_stream import CHUNK_SAMPLES, MemoryStream
from hpc_sr.data.streams import EpochPosition, check_enough, register_source
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError


@dataclass
class ShardsOptions:
    """``data.options`` of source ``shards``."""

    loader: Literal["item", "block", "memory", "device"] = "item"  # device: the split on the training device
    block_size: int = 64  # items per contiguous read for loader=block
    memory_copies: int = 0  # loader=memory: 4 = the split in 4 orientations (fast, 4x RAM), 1, 0 = auto
    chunk_samples: int = CHUNK_SAMPLES  # loader=memory|device: samples cropped and augmented per gather
    num_workers: int = 2  # DataLoader workers for loader=item|block


@register_source("shards", ShardsOptions)
def shard_source(
    data: DataConfig, opts: ShardsOptions, seed: int, env: DistEnv, device: torch.device, micro_batch: int
) -> Any:
    """HDF5 shards: DataLoader streams for ``loader: item | block``, the batched resident stream otherwise."""
    if opts.loader in ("memory", "device"):
        if opts.memory_copies not in (0, 1, 4):
            raise DataError(f"data.options.memory_copies={opts.memory_copies!r}: valid: 0 (auto), 1, 4")
        if opts.chunk_samples < 1:
            raise DataError(f"data.options.chunk_samples={opts.chunk_samples!r} must be >= 1")
        copies = {0: None, 1: False, 4: True}[opts.memory_copies]
        return MemoryStream(
            data,
            seed,
            env,
            device,
            micro_batch,
            copies=copies,
            chunk_samples=opts.chunk_samples,
            on_device=opts.loader == "device",
        )
    if data.target != "hr":
        raise ConfigError(
            f"data.target={data.target!r} needs data.options.loader=memory or device (got {opts.loader!r}) "
            "or data.source=simulate"
        )
    return ShardStream(data, opts, seed, env, device, micro_batch)


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


class ShardStream(EpochPosition):
    """Per-rank micro-batches from a DataLoader over the train split (loader item | block)."""

    def __init__(
        self,
        data: DataConfig,
        opts: ShardsOptions,
        seed: int,
        env: DistEnv,
        device: torch.device,
        micro_batch: int,
    ) -> None:
        from hpc_sr.data.dataset import BlockShardDataset, build_dataset, seed_worker
        from hpc_sr.data.folds import run_indices
        from hpc_sr.data.lr_blur import lr_blur_setting
        from hpc_sr.data.shards import load_manifest

        self.dataset = build_dataset(
            data.path,
            split="train",
            indices=run_indices(load_manifest(data.path), "train", data),  # a fold / the first N pairs
            loader=opts.loader,
            patch_size=data.patch_size,
            augment=data.augment,
            seed=seed,
            block_size=opts.block_size,
            scale=data.scale,
            lr_blur=lr_blur_setting(data.lr_blur),
        )
        check_enough(len(self.dataset.indices), micro_batch, env, data.path)
        # block reads: contiguous chunks, shuffled blocks + buffer, split over ranks by the dataset itself
        self.sampler = (
            None if isinstance(self.dataset, BlockShardDataset) else ResumableSampler(self.dataset, env, seed)
        )
        self.micro_batch = micro_batch
        self.device = device
        self._loader_kwargs: dict[str, Any] = dict(
            batch_size=micro_batch,
            sampler=self.sampler,
            num_workers=opts.num_workers,
            drop_last=True,
            worker_init_fn=seed_worker,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if opts.num_workers > 0 else None,
        )
        self.epoch, self.position = 0, 0
        self._it: Iterator[Any] | None = None

    def restart(self) -> None:
        self._it = None  # a finished epoch is detected by __next__ (empty iterator -> next epoch)

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
