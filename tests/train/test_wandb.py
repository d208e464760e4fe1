"""Weights & Biases beside TensorBoard: real offline W&B runs, read back from their ``.wandb`` record files.

An offline run leaves ``<run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``: a LevelDB-style log (a
7-byte ``:W&B`` header, 32 KiB blocks of CRC-checked chunks) of ``wandb_internal_pb2.Record`` protobufs, the
records ``wandb sync`` uploads. wandb-core writes no ``wandb-summary.json`` or ``config.yaml`` offline and the
Python package no longer ships a reader of this format, so :func:`records` reads it here.
"""

from __future__ import annotations

import json
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("wandb")

from wandb.proto import wandb_internal_pb2 as pb  # noqa: E402

from hpc_sr.config import ConfigError, LogConfig, WandbConfig, load_config  # noqa: E402
from hpc_sr.dist.env import DistEnv  # noqa: E402
from hpc_sr.train.logger import RunLogger  # noqa: E402
from hpc_sr.train.trainer import Trainer  # noqa: E402
from hpc_sr.train.wandb_sink import RUN_ID_FILE, wandb_mode  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, silent, every W&B directory in tmp_path, and no reachable server even if a mode slipped."""
    home = tmp_path / "wandb_home"
    for var, sub in [("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")]:  # fmt: skip
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


# ----------------------------------------------------------------------------------------------- the reader
def records(path: Path) -> Iterator[pb.Record]:
    """Every record of a ``.wandb`` file, checking its header and each chunk's CRC."""
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B record file"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if left < HEADER or (kind == 0 and length == 0):  # the rest of a block is padding
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad CRC at byte {pos}"
        pos += HEADER + length
        parts += chunk
        if kind in (FULL, LAST):
            yield pb.Record.FromString(parts)
            parts = b""


def _items(items: Any) -> dict[str, Any]:
    """``{key: value}`` of history/summary/config items (a nested key joined by ".")."""
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


@dataclass
class OfflineRun:
    """What one offline run directory holds."""

    path: Path
    run_id: str = ""
    resumed_flag: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> row
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @classmethod
    def read(cls, path: Path) -> OfflineRun:
        (file,) = path.glob("*.wandb")
        run = cls(path)
        for rec in records(file):
            kind = rec.WhichOneof("record_type")
            if kind == "run":  # the first carries the id; later run updates may leave it empty
                run.run_id = rec.run.run_id or run.run_id
                run.resumed_flag = run.resumed_flag or rec.run.resume
                run.config.update(_items(rec.run.config.update))
            elif kind == "config":
                run.config.update(_items(rec.config.update))
            elif kind == "history":
                run.history[rec.history.step.num] = _items(rec.history.item)
            elif kind == "summary":
                run.summary.update(_items(rec.summary.update))
            elif kind == "exit":
                run.exit_code = rec.exit.exit_code
        return run

    def series(self, key: str) -> dict[int, Any]:
        return {step: row[key] for step, row in sorted(self.history.items()) if key in row}


def finished(path: Path, timeout_s: float = 30.0) -> OfflineRun:
    """An offline run once its exit record is on disk: wandb's service process writes the record file
    asynchronously, and on a busy machine it may still be writing after ``finish()`` has returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = list(path.glob("*.wandb"))
        run = OfflineRun.read(path) if files else None
        if run is not None and (run.exit_code is not None or time.monotonic() > deadline):
            return run
        if run is None and time.monotonic() > deadline:
            raise AssertionError(f"{path}: no .wandb record file after {timeout_s} s")
        time.sleep(0.2)


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The run directory's offline W&B runs, oldest first."""
    return [finished(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def tb_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def train(tiny_shards: Path, runs: Path, steps: int, **extra: object) -> Path:
    overrides = tiny_overrides(
        tiny_shards, runs, name="wb", steps=steps, pretrain=3, **{"log.wandb.enabled": "true", **extra}
    )
    cfg = load_config(None, overrides)
    assert Trainer(cfg, DistEnv(), torch.device("cpu"), resume="auto").run() == 0
    return cfg.run_dir


# ----------------------------------------------------------------------------------------------- tests
def test_training_run_writes_the_tensorboard_scalars_images_config_and_summary(
    tiny_shards: Path, tmp_path: Path
) -> None:
    run_dir = train(
        tiny_shards, tmp_path, steps=6, **{"log.wandb.tags": "[tiny,ci]", "log.wandb.mode": "online"}
    )
    (run,) = offline_runs(run_dir)  # WANDB_MODE=offline wins over log.wandb.mode=online
    assert run.run_id == (run_dir / RUN_ID_FILE).read_text().strip()
    assert run.path.name.endswith(f"-{run.run_id}") and run.exit_code == 0

    tb = tb_scalars(run_dir)
    assert {"train/loss_g_pixel", "train/loss_d", "val/psnr", "val_bicubic/psnr", "val_gain/psnr_db"} <= set(
        tb
    )
    for tag, points in tb.items():  # every TensorBoard scalar, at the same steps, with the same values
        assert run.series(tag) == pytest.approx(points, rel=1e-6), tag

    tb_image_steps = [3, 6]  # log.image_every=3 (tb's images are checked in test_trainer)
    images = run.series("val/comparison._type")
    assert images == dict.fromkeys(tb_image_steps, "image-file")
    for step in tb_image_steps:
        png = run.path / "files" / run.history[step]["val/comparison.path"]
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {k: v for k, v in run.config.items() if k != "_wandb"} == saved
    assert run.config["log"]["wandb"]["tags"] == ["tiny", "ci"] and run.config["train"]["steps"] == 6

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_val = [row for row in rows if row["kind"] == "val"][-1]
    assert last_val["step"] == 6
    assert run.summary["hparam/psnr"] == pytest.approx(last_val["model"]["psnr"])
    assert run.summary["hparam/ssim"] == pytest.approx(last_val["model"]["ssim"])


def test_resumed_run_continues_the_same_wandb_run(tiny_shards: Path, tmp_path: Path) -> None:
    run_dir = train(tiny_shards, tmp_path, steps=4)
    run_id = (run_dir / RUN_ID_FILE).read_text()
    run_dir = train(tiny_shards, tmp_path, steps=6)  # resumes from checkpoints/step_00000004
    assert (run_dir / RUN_ID_FILE).read_text() == run_id
    first, second = offline_runs(run_dir)
    assert first.run_id == second.run_id == run_id.strip() and second.resumed_flag
    assert sorted(first.series("train/loss_g_pixel")) == [1, 2, 3, 4]
    assert sorted(second.series("train/loss_g_pixel")) == [5, 6]  # starts after the resumed step
    for tag, points in tb_scalars(run_dir).items():  # together: what TensorBoard got over both jobs
        assert {**first.series(tag), **second.series(tag)} == pytest.approx(points, rel=1e-6), tag
    assert first.config["train"]["steps"] == 4 and second.config["train"]["steps"] == 6


def test_a_run_that_raises_finishes_its_wandb_run_as_failed(tmp_path: Path) -> None:
    log = RunLogger(
        LogConfig(tensorboard=False, wandb=WandbConfig(enabled=True)), tmp_path, rank=0, world_size=1
    )
    with pytest.raises(RuntimeError, match="boom"):
        try:
            log.scalars("train", 1, {"loss": 0.5, "bad": float("nan"), "phase": "gan"})
            log.image("val/comparison", 1, np.zeros((8, 8, 3), np.uint8))
            raise RuntimeError("boom")
        finally:
            log.close()
    (run,) = offline_runs(tmp_path)
    assert run.exit_code == 1 and run.config == {"_wandb": {}}  # no config.yaml: nothing to give
    assert run.series("train/loss") == {1: 0.5} and run.series("train/bad") == {}
    assert run.series("val/comparison.width") == {1: 8}


def test_other_ranks_and_disabled_mode_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = LogConfig(tensorboard=False, wandb=WandbConfig(enabled=True))
    log = RunLogger(cfg, tmp_path / "rank1", rank=1, world_size=2)
    log.scalars("train", 1, {"loss": 1.0})
    log.image("val/comparison", 1, np.zeros((8, 8, 3), np.uint8))
    log.hparams(load_config(None, []), {"psnr": 30.0})
    log.close()
    assert not (tmp_path / "rank1").exists()

    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment overrides log.wandb.mode
    assert wandb_mode(cfg.wandb) == "disabled"
    monkeypatch.setitem(sys.modules, "wandb", None)  # and wandb is not even needed
    log = RunLogger(cfg, tmp_path / "rank0", rank=0, world_size=1)
    log.scalars("train", 1, {"loss": 1.0})
    log.close()
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("rank", [0, 1])
def test_enabled_without_wandb_installed_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: int
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees when it is not installed
    cfg = load_config(None, ["log.wandb.enabled=true"])
    with pytest.raises(ConfigError, match=r"log\.wandb\.enabled") as err:
        RunLogger(cfg.log, tmp_path / "run", rank=rank, world_size=2)
    assert 'pip install -e ".[wandb]"' in str(err.value)
    assert not (tmp_path / "run").exists()
