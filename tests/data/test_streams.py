"""The training-source registry: names, unknown sources, the stream built from data.source."""

from __future__ import annotations

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
