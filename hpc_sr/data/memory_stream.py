"""The resident batched stream of source ``shards`` (``data.options.loader: memory | device``).

The train split is held once per process (in RAM, or on the training device itself); crops and the 8
flips/rotations are done for a chunk of micro-batches in one gather (through two small pinned buffers to a
GPU).
"""

from __future__ import annotations

from typing import Any

import torch

from hpc_sr.config import DataConfig
from hpc_sr.data.augment import Draws, Plan, ResidentPairs, check_patch, draw
from hpc_sr.data.streams import EpochPosition, batch_seed, check_enough
from hpc_sr.dist.env import DistEnv

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
    """The train split resident once per process (in RAM, or on the training device with ``on_device``).

    Epoch e shuffles the split with a permutation seeded by (seed, e), the same on every rank; rank r takes
    every world-th index from r (``N // world`` per rank, drop-last as DistributedSampler). The crop corners
    and transforms of the whole epoch are drawn at its start from a generator seeded by (seed, e, rank), on
    the device that holds the split (``on_device``: the training device; a CUDA generator gives other
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
        on_device: bool = False,
        staging: bool | None = None,
        huge_pages: bool = True,
    ) -> None:
        from hpc_sr.data.dataset import InMemoryShardDataset, noise_free_split
        from hpc_sr.data.folds import run_indices
        from hpc_sr.data.lr_blur import lr_blur_setting
        from hpc_sr.data.shards import load_manifest

        idx = run_indices(load_manifest(data.path), "train", data)  # a fold / the first N pairs, sorted
        blur = lr_blur_setting(data.lr_blur)  # each pair's LR blur as one more LR channel
        ds = InMemoryShardDataset(data.path, split="train", scale=data.scale, indices=idx, lr_blur=blur)
        lr_np, hr_np = ds.arrays()
        if data.target == "clean":  # the noise-free HR as the target (simulated sets only)
            hr_np = noise_free_split(data.path, "train", indices=idx)
        check_patch(data.patch_size, tuple(lr_np.shape[-2:]), data.scale, data.path)
        check_enough(len(lr_np), micro_batch, env, data.path)
        home = device if on_device else torch.device("cpu")
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
