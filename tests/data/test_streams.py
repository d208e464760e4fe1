"""The training-source registry: names, unknown sources, the stream built from data.source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_sr.config import ConfigError, DataConfig
from hpc_sr.data.streams import make_train_stream, source_names
from hpc_sr.dist.env import DistEnv

CPU = torch.device("cpu")


def test_registry_and_unknown_source() -> None:
    assert {"shards", "simulate"} <= set(source_names())
    with pytest.raises(ConfigError, match="data.source: unknown source 'shard' \\(did you mean 'shards'"):
        make_train_stream(DataConfig(source="shard"), 0, DistEnv(), CPU, 4)


def test_capped_validation_spreads_over_the_split_and_the_ranks(tiny_shards: Path) -> None:
    """data.val_images N takes N images spread evenly over the val split (a mixture packed set by set is
    validated on every set), shared by the ranks without overlap."""
    from hpc_sr.data.streams import make_val_loader

    data = DataConfig(path=str(tiny_shards), val_images=3)  # the val split holds 5 images
    whole = make_val_loader(data, 0, DistEnv(), 8)
    assert whole is not None and whole.dataset.indices == [0, 2, 4]  # type: ignore[attr-defined]
    ranks = [make_val_loader(data, 0, DistEnv(rank=r, world_size=2), 8) for r in (0, 1)]
    assert [r.dataset.indices for r in ranks] == [[0, 4], [2]]  # type: ignore[union-attr]
    uncapped = make_val_loader(DataConfig(path=str(tiny_shards)), 0, DistEnv(), 8)
    assert uncapped is not None and uncapped.dataset.indices == [0, 1, 2, 3, 4]  # type: ignore[attr-defined]
