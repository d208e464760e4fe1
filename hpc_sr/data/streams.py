"""Training data sources, registered by name (``data.source``), and the rank-sharded validation loader.

A source is an endless, resumable iterator of this rank's micro-batches ``(lr, hr)`` on the training device:

    stream = make_train_stream(cfg.data, seed, env, device, micro_batch)
    lr, hr = next(stream); state = stream.state_dict(); stream.load_state_dict(state)

- ``shards`` with ``data.loader: item | block``: a DataLoader over HDF5 shards (per-item reads with a
  DistributedSampler that can start mid-epoch, or contiguous block reads); crops/flips per item.
- ``shards`` with ``data.loader: memory | device``: :class:`MemoryStream`, the split held once per process (in
  RAM, or on the training device itself) with crops and the 8 flips/rotations done for a chunk of
  micro-batches in one gather (through two small pinned buffers to a GPU).
- ``simulate``: on-the-fly simulation (hpc_sr.data.sim_stream).

Every source has the same position semantics: (epoch, micro-batches consumed this epoch) for the data sets,
the generator state for simulation; a resumed run sees exactly the batches the uninterrupted run would have
seen. Register a new one with ``@register_source("name")`` on a class taking ``(data, seed, env, device,
micro)`` in any module of ``hpc_sr.data``.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from hpc_sr.config import ConfigError, DataConfig
from hpc_sr.data.augment import Draws, Plan, ResidentPairs, check_patch, draw
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError

T = TypeVar("T", bound=type)
SOURCES: dict[str, type] = {}
_loaded = False


def register_source(name: str) -> Callable[[T], T]:
    """Class decorator: register a training data source under ``name`` (``data.source: name``)."""

    def wrap(cls: T) -> T:
        SOURCES[name] = cls
        return cls

    return wrap


def source_names() -> list[str]:
    _load_all()
    return sorted(SOURCES)


def _load_all() -> None:
    global _loaded
    if not _loaded:
        import hpc_sr.data as pkg

        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
        _loaded = True


def check_source(data: DataConfig) -> None:
    """``data.source`` must name a registered source."""
    _load_all()
    if data.source not in SOURCES:
        hint = difflib.get_close_matches(data.source, list(SOURCES), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(
            f"data.source: unknown source {data.source!r}{extra}; valid: {', '.join(sorted(SOURCES))}"
        )


def make_train_stream(
    data: DataConfig, seed: int, env: DistEnv, device: torch.device, micro_batch: int
) -> Any:
    """The training stream of ``data.source``."""
    check_source(data)
    return SOURCES[data.source](data, seed, env, device, micro_batch)


def batch_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, platform independent)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


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


class EpochPosition:
    """(epoch, micro-batches consumed this epoch) bookkeeping shared by the data-set streams."""

    epoch: int = 0
    position: int = 0
    micro_batch: int = 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.restart()

    def load_global_offset(self, saved: dict[str, Any], world_size: int) -> None:
        """Resume a run saved on another world size at the same global sample offset of its epoch."""
        consumed = int(saved["position"]) * int(saved["micro_batch"]) * int(saved["world_size"])
        self.load_state_dict(
            {"epoch": saved["epoch"], "position": consumed // (self.micro_batch * world_size)}
        )

    def restart(self) -> None:  # pragma: no cover - overridden
        pass


class ShardStream(EpochPosition):
    """Per-rank micro-batches from a DataLoader over the train split (``data.loader: item | block``)."""

    def __init__(
        self, data: DataConfig, seed: int, env: DistEnv, device: torch.device, micro_batch: int
    ) -> None:
        from hpc_sr.data.dataset import BlockShardDataset, build_dataset, seed_worker

        self.dataset = build_dataset(
            data.path,
            split="train",
            loader=data.loader,
            patch_size=data.patch_size,
            augment=data.augment,
            seed=seed,
            block_size=data.block_size,
            scale=data.scale,
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
            num_workers=data.num_workers,
            drop_last=True,
            worker_init_fn=seed_worker,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if data.num_workers > 0 else None,
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


def check_enough(n: int, micro_batch: int, env: DistEnv, where: str) -> None:
    if n < micro_batch * env.world_size:
        raise DataError(
            f"{where}: train split has {n} pairs, fewer than one global micro-batch "
            f"({micro_batch} x {env.world_size} ranks)"
        )


CHUNK_SAMPLES = 512  # samples MemoryStream gathers at once (128 -> 512: +10-20% pairs/s on CPU)
FOUR_COPIES_MAX_BYTES = 4 << 30  # MemoryStream keeps the 4-orientation layout up to this size (all copies)


class Staging:
    """Two alternating host buffers for chunks bound for another device (pinned when that is a GPU).

    ``buffers(n)`` hands out the next buffer pair, first waiting for the copy that last read it (a CUDA
    event recorded after that copy); ``upload`` copies a filled pair into fresh device tensors
    (``non_blocking`` when pinned) and records the event. So at most two chunks are ever pinned and a fill
    never races a copy.
    """

    def __init__(
        self,
        capacity: int,
        lr_item: tuple[int, ...],
        hr_item: tuple[int, ...],
        pin: bool,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.pin = pin
        self.bufs = [
            tuple(torch.empty((capacity, *item), dtype=dtype, pin_memory=pin) for item in (lr_item, hr_item))
            for _ in range(2)
        ]
        self.events: list[Any] = [None, None]
        self.turn = 0
        self.waits = 0  # waits on a previous copy (for tests and curiosity)

    def buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        event = self.events[self.turn]
        if event is not None:
            event.synchronize()
            self.waits += 1
        lr, hr = self.bufs[self.turn]
        return lr[:n], hr[:n]

    def upload(
        self, lr: torch.Tensor, hr: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = tuple(torch.empty(t.shape, dtype=t.dtype, device=device) for t in (lr, hr))
        for dst, src in zip(out, (lr, hr)):
            dst.copy_(src, non_blocking=self.pin)
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self.events[self.turn] = event
        self.turn = 1 - self.turn
        return out[0], out[1]


class MemoryStream(EpochPosition):
    """The train split resident once per process (in RAM, or on the training device for ``loader: device``).

    Epoch e shuffles the split with a permutation seeded by (seed, e), the same on every rank; rank r takes
    every world-th index from r (``N // world`` per rank, drop-last as DistributedSampler). The crop corners
    and transforms of the whole epoch are drawn at its start from a generator seeded by (seed, e, rank), on
    the device that holds the split (``loader: device``: the training device; a CUDA generator gives other
    values than a CPU one, with the same distribution). So sample i of the epoch is fixed by (seed, e, rank,
    i): a resume is exact without generator state, however the batches are chunked.

    Micro-batches are gathered ``chunk`` at a time (``chunk_samples // micro_batch``, at least 1) and handed
    out one by one as views of the chunk (a fresh tensor per chunk: batches kept by the caller stay valid).
    Square images in host memory are kept in 4 orientations (``copies=True``; default up to
    ``FOUR_COPIES_MAX_BYTES``) so that each chunk is one row gather (:class:`~hpc_sr.data.augment
    .ResidentPairs`; same pixels either way; on transparent huge pages unless ``huge_pages=False``). A split
    in host memory bound for a GPU goes through two pinned
    chunk buffers (:class:`Staging`), never the whole split pinned.
    """

    def __init__(
        self,
        data: DataConfig,
        seed: int,
        env: DistEnv,
        device: torch.device,
        micro_batch: int,
        *,
        copies: bool | None = None,
        chunk_samples: int = CHUNK_SAMPLES,
        staging: bool | None = None,
        huge_pages: bool = True,
    ) -> None:
        from hpc_sr.data.dataset import InMemoryShardDataset, noise_free_split

        ds = InMemoryShardDataset(data.path, split="train", scale=data.scale)
        lr_np, hr_np = ds.arrays()
        if data.target == "clean":  # the noise-free HR as the target (simulated sets only)
            hr_np = noise_free_split(data.path, "train")
        check_patch(data.patch_size, tuple(lr_np.shape[-2:]), data.scale, data.path)
        check_enough(len(lr_np), micro_batch, env, data.path)
        home = device if data.loader == "device" else torch.device("cpu")
        lr, hr = torch.from_numpy(lr_np).to(home), torch.from_numpy(hr_np).to(home)
        if copies is None:
            size = lr.numel() * lr.element_size() + hr.numel() * hr.element_size()
            copies = home.type == "cpu" and 4 * size <= FOUR_COPIES_MAX_BYTES
        self.pairs = ResidentPairs(lr, hr, data.scale, copies=copies, huge_pages=huge_pages)
        del lr, hr
        self.lr, self.hr = self.pairs.lr, self.pairs.hr
        self.n, self.rank, self.world = len(lr_np), env.rank, env.world_size
        self.per_rank = self.n // self.world
        self.batches_per_epoch = self.per_rank // micro_batch
        self.seed, self.patch, self.scale, self.augment = seed, data.patch_size, data.scale, data.augment
        self.micro_batch, self.device, self.home = micro_batch, device, home
        self.chunk = max(1, chunk_samples // micro_batch)
        if staging is None:
            staging = home != device
        lr_item, hr_item = self._item_shapes()
        self.staging = (
            Staging(self.chunk * micro_batch, lr_item, hr_item, device.type == "cuda", self.lr.dtype)
            if staging
            else None
        )
        self.epoch, self.position = 0, 0
        self._plan: Plan | None = None
        # (first position, its micro-batches as (lr, hr) views): __next__ is a list lookup
        self._chunk: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def _item_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        c, h, w = self.lr.shape[1:]
        p = self.patch
        lr_hw = (p, p) if p else (h, w)
        return (c, *lr_hw), (c, lr_hw[0] * self.scale, lr_hw[1] * self.scale)

    def restart(self) -> None:
        self._plan, self._chunk = None, None

    def _epoch_plan(self) -> Plan:
        if self._plan is None:
            g = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch))
            perm = torch.randperm(self.n, generator=g)
            used = self.batches_per_epoch * self.micro_batch
            order = perm[self.rank :: self.world][:used].to(self.home)
            self._plan = self.pairs.plan(order, self._epoch_draws(used), self.patch)
        return self._plan

    def _epoch_draws(self, used: int) -> Draws:
        hw = tuple(self.lr.shape[-2:])
        g = torch.Generator(device=self.home).manual_seed(batch_seed(self.seed, self.epoch, self.rank))
        return draw(used, hw, self.patch, self.augment, g)

    def _fill(self, first: int) -> None:
        """Gather micro-batches ``first`` .. ``first + chunk - 1`` (within the epoch) at once."""
        plan, m = self._epoch_plan(), self.micro_batch
        count = min(self.chunk, self.batches_per_epoch - first)
        lo, hi = first * m, (first + count) * m
        if self.staging is None:
            lr, hr = self.pairs.gather(plan, lo, hi)
        else:
            lr, hr = self.staging.upload(
                *self.pairs.gather(plan, lo, hi, self.staging.buffers(hi - lo)), self.device
            )
        self._chunk = (first, list(zip(lr.split(m), hr.split(m))))

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self.restart()
        p, chunk = self.position, self._chunk
        if chunk is None or not 0 <= p - chunk[0] < len(chunk[1]):
            self._fill(p)
            chunk = self._chunk
        assert chunk is not None
        self.position += 1
        return chunk[1][p - chunk[0]]


@register_source("shards")
def shard_source(data: DataConfig, seed: int, env: DistEnv, device: torch.device, micro_batch: int) -> Any:
    """HDF5 shards: DataLoader streams for ``loader: item | block``, the batched resident stream otherwise."""
    if data.loader in ("memory", "device"):
        if data.memory_copies not in (0, 1, 4):
            raise DataError(f"data.memory_copies={data.memory_copies!r}: valid: 0 (auto), 1, 4")
        if data.chunk_samples < 1:
            raise DataError(f"data.chunk_samples={data.chunk_samples!r} must be >= 1")
        copies = {0: None, 1: False, 4: True}[data.memory_copies]
        chunk = data.chunk_samples
        return MemoryStream(data, seed, env, device, micro_batch, copies=copies, chunk_samples=chunk)
    if data.target != "hr":
        raise ConfigError(
            f"data.target={data.target!r} needs data.loader=memory or device (got {data.loader!r}) or "
            "data.source=simulate"
        )
    return ShardStream(data, seed, env, device, micro_batch)


def make_val_loader(data: DataConfig, seed: int, env: DistEnv, batch_size: int) -> DataLoader | None:
    """This rank's share (indices rank::world) of the val split, whole images, no augmentation."""
    if data.source == "simulate":
        from hpc_sr.data.lensing import LensingSimulator

        n = data.val_images or 64
        sim = LensingSimulator(data.preset, hr_size=data.hr_size, scale=data.scale)
        gen = torch.Generator().manual_seed(seed + 987_654_321)
        batch = sim.sample(n, generator=gen)
        dataset: Dataset = torch.utils.data.TensorDataset(batch.lr, batch.hr)
    else:
        from hpc_sr.data.dataset import ShardDataset
        from hpc_sr.data.shards import load_manifest

        if len(load_manifest(data.path).split_indices("val")) == 0:
            return None  # a set packed without a val split: training runs without validation
        dataset = ShardDataset(data.path, split="val", scale=data.scale)
    n = len(dataset)  # type: ignore[arg-type]
    if data.val_images:
        n = min(n, data.val_images)
    if n == 0:
        return None
    mine = list(range(env.rank, n, env.world_size))
    return DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=0)
