"""Generator artifacts: every way of naming a trained generator gives the same generator and metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.apps.ckpt import average_payloads, export_any
from hpc_sr.apps.export import read_metadata
from hpc_sr.errors import CheckpointError
from hpc_sr.models.artifacts import (
    CALIBRATION_FILE,
    CALIBRATION_FORMAT,
    CALIBRATION_KEY,
    GENERATOR_VERSION,
    calibration_target,
    export_generator,
    generator_payload,
    load_generator,
    load_generator_payload,
    pretrained_names,
    resolve_generator_source,
    save_calibration,
)
from hpc_sr.models.checkpoint_layout import FORMAT, META_FILE, TRAINER_FILE, VERSION, atomic_torch_save
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


# ----------------------------------------------------------------------------------------------- calibration
def record(scale: float) -> dict[str, object]:
    """A stored spread calibration (as `evaluate --store-calibration` writes it), scales ``scale``."""
    return {"format": CALIBRATION_FORMAT, "version": 1,
            "spread_scales": {"edges": [0.1], "scales": [scale, scale], "level": 0.68, "block": 1},
            "fit": {"split": "val", "samples": 8}}


def step_dir(run: Path, step: int = 5) -> Path:
    """A minimal complete DDP checkpoint of the tiny EDSR: raw and EMA weights differ."""
    g = generator_from_spec(generator_spec(TINY["g"]), 2)
    raw = g.state_dict()
    ema = {k: v + 1 for k, v in raw.items()}
    d = run / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    torch.save({"format": FORMAT, "version": VERSION, "step": step, "backend": "ddp",
                "config": {"model": TINY, "data": {"scale": 2}}, "ema": {"module": ema},
                "backend_state": {"g": {"model": raw}}}, d / TRAINER_FILE)
    (d / META_FILE).write_text(json.dumps({"step": step}))
    return d


def test_a_checkpoint_keeps_one_calibration_per_weight_set_in_a_sidecar(tmp_path: Path) -> None:
    d = step_dir(tmp_path / "run")
    assert CALIBRATION_KEY not in load_generator_payload(d)
    assert save_calibration(tmp_path / "run", record(2.0), ema=True) == d / CALIBRATION_FILE  # run: latest
    assert save_calibration(d, record(3.0), ema=False) == d / CALIBRATION_FILE
    doc = json.loads((d / CALIBRATION_FILE).read_text())
    assert doc["format"] == CALIBRATION_FORMAT and set(doc["records"]) == {"ema", "raw"}
    assert load_generator_payload(d)[CALIBRATION_KEY] == record(2.0)
    assert load_generator_payload(d, ema=False)[CALIBRATION_KEY] == record(3.0)
    assert load_generator_payload(tmp_path / "run")[CALIBRATION_KEY] == record(2.0)
    exported = export_generator(d, tmp_path / "G.pt")  # the plain generator file carries it
    assert load_generator_payload(exported)[CALIBRATION_KEY] == record(2.0)
    (d / CALIBRATION_FILE).write_text('{"format": "something"}')
    with pytest.raises(CheckpointError, match=r"calibration\.json: not an hpc_sr spread calibration"):
        load_generator_payload(d)


def test_a_generator_file_is_rewritten_with_its_calibration(tmp_path: Path) -> None:
    src = tiny_file(tmp_path / "G.pt")
    before = load_generator_payload(src)
    assert save_calibration(src, record(1.5)) == src
    after = load_generator_payload(src)
    assert after[CALIBRATION_KEY] == record(1.5) and after["step"] == before["step"] == 7
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temp file left
    with pytest.raises(CheckpointError, match="a shipped generator is not changed; export it"):
        calibration_target("deeplense-small")


def test_export_metadata_and_average_carry_the_calibration(tmp_path: Path) -> None:
    a, b = tiny_file(tmp_path / "a.pt"), tiny_file(tmp_path / "b.pt")
    save_calibration(b, record(2.5))
    meta = read_metadata(export_any(b, tmp_path / "b.ts", "torchscript"))
    assert meta[CALIBRATION_KEY] == record(2.5)
    payloads = [load_generator_payload(a), load_generator_payload(b)]
    averaged = average_payloads(payloads, [str(a), str(b)])
    assert averaged[CALIBRATION_KEY] == {**record(2.5), "carried_from": str(b)}  # marked: fitted on b
    assert CALIBRATION_KEY not in average_payloads(payloads[:1], [str(a)])
