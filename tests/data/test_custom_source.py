"""A new data source with settings is one file (tests/data/constant_source.py): its options are validated
like the built-in sources' and it streams through make_train_stream."""

from __future__ import annotations

import pytest
import torch

from hpc_sr.config import ConfigError, load_config
from hpc_sr.data.streams import check_source, make_train_stream, source_names
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.components import check_config
from tests.data.constant_source import ConstantOptions, ConstantStream

CPU = torch.device("cpu")


def test_a_source_in_one_file_streams_through_make_train_stream() -> None:
    cfg = load_config(None, ["data.source=constant", "data.options.value=0.25", "data.options.side=3"])
    check_config(cfg)
    assert "constant" in source_names()
    assert check_source(cfg.data) == ConstantOptions(value=0.25, side=3)
    stream = make_train_stream(cfg.data, 0, DistEnv(), CPU, 2)
    assert isinstance(stream, ConstantStream)
    lr, hr = next(stream)
    assert lr.shape == (2, 1, 3, 3) and hr.shape == (2, 1, 6, 6) and float(lr[0, 0, 0, 0]) == 1.25
    state = stream.state_dict()
    after = next(stream)
    again = make_train_stream(cfg.data, 0, DistEnv(), CPU, 2)
    again.load_state_dict(state)
    assert torch.equal(next(again)[1], after[1])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.options.vaule=1",
            r"unknown option data\.options\.vaule; did you mean 'value'\? \(valid: side, value\)",
        ),
        ("data.options.side=0", r"data\.options: side=0 must be >= 1"),
        ("data.options.side=wide", r"data\.options\.side: expected an integer, got 'wide'"),
        ("data.options.loader=memory", r"unknown option data\.options\.loader"),  # shards' option, not its
    ],
)
def test_its_options_are_checked_with_the_config(override: str, message: str) -> None:
    cfg = load_config(None, ["data.source=constant", override])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
