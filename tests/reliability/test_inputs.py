"""Bad inputs through the real entry points (``hpc-sr train`` via hpc_sr.cli.main, the Trainer): corrupt
shards, NaN data, wrong shapes, an empty split, and impossible configs. Items that tests/data and
tests/train already cover are listed in docs/RELIABILITY.md instead of being repeated here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpc_sr.cli import main as cli_main
from hpc_sr.config import load_config
from hpc_sr.data.shards import MANIFEST, sha256_file
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError, TrainingError
from hpc_sr.train.trainer import Trainer, micro_batch_size
from tests.conftest import tiny_overrides
from tests.reliability.reli_util import rows


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_shard(root: Path, index: int, edit: callable) -> Path:
    """Edit shard ``index`` with h5py, then re-record its size and sha256, as a buggy packer would have."""
    man = json.loads((root / MANIFEST).read_text())
    info = man["shards"][index]
    path = root / info["file"]
    with h5py.File(path, "r+") as f:
        edit(f)
    info["bytes"], info["sha256"] = path.stat().st_size, sha256_file(path)
    (root / MANIFEST).write_text(json.dumps(man))
    return path


def train_cli(data: Path, runs: Path, *extra: str, steps: int = 3) -> int:
    ov = tiny_overrides(
        data, runs, steps=steps, pretrain=steps, **{"train.val_every": 100, "log.image_every": 0}
    )
    return cli_main(["train", *ov, *extra])


def test_flipped_byte_in_a_shard_stops_train_before_it_starts(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_shards(tiny_shards, tmp_path / "data")
    shard = data / "shard-00001.h5"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) - 200] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert train_cli(data, tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert "hpc-sr train: error:" in err and "shard-00001.h5 fails its sha256" in err
    assert (
        not rows(tmp_path / "runs" / "tiny", "train")
        and not (tmp_path / "runs" / "tiny" / "checkpoints").exists()
    )


def test_shard_with_wrong_image_shape_is_named(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_shards(tiny_shards, tmp_path / "data")

    def shrink(f: h5py.File) -> None:
        hr = f["hr"][:, :, :30, :30]
        del f["hr"]
        f.create_dataset("hr", data=hr)

    path = rewrite_shard(data, 0, shrink)
    code = train_cli(data, tmp_path / "runs")
    err = capsys.readouterr().err
    assert code == 2 and path.name in err and "30" in err, err


def test_nan_in_shard_data_stops_training_naming_the_step(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN pixels (hash re-recorded, so only the values are wrong): every step's loss is non-finite, the
    steps are skipped without touching the weights, and the run stops after train.max_bad_steps."""
    data = copy_shards(tiny_shards, tmp_path / "data")
    man = json.loads((data / MANIFEST).read_text())
    for i in range(len(man["shards"])):
        rewrite_shard(data, i, lambda f: f["hr"].__setitem__((slice(None), 0, 0, 0), np.nan))
    code = train_cli(data, tmp_path / "runs", "train.max_bad_steps=2", "data.patch_size=0")
    err = capsys.readouterr().err
    assert code == 2 and "2 consecutive non-finite losses" in err, err
    assert [r["step"] for r in rows(tmp_path / "runs" / "tiny", "skip")] == [1, 2]


def test_empty_train_split_is_named(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_shards(tiny_shards, tmp_path / "data")
    man = json.loads((data / MANIFEST).read_text())
    split = man["split"]
    split["indices"]["val"] = sorted(split["indices"]["val"] + split["indices"]["train"])
    split["indices"]["train"] = []
    split["sizes"].update(train=0, val=len(split["indices"]["val"]))
    (data / MANIFEST).write_text(json.dumps(man))
    code = train_cli(data, tmp_path / "runs")
    err = capsys.readouterr().err
    assert code == 2 and "split 'train' is empty" in err, err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.scale=4", r"shards have scale 2, the dataset was asked for scale 4"),
        ("data.patch_size=32", r"patch_size=32 \(HR 64\) does not fit"),
    ],
)
def test_impossible_data_config_is_named(
    tiny_shards: Path, tmp_path: Path, override: str, message: str
) -> None:
    cfg = load_config(None, [*tiny_overrides(tiny_shards, tmp_path), override])
    with pytest.raises(DataError, match=message):
        Trainer(cfg, DistEnv(), torch.device("cpu"), resume="never")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "train.stepz"),
        ("data.batch_size=four", "data.batch_size: expected an integer, got 'four'"),
        ("dist.backend=mpi", "dist.backend: 'mpi' is not one of"),
    ],
)
def test_bad_config_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert cli_main(["train", f"log.runs_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert "hpc-sr train: error:" in err and message in err, err
    assert not list(tmp_path.iterdir()), "nothing is written for a config that does not load"


@pytest.mark.parametrize(
    ("batch", "world", "accum", "ok"), [(4, 2, 1, True), (4, 3, 1, False), (6, 2, 2, False), (8, 2, 2, True)]
)
def test_batch_must_split_over_ranks_and_accumulation(batch: int, world: int, accum: int, ok: bool) -> None:
    cfg = load_config(None, [f"data.batch_size={batch}", f"train.grad_accum={accum}"])
    if ok:
        assert micro_batch_size(cfg.data.batch_size, cfg.train.grad_accum, world) * world * accum == batch
    else:
        with pytest.raises(
            TrainingError,
            match=rf"data.batch_size={batch} is not divisible by world size "
            rf"{world} x train.grad_accum={accum}",
        ):
            micro_batch_size(cfg.data.batch_size, cfg.train.grad_accum, world)
