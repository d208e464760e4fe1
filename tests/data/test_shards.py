"""HDF5 shards + manifest: pack round trip, seeded split, integrity checks, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_sr.data.dataset import ShardDataset
from hpc_sr.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    ShardWriter,
    load_manifest,
    make_split,
    pack_to_shards,
    verify_shards,
)
from hpc_sr.errors import DataError


def write_deeplense(root: Path, n: int, hr_size: int = 32, seed: int = 0, order=None) -> dict:
    """n random pairs (LR = 2x2 mean of HR) in SRC/HR + SRC/LR, created in ``order`` of indices."""
    rng = np.random.default_rng(seed)
    (root / "HR").mkdir(parents=True, exist_ok=True)
    (root / "LR").mkdir(exist_ok=True)
    pairs = {}
    for i in range(n):
        hr = rng.random((hr_size, hr_size), dtype=np.float32)
        pairs[f"img_{i:04d}"] = (hr, hr.reshape(hr_size // 2, 2, hr_size // 2, 2).mean((1, 3)))
    for i in order if order is not None else range(n):
        name = f"img_{i:04d}"
        np.save(root / "HR" / f"{name}.npy", pairs[name][0])
        np.save(root / "LR" / f"{name}.npy", pairs[name][1])
    return pairs


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("packed")
    pairs = write_deeplense(base / "src", 50)
    pack_to_shards("deeplense", base / "src", base / "out", shard_size=16, seed=3)
    return base / "out", pairs


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_pack_round_trip_bit_for_bit(packed: tuple[Path, dict]) -> None:
    out, pairs = packed
    m = verify_shards(out)
    assert m.count == 50 and [s.count for s in m.shards] == [16, 16, 16, 2]
    assert m.hr_shape == (1, 32, 32) and m.lr_shape == (1, 16, 16) and m.scale == 2
    seen = set()
    for split in ("train", "val", "test"):
        ds = ShardDataset(out, split)
        for pos in range(len(ds)):
            lr, hr = ds[pos]
            name = ds.item_name(pos)
            np.testing.assert_array_equal(hr.numpy()[0], pairs[name][0])
            np.testing.assert_array_equal(lr.numpy()[0], pairs[name][1])
            seen.add(name)
    assert seen == set(pairs)


def test_shard_layout_and_attributes(packed: tuple[Path, dict]) -> None:
    out, _ = packed
    with h5py.File(out / "shard-00000.h5", "r") as f:
        assert f["hr"].shape == (16, 1, 32, 32) and f["hr"].dtype == np.float32
        assert f["hr"].chunks == (1, 1, 32, 32) and f["lr"].chunks == (1, 1, 16, 16)
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["scale"] == 2
        assert str(f.attrs["source"]).startswith("deeplense:") and f.attrs["created"]
        assert [n.decode() for n in f["names"][:3]] == ["img_0000", "img_0001", "img_0002"]
    prov = json.loads((out / MANIFEST).read_text())["provenance"]
    assert prov["command"] == "pack" and prov["seed"] == 3 and prov["package_version"] and prov["date"]
    assert prov["source_dir"].endswith("src")


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compression_round_trip(tmp_path: Path, compression: str) -> None:
    w = ShardWriter(tmp_path, shard_size=5, compression=compression, param_names=["a", "b"])
    hr = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    w.add(hr, hr[:, :, ::2, ::2], params=np.arange(14, dtype=np.float32).reshape(7, 2))
    shards = w.close()
    assert [s.count for s in shards] == [5, 2]
    with h5py.File(tmp_path / "shard-00001.h5", "r") as f:
        assert f["hr"].compression == compression
        np.testing.assert_array_equal(f["hr"][:], hr[5:])
        assert list(f["params"].attrs["param_names"]) == ["a", "b"] and f["params"][1, 1] == 13


def test_split_documented_deterministic_disjoint_covering() -> None:
    a = make_split(1000, (0.8, 0.1, 0.1), seed=7)
    assert [len(a[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    allidx = np.concatenate(list(a.values()))
    assert len(allidx) == 1000 and len(np.unique(allidx)) == 1000
    b = make_split(1000, (0.8, 0.1, 0.1), seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = make_split(1000, (0.8, 0.1, 0.1), seed=8)
    assert not np.array_equal(a["val"], c["val"])
    assert not np.array_equal(a["train"], np.arange(800))  # not the first 80 % of the listing
    perm = np.random.default_rng(7).permutation(1000)  # the documented rule
    assert np.array_equal(a["val"], np.sort(perm[800:900]))
    with pytest.raises(DataError, match="summing to 1"):
        make_split(10, (0.8, 0.1, 0.2), seed=0)
    with pytest.raises(DataError, match="summing to 1"):
        make_split(10, (1.2, -0.1, -0.1), seed=0)


def test_split_independent_of_file_creation_order(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    out, _ = packed
    order = list(np.random.default_rng(5).permutation(50))
    write_deeplense(tmp_path / "src", 50, order=order)  # same content, files created in another order
    m2 = pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out", shard_size=16, seed=3)
    m1 = load_manifest(out)
    assert all(np.array_equal(m1.split_indices(k), m2.split_indices(k)) for k in ("train", "val", "test"))
    assert [s.sha256 for s in m1.shards] != [] and m1.shards[0].count == m2.shards[0].count
    with h5py.File(out / "shard-00001.h5") as f1, h5py.File(tmp_path / "out" / "shard-00001.h5") as f2:
        assert list(f1["names"]) == list(f2["names"])
        np.testing.assert_array_equal(f1["hr"][:], f2["hr"][:])


def test_bad_fractions_write_nothing(tmp_path: Path) -> None:
    write_deeplense(tmp_path / "src", 4)
    with pytest.raises(DataError, match="summing to 1"):
        pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out", split=(0.5, 0.1, 0.1))
    assert not (tmp_path / "out").exists()


def test_empty_split_allowed_but_dataset_raises(tmp_path: Path) -> None:
    write_deeplense(tmp_path / "src", 6)
    m = pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out", split=(1.0, 0.0, 0.0))
    assert len(m.split_indices("train")) == 6 and len(m.split_indices("val")) == 0
    assert len(ShardDataset(tmp_path / "out", "train")) == 6
    with pytest.raises(DataError, match="split 'val' is empty"):
        ShardDataset(tmp_path / "out", "val")
    with pytest.raises(DataError, match="no split 'dev'"):
        ShardDataset(tmp_path / "out", "dev")


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_named_by_verify_and_loader(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    d = copy_dir(packed[0], tmp_path / "d")
    flip_byte(d / "shard-00002.h5", offset=(d / "shard-00002.h5").stat().st_size - 100)
    with pytest.raises(DataError, match=r"shard-00002\.h5 fails its sha256"):
        verify_shards(d)
    with pytest.raises(DataError, match=r"shard-00002\.h5 fails its sha256"):
        ShardDataset(d, "train")
    assert len(ShardDataset(d, "train", verify=False)) == 40  # opt-out of hashing still opens


def test_truncated_shard(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    d = copy_dir(packed[0], tmp_path / "d")
    p = d / "shard-00001.h5"
    p.write_bytes(p.read_bytes()[:5000])
    for check in (verify_shards, lambda r: ShardDataset(r, "train", verify=False)):
        with pytest.raises(DataError, match=r"shard-00001\.h5 is 5000 bytes.*truncated"):
            check(d)


def test_truncated_after_open_is_named_on_read(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    d = copy_dir(packed[0], tmp_path / "d")
    ds = ShardDataset(d, "train")
    p = d / "shard-00000.h5"
    p.write_bytes(p.read_bytes()[:3000])
    pos = int(np.flatnonzero(ds._shard == 0)[0])
    with pytest.raises(DataError, match=r"shard-00000\.h5"):
        ds[pos]


def test_missing_shard_and_wrong_format_version(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    d = copy_dir(packed[0], tmp_path / "d")
    (d / "shard-00003.h5").unlink()
    with pytest.raises(DataError, match=r"shard .*shard-00003\.h5 listed in .*manifest\.json is missing"):
        verify_shards(d)
    man = json.loads((d / MANIFEST).read_text())
    man["format_version"] = FORMAT_VERSION + 1
    (d / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(DataError, match=r"manifest\.json: format_version 2"):
        verify_shards(d)
    with pytest.raises(DataError, match=r"manifest\.json not found"):
        load_manifest(tmp_path)


def test_manifest_validation_names_the_problem(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    d = copy_dir(packed[0], tmp_path / "d")
    man = json.loads((d / MANIFEST).read_text())
    man["split"]["indices"]["val"].append(man["split"]["indices"]["train"][0])
    (d / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(DataError, match="not a disjoint cover"):
        load_manifest(d)
    (d / MANIFEST).write_text("{ half")
    with pytest.raises(DataError, match="unreadable manifest"):
        load_manifest(d)


def test_atomic_writes_leftovers_and_failures(tmp_path: Path, packed: tuple[Path, dict]) -> None:
    d = copy_dir(packed[0], tmp_path / "d")
    (d / ".shard-00004.h5.tmp").write_bytes(b"half written")  # a killed writer's leftover
    assert verify_shards(d).count == 50
    assert len(ShardDataset(d, "train")) == 40
    # a pack that fails mid-way leaves finished shards but no manifest and no temp file
    write_deeplense(tmp_path / "src", 20)
    np.save(tmp_path / "src" / "HR" / "img_0017.npy", np.full((32, 32), np.inf, np.float32))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".shard-00009.h5.tmp").write_bytes(b"stale")
    with pytest.raises(DataError, match=r"img_0017\.npy"):
        pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out", shard_size=8, batch_size=4)
    assert not (tmp_path / "out" / MANIFEST).exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]
    with pytest.raises(DataError, match="not found"):
        ShardDataset(tmp_path / "out")
    # the retry with --skip-bad overwrites cleanly
    m = pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out", shard_size=8, skip_bad=True)
    assert m.count == 19 and "img_0017.npy" in m.provenance["skipped"][0]["file"]
    with pytest.raises(DataError, match="already holds a dataset"):
        pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out")


def test_manifest_file_is_written_last(tmp_path: Path) -> None:
    write_deeplense(tmp_path / "src", 10)
    pack_to_shards("deeplense", tmp_path / "src", tmp_path / "out", shard_size=4)
    mtimes = {p.name: os.stat(p).st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert mtimes[MANIFEST] >= max(mtimes.values())
