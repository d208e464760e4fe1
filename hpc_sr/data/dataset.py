"""Torch datasets over HDF5 shards: per item, in blocks, or the whole split in memory.

All shard datasets return ``(lr, hr)`` float32 tensors (1, h, w) / (1, H, W) (LR with one more channel, the
pair's LR blur, when ``lr_blur`` is given: :mod:`hpc_sr.data.lr_blur`) and share these rules:

- h5py files are opened lazily in the process that reads (each DataLoader worker opens its own on its first
  read) and the dataset handles are kept; handles are never pickled nor reused across a fork.
- The constructor checks, once, in the calling process, that every shard the split uses exists and has the
  size the manifest records, and with ``verify=True`` (default) its sha256 (about 0.2 s per 100 MB).
  A read error later raises DataError naming the shard.
- Random crops (``patch_size`` p: LR p x p, HR scale*p x scale*p at the aligned place) and flips/rot90
  (``augment``, the same transform on LR and HR; :mod:`hpc_sr.data.augment`) draw from
  ``numpy.random.default_rng((seed, epoch, index))``
  with the pair's global index: the result does not depend on the number of workers or ranks, and a resumed
  run that calls ``set_epoch(epoch)`` sees exactly the same pairs.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from hpc_sr.data.augment import check_patch, crop_and_augment, draw_numpy
from hpc_sr.data.lr_blur import attach_lr_blur, pair_lr_blur
from hpc_sr.data.shards import Manifest, check_shard_file, load_manifest
from hpc_sr.dist.env import rank_world
from hpc_sr.errors import DataError

Pair = tuple[torch.Tensor, torch.Tensor]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


# ----------------------------------------------------------------------------------------------- shards
class _ShardBase:
    """What every shard dataset shares: manifest, split positions, lazy handles, crop/augment."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        patch_size: int = 0,
        scale: int | None = None,
        augment: bool = False,
        verify: bool = True,
        seed: int = 0,
        indices: np.ndarray | None = None,
        lr_blur: str | float | None = None,
    ) -> None:
        self.manifest: Manifest = load_manifest(root)
        m = self.manifest
        if scale is not None and scale != m.scale:
            raise DataError(f"{m.root}: shards have scale {m.scale}, the dataset was asked for scale {scale}")
        self.split = split
        # the split's own indices, or a run's selection of them (hpc_sr.data.folds: a fold, a few pairs)
        self.indices = m.split_indices(split) if indices is None else np.sort(np.asarray(indices, np.int64))
        if len(self.indices) == 0:
            raise DataError(f"{m.root}: split {split!r} is empty")
        check_patch(patch_size, tuple(m.lr_shape[1:]), m.scale, str(m.root))
        self.patch_size, self.augment, self.seed, self.epoch = patch_size, augment, seed, 0
        self._shard, self._local = m.locate(self.indices)
        # each position's LR blur, attached to its LR as one more channel (data.lr_blur), or None
        self._blur = None if lr_blur is None else pair_lr_blur(root, self.indices, lr_blur)
        for i in np.unique(self._shard):
            check_shard_file(m, int(i), hash_it=verify)
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self._load()

    def _load(self) -> None:
        """End of the constructor, for subclasses that read at once (InMemoryShardDataset); none here."""

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops/augmentations (and block order) are drawn."""
        self.epoch = int(epoch)

    # -- lazy h5py handles --------------------------------------------------------------------------------
    def _datasets(self, shard: int) -> tuple[Any, Any]:
        if self._pid != os.getpid():  # forked: never use the parent's handles
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(shard)
        if h is None:
            import h5py

            path = self.manifest.shard_path(shard)
            try:
                f = h5py.File(path, "r", locking=False)
                h = (f, f["hr"], f["lr"])
            except (OSError, KeyError) as exc:
                raise DataError(f"shard {path} cannot be opened: {exc}") from exc
            m = self.manifest
            for key, dset, want in (("hr", h[1], m.hr_shape), ("lr", h[2], m.lr_shape)):
                if tuple(dset.shape[1:]) != tuple(want):
                    f.close()
                    raise DataError(
                        f"shard {path}: dataset {key!r} holds images of shape {tuple(dset.shape[1:])}, "
                        f"the manifest says {tuple(want)}"
                    )
            self._handles[shard] = h
        return h[1], h[2]

    def close(self) -> None:
        for f, *_ in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    # -- reading and transforms -------------------------------------------------------------------------
    def _rng(self, gidx: int) -> np.random.Generator | None:
        if not (self.patch_size or self.augment):
            return None
        return np.random.default_rng([self.seed, self.epoch, gidx])

    def _with_blur(self, lr: np.ndarray, pos: int) -> np.ndarray:
        """LR (C, h, w) with its LR-blur channel when the dataset carries one."""
        return lr if self._blur is None else attach_lr_blur(lr, self._blur[pos])

    def _transform(self, lr: np.ndarray, hr: np.ndarray, gidx: int) -> Pair:
        """Crop + flip/rot90 of one pair (hpc_sr.data.augment), drawn from (seed, epoch, index)."""
        lr_t = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))
        hr_t = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32))
        rng = self._rng(gidx)
        if rng is None:
            return lr_t, hr_t
        d = draw_numpy(rng, tuple(self.manifest.lr_shape[1:]), self.patch_size, self.augment)
        lr_c, hr_c = crop_and_augment(lr_t[None], hr_t[None], d, self.patch_size, self.manifest.scale)
        return lr_c[0], hr_c[0]

    def _read_item(self, pos: int) -> Pair:
        gidx, shard, local = int(self.indices[pos]), int(self._shard[pos]), int(self._local[pos])
        hr_ds, lr_ds = self._datasets(shard)
        try:
            lr, hr = lr_ds[local], hr_ds[local]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(
                f"shard {self.manifest.shard_path(shard)}: reading item {local} failed: {exc}"
            ) from exc
        return self._transform(self._with_blur(lr, pos), hr, gidx)

    def item_name(self, pos: int) -> str | None:
        """The source name recorded for split position ``pos`` (packed sets), else None."""
        shard, local = int(self._shard[pos]), int(self._local[pos])
        self._datasets(shard)
        f = self._handles[shard][0]
        if "names" not in f:
            return None
        v = f["names"][local]
        return v.decode() if isinstance(v, bytes) else str(v)


class ShardDataset(_ShardBase, Dataset):
    """Map-style dataset over one split, one HDF5 read per item (works with any sampler and workers)."""

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> Pair:
        return self._read_item(int(pos))


class InMemoryShardDataset(_ShardBase, Dataset):
    """Map-style dataset that loads the whole split into RAM in the constructor (contiguous reads)."""

    stage_rows = 256

    def _load(self) -> None:
        """Read the whole split into RAM, ``stage_rows`` rows per read, then close the files."""
        m = self.manifest
        self._hr = np.empty((len(self.indices), *m.hr_shape), np.float32)
        self._lr = np.empty((len(self.indices), *m.lr_shape), np.float32)
        stage = self.stage_rows  # rows per read, into reused buffers (no second copy of the split)
        bufs = {k: np.empty((stage, *shp), np.float32) for k, shp in (("hr", m.hr_shape), ("lr", m.lr_shape))}
        for shard in np.unique(self._shard):
            sel = np.flatnonzero(self._shard == shard)
            hr_ds, lr_ds = self._datasets(int(shard))
            lo_all, hi_all = int(self._local[sel[0]]), int(self._local[sel[-1]]) + 1
            try:
                for lo in range(lo_all, hi_all, stage):
                    hi = min(lo + stage, hi_all)
                    rows = sel[(self._local[sel] >= lo) & (self._local[sel] < hi)]
                    if len(rows) == 0:
                        continue
                    for ds, buf, dest in ((hr_ds, bufs["hr"], self._hr), (lr_ds, bufs["lr"], self._lr)):
                        ds.read_direct(buf, np.s_[lo:hi], np.s_[0 : hi - lo])
                        dest[rows] = buf[self._local[rows] - lo]
            except (OSError, ValueError) as exc:
                raise DataError(f"shard {m.shard_path(int(shard))}: read failed: {exc}") from exc
        self.close()
        if self._blur is not None:
            self._lr = attach_lr_blur(self._lr, self._blur)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The resident split as (lr (N,1[+1],h,w), hr (N,1,H,W)) float32 arrays, in split order (no copy)."""
        return self._lr, self._hr

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> Pair:
        pos = int(pos)
        return self._transform(self._lr[pos], self._hr[pos], int(self.indices[pos]))


class BlockShardDataset(_ShardBase, IterableDataset):
    """Iterable dataset reading contiguous blocks of ``block_size`` split members per HDF5 read.

    Each epoch (``set_epoch``) the blocks are shuffled with ``(seed, epoch)`` and laid end to end; rank r
    takes the r-th run of ``ceil(N / world)`` items (every item exactly once when world divides N, else the
    last rank wraps around, as DistributedSampler pads); its blocks are dealt round-robin to its DataLoader
    workers, and each worker mixes its items through a shuffle buffer of ``shuffle_buffer`` items.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        patch_size: int = 0,
        scale: int | None = None,
        augment: bool = False,
        verify: bool = True,
        seed: int = 0,
        block_size: int = 64,
        shuffle: bool = True,
        shuffle_buffer: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        indices: np.ndarray | None = None,
        lr_blur: str | float | None = None,
    ) -> None:
        super().__init__(root, split, patch_size, scale, augment, verify, seed, indices, lr_blur)
        if block_size < 1:
            raise DataError(f"block_size must be >= 1, got {block_size}")
        self.block_size, self.shuffle = block_size, shuffle
        self.shuffle_buffer = 4 * block_size if shuffle_buffer is None else shuffle_buffer
        self.rank, self.world_size = rank, world_size
        # blocks: [a, b) ranges of split positions inside one shard
        bounds = np.flatnonzero(np.diff(self._shard)) + 1
        self.blocks: list[tuple[int, int]] = []
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(self.indices)]):
            self.blocks += [(int(s), int(min(s + block_size, b))) for s in range(int(a), int(b), block_size)]

    def _rank_world(self) -> tuple[int, int]:
        r, w = rank_world()
        return (r if self.rank is None else self.rank), (w if self.world_size is None else self.world_size)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self._rank_world()[1])

    def segments(self, rank: int, world: int) -> list[tuple[int, int]]:
        """This epoch's [a, b) ranges of split positions for ``rank`` (before the split across workers).

        The shuffled blocks are laid end to end and cut into ``world`` runs of ``ceil(N / world)`` items;
        the last run wraps around to the start (padding, as DistributedSampler does).
        """
        n = len(self.blocks)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        blocks = [self.blocks[i] for i in order]
        total, quota = len(self.indices), math.ceil(len(self.indices) / world)
        start, stop, segs = rank * quota, (rank + 1) * quota, []
        while start < stop:
            s = start % total
            end = min(s + stop - start, total)
            off = 0
            for a, b in blocks:
                lo, hi = max(s, off), min(end, off + b - a)
                if lo < hi:
                    segs.append((a + lo - off, a + hi - off))
                off += b - a
            start += end - s
        return segs

    def __iter__(self) -> Iterator[Pair]:
        rank, world = self._rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        segs = self.segments(rank, world)[wid::nw]
        rng = np.random.default_rng([self.seed, self.epoch, rank, wid, 1])
        buf: list[Pair] = []
        for a, b in segs:
            for item in self._read_block(a, b):
                if not self.shuffle or self.shuffle_buffer <= 1:
                    yield item
                    continue
                buf.append(item)
                if len(buf) >= self.shuffle_buffer:
                    j = int(rng.integers(len(buf)))
                    buf[j], buf[-1] = buf[-1], buf[j]
                    yield buf.pop()
        for j in rng.permutation(len(buf)) if buf else []:
            yield buf[j]

    def _read_block(self, a: int, b: int) -> Iterator[Pair]:
        shard = int(self._shard[a])
        local = self._local[a:b]
        lo, hi = int(local[0]), int(local[-1]) + 1
        hr_ds, lr_ds = self._datasets(shard)
        try:
            hr, lr = hr_ds[lo:hi], lr_ds[lo:hi]
        except (OSError, ValueError) as exc:
            path = self.manifest.shard_path(shard)
            raise DataError(f"shard {path}: reading items {lo}:{hi} failed: {exc}") from exc
        # copy each pair out so the block's buffer is freed at once (items kept in the shuffle buffer would
        # otherwise pin whole blocks: measured 2x slower)
        items = [
            self._transform(self._with_blur(lr[loc].copy(), pos), hr[loc].copy(), int(self.indices[pos]))
            for pos, loc in zip(range(a, b), local - lo)
        ]
        del hr, lr
        yield from items


def build_dataset(
    root: str | Path,
    split: str = "train",
    loader: str = "item",
    patch_size: int = 0,
    augment: bool = False,
    seed: int = 0,
    verify: bool = True,
    block_size: int = 64,
    scale: int | None = None,
    indices: np.ndarray | None = None,
    lr_blur: str | float | None = None,
) -> ShardDataset | InMemoryShardDataset | BlockShardDataset:
    """The shard dataset for ``loader`` = item | block | memory (``data.options.loader`` of source shards);
    ``indices``: these global indices instead of the whole split (a fold, a few pairs); ``lr_blur``: attach
    each pair's LR blur (a ``data.lr_blur`` setting, :mod:`hpc_sr.data.lr_blur`)."""
    kw: dict[str, Any] = dict(
        patch_size=patch_size, scale=scale, augment=augment, verify=verify, seed=seed, indices=indices,
        lr_blur=lr_blur,
    )
    if loader == "item":
        return ShardDataset(root, split, **kw)
    if loader == "memory":
        return InMemoryShardDataset(root, split, **kw)
    if loader == "block":
        return BlockShardDataset(root, split, block_size=block_size, **kw)
    raise DataError(f"unknown loader {loader!r}; choose item, block or memory")


def noise_free_split(
    root: str | Path, split: str = "train", batch: int = 64, indices: np.ndarray | None = None
) -> np.ndarray:
    """The noise-free HR of a simulated split (n,1,H,W) float32 in split order, re-rendered from the
    parameters its shards record with the preset its manifest names (``data.target: clean``); ``indices``
    (sorted global indices, e.g. a fold's): those pairs instead of the split.

    Raises DataError naming the directory if the set records no simulator parameters (packed from files)
    or was made by another simulator version.
    """
    from hpc_sr.data.lensing import PARAM_NAMES, is_simulator_layout, noise_free_hr
    from hpc_sr.data.presets import PRESETS
    from hpc_sr.data.shards import read_params

    m = load_manifest(root)
    params = read_params(m, m.split_indices(split) if indices is None else indices)
    preset = m.provenance.get("preset")
    if params is None or m.provenance.get("command") != "simulate" or preset not in PRESETS:
        raise DataError(
            f"{root}: data.target=clean needs a simulated set (hpc-sr simulate) with recorded parameters; "
            f"this one was made by {m.provenance.get('command')!r} (preset {preset!r})"
        )
    if not is_simulator_layout(m.param_names):
        raise DataError(
            f"{root}: param_names {list(m.param_names)} are not this simulator's {list(PARAM_NAMES)}"
        )
    out = np.empty((len(params), *m.hr_shape), np.float32)
    for s in range(0, len(params), batch):
        p = torch.from_numpy(params[s : s + batch])
        out[s : s + batch] = noise_free_hr(p, preset, m.hr_shape[-1]).numpy()
    return out

