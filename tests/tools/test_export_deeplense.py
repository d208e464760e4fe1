"""tools/export_deeplense.py: packed sets back to the DeepLense layout, a mixture packed again."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_sr.data.lr_relation import lr_relation
from hpc_sr.data.shards import load_manifest, pack_to_shards, simulate_to_shards
from hpc_sr.errors import HpcSrError
from tools.export_deeplense import export_pairs, main


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    simulate_to_shards(root / "sharp", 10, preset="deeplense_sr", hr_size=16, seed=1, shard_size=4)
    simulate_to_shards(root / "ground", 10, preset="ground_space", hr_size=16, seed=2, shard_size=4)
    return root / "sharp", root / "ground"


def _pairs(root: Path, split: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    m = load_manifest(root)
    out = {}
    for g in m.split_indices(split):
        s, j = m.locate(int(g))
        with h5py.File(m.shard_path(int(s)), "r") as f:
            out[int(g)] = (f["hr"][int(j), 0], f["lr"][int(j), 0])
    return out


def test_the_chosen_splits_are_written_pair_for_pair_and_pack_again(two_sets: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    sharp, ground = two_sets
    n = export_pairs([sharp, ground], tmp_path / "src")
    want = {f"{root.name}_{split}_{g:07d}": pair for root in (sharp, ground) for split in ("train", "val")
            for g, pair in _pairs(root, split).items()}
    assert n == len(want) == 18  # 8 train + 1 val of each set: their 1 test pair each left out
    assert sorted(p.stem for p in (tmp_path / "src" / "HR").glob("*.npy")) == sorted(want)
    for stem, (hr, lr) in want.items():
        np.testing.assert_array_equal(np.load(tmp_path / "src" / "HR" / f"{stem}.npy"), hr)
        np.testing.assert_array_equal(np.load(tmp_path / "src" / "LR" / f"{stem}.npy"), lr)
    assert not list((tmp_path / "src").rglob("*.tmp"))
    m = pack_to_shards("deeplense", tmp_path / "src", tmp_path / "mix", split=(0.8, 0.2, 0.0))
    assert m.count == 18
    assert lr_relation(tmp_path / "mix").is_mean in (False, None)  # blurred pairs inside: never "the mean"


def test_bad_requests_are_refused_naming_what(two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    sharp, _ = two_sets
    with pytest.raises(HpcSrError, match="'train,holdout'"):
        export_pairs([sharp], tmp_path / "a", ["train", "holdout"])
    with pytest.raises(HpcSrError, match="share a folder name"):
        export_pairs([sharp, sharp], tmp_path / "b")
    export_pairs([sharp], tmp_path / "c", ["test"])
    assert main([str(sharp), "--out", str(tmp_path / "c")]) == 2  # the folder holds pairs already
