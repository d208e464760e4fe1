"""Training data sources, registered by name with their own options (``data.source``, ``data.options``), and
the rank-sharded validation loader.

A source is an endless, resumable iterator of this rank's micro-batches ``(lr, hr)`` on the training device:

    stream = make_train_stream(cfg.data, seed, env, device, micro_batch)
    lr, hr = next(stream); state = stream.state_dict(); stream.load_state_dict(state)

- ``shards`` (``source_shards.py``): HDF5 shards read by a DataLoader (``data.options.loader``: item | block)
  or held resident by :class:`~hpc_sr.data.memory_stream.MemoryStream` (memory | device).
- ``simulate`` (``source_simulate.py``): on-the-fly simulation.

Every source has the same position semantics: (epoch, micro-batches consumed this epoch) for the data sets,
the generator state for simulation; a resumed run sees exactly the batches the uninterrupted run would have
seen. A new source is one module of ``hpc_sr.data`` (imported on first use): an options dataclass and
``@register_source("name", Options)`` on a class (or builder) called ``cls(data, opts, seed, env, device,
micro_batch)``, where ``data`` is the shared :class:`~hpc_sr.config.DataConfig` and ``opts`` the validated
``data.options``. It may define ``val_dataset(data, opts, seed)``; validation uses the val split of
``data.path`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hpc_sr.config import DataConfig
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError
from hpc_sr.registry import Entry, NoOptions, Registry

T = TypeVar("T")
SOURCES: Registry[Callable[..., Any]] = Registry("data source", package="hpc_sr.data", noun="source")


def register_source(name: str, options: type = NoOptions) -> Callable[[T], T]:
    """Decorator: register a training data source under ``name`` (``data.source: name``) with its options."""
    return SOURCES.register(name, options)


def source_names() -> list[str]:
    return SOURCES.names()


def _resolve(data: DataConfig) -> tuple[Entry[Callable[..., Any]], Any]:
    opts = SOURCES.options(data.source, data.options, "data.source", "data.options")
    return SOURCES[data.source], opts


def check_source(data: DataConfig) -> Any:
    """The typed ``data.options`` of ``data.source``; a ConfigError naming the key for an unknown source or
    option, or a bad value (also of ``data.folds`` / ``data.fold`` / ``data.train_pairs``)."""
    from hpc_sr.data.folds import check_folds

    opts = _resolve(data)[1]
    check_folds(data)
    return opts


def make_train_stream(
    data: DataConfig, seed: int, env: DistEnv, device: torch.device, micro_batch: int
) -> Any:
    """The training stream of ``data.source``."""
    entry, opts = _resolve(data)
    return entry.cls(data, opts, seed, env, device, micro_batch)


def batch_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, platform independent)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


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


def check_enough(n: int, micro_batch: int, env: DistEnv, where: str) -> None:
    if n < micro_batch * env.world_size:
        raise DataError(
            f"{where}: train split has {n} pairs, fewer than one global micro-batch "
            f"({micro_batch} x {env.world_size} ranks)"
        )


def _packed_val_split(data: DataConfig) -> Dataset | None:
    from hpc_sr.data.dataset import ShardDataset
    from hpc_sr.data.folds import run_indices
    from hpc_sr.data.lr_blur import lr_blur_setting
    from hpc_sr.data.shards import load_manifest

    idx = run_indices(load_manifest(data.path), "val", data)  # the val split, or the held-out fold
    if len(idx) == 0:
        return None  # a set packed without a val split: training runs without validation
    blur = lr_blur_setting(data.lr_blur)
    return ShardDataset(data.path, split="val", scale=data.scale, indices=idx, lr_blur=blur)


def make_val_loader(data: DataConfig, seed: int, env: DistEnv, batch_size: int) -> DataLoader | None:
    """This rank's share (every world-th image from its rank on) of the val set, whole images, no
    augmentation: the source's own (``val_dataset``) or the val split of ``data.path``. ``data.val_images``
    N caps it at N images spread evenly over the split: a packed mixture is stored set by set, so its first
    N would be one set's."""
    entry, opts = _resolve(data)
    own = getattr(entry.cls, "val_dataset", None)
    dataset = own(data, opts, seed) if own is not None else _packed_val_split(data)
    if dataset is None:
        return None
    total = n = len(dataset)  # type: ignore[arg-type]
    if data.val_images:
        n = min(n, data.val_images)
    if n == 0:
        return None
    chosen = np.linspace(0, total - 1, n).round().astype(np.int64).tolist() if n < total else list(range(n))
    mine = chosen[env.rank :: env.world_size]
    return DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=0)
