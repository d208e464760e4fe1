"""Generator artifacts: every way of naming a trained generator gives the same generator and metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_sr.errors import CheckpointError
from hpc_sr.models.artifacts import (
    GENERATOR_VERSION,
    export_generator,
    generator_payload,
    load_generator,
    load_generator_payload,
    pretrained_names,
    resolve_generator_source,
)
from hpc_sr.models.checkpoint_layout import atomic_torch_save
from hpc_sr.models.registry import generator_from_spec, generator_spec

TINY = {"g": {"arch": "edsr", "options": {"channels": 4, "blocks": 1}}}


def tiny_file(path: Path, **extra: object) -> Path:
    g = generator_from_spec(generator_spec(TINY["g"]), 2)
    with torch.no_grad():
        for p in g.parameters():
            p.normal_()
    atomic_torch_save({**generator_payload(TINY, 2, g.state_dict(), "test", 7), **extra}, path)
    return path


def test_shipped_name_resolves_and_loads_in_eval_mode() -> None:
    assert "deeplense-small" in pretrained_names()
    assert resolve_generator_source("deeplense-small").is_file()
    g, payload = load_generator("deeplense-small")
    assert not g.training and payload["scale"] == 2


def test_exported_file_round_trips_weights_and_spec(tmp_path: Path) -> None:
    src = tiny_file(tmp_path / "a.pt")
    out = export_generator(src, tmp_path / "copy" / "b.pt")
    (g1, p1), (g2, p2) = load_generator(src), load_generator(out)
    assert p1["generator"] == p2["generator"] and p2["generator"]["arch"] == "edsr" and p2["step"] == 7
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(g1(x), g2(x), rtol=0, atol=0)


def test_errors_name_the_path_and_the_shipped_names(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no-such: no such file.*deeplense-small"):
        load_generator_payload(tmp_path / "no-such")
    newer = tiny_file(tmp_path / "new.pt", version=GENERATOR_VERSION + 1)
    with pytest.raises(CheckpointError, match=r"new\.pt: generator file version .* upgrade hpc_sr"):
        load_generator_payload(newer)
    other = tmp_path / "other.pt"
    atomic_torch_save({"format": "something"}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not an exported hpc_sr generator"):
        load_generator_payload(other)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"run: run directory without a complete checkpoint"):
        load_generator_payload(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: neither a generator file nor a complete checkpoint"):
        load_generator_payload(tmp_path / "empty")
