"""k-fold partition and few-pair subsets (hpc_sr.data.folds), their checks, and the streams that use them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.config import ConfigError, load_config
from hpc_sr.data.folds import first_pairs, fold_partition, ordered_train_val, run_indices, seeded_order
from hpc_sr.data.shards import load_manifest, make_split
from hpc_sr.data.streams import make_train_stream, make_val_loader
from hpc_sr.dist.env import DistEnv
from hpc_sr.train.components import check_config
from tests.conftest import tiny_overrides


def split_of(n: int, seed: int) -> dict[str, np.ndarray]:
    return make_split(n, (0.8, 0.1, 0.1), seed)


@pytest.mark.parametrize("n,k,seed", [(43, 3, 1), (1000, 5, 0), (101, 10, 7), (12, 10, 3)])
def test_folds_are_disjoint_balanced_cover_train_val_and_leave_test_alone(n: int, k: int, seed: int) -> None:
    split = split_of(n, seed)
    pool = np.sort(np.concatenate([split["train"], split["val"]]))
    parts = fold_partition(pool, k, seed)
    assert len(parts) == k
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), pool)  # a cover of train+val, each index once
    assert {len(p) for p in parts} <= {len(pool) // k, len(pool) // k + 1}  # balanced
    assert not np.intersect1d(joined, split["test"]).size  # test never in a fold
    for fold in range(k):
        train, val = ordered_train_val(split, seed, k, fold)
        assert np.array_equal(val, np.sort(parts[fold]))
        assert not np.intersect1d(train, val).size and not np.intersect1d(train, split["test"]).size
        assert np.array_equal(np.sort(np.concatenate([train, val])), pool)
    vals = np.concatenate([ordered_train_val(split, seed, k, f)[1] for f in range(k)])
    assert np.array_equal(np.sort(vals), pool)  # every pair is validated on exactly once over the folds


def test_partition_is_deterministic_in_the_seed_and_independent_of_pool_order() -> None:
    pool = np.arange(200, dtype=np.int64) * 3
    a = fold_partition(pool, 4, 11)
    b = fold_partition(pool[::-1].copy(), 4, 11)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = fold_partition(pool, 4, 12)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(p.dtype == np.int64 for p in a)


def test_train_pairs_are_nested_prefixes_of_one_seeded_order() -> None:
    split = split_of(2000, 5)
    order = seeded_order(split["train"], 5)
    assert np.array_equal(np.sort(order), split["train"])
    first = {n: set(first_pairs(order, n).tolist()) for n in (100, 300, 1000)}
    assert first[100] < first[300] < first[1000] and len(first[300]) == 300
    assert np.array_equal(first_pairs(order, 0), order)  # 0 = all
    for fold in range(3):  # inside a fold too
        train, _ = ordered_train_val(split, 5, 3, fold)
        assert set(first_pairs(train, 100).tolist()) < set(first_pairs(train, 300).tolist())
    with pytest.raises(ConfigError, match=r"data.train_pairs=2000 is more than the 1600 training pairs"):
        first_pairs(order, 2000)


def cfg_of(tiny_shards: Path, tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    return load_config(None, tiny_overrides(tiny_shards, tmp_path, **extra))


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"data.folds": 3, "data.fold": 3}, r"data.fold=3: expected 0 \.\. 2 for data.folds=3"),
        ({"data.folds": 3, "data.fold": -1}, r"data.fold=-1: expected 0 \.\. 2"),
        ({"data.fold": 1}, r"data.fold=1 needs k-fold cross-validation: set data.folds >= 2 .*data.folds=0"),
        ({"data.folds": -2}, r"data.folds=-2: expected 0 .* or a number of folds >= 2"),
        ({"data.train_pairs": -5}, r"data.train_pairs=-5: expected 0"),
        ({"data.train_pairs": 39}, r"data.train_pairs=39 is more than the 38 training pairs .*train split"),
        (
            {"data.folds": 3, "data.fold": 0, "data.train_pairs": 29},
            r"data.train_pairs=29 is more than the 28 training pairs available in fold 0 of 3",
        ),
        ({"data.folds": 44}, r"data.folds=44: .* 43 train\+val pairs, too few for 44 non-empty folds"),
    ],
)
def test_bad_fold_keys_are_config_errors_naming_key_and_value(
    tiny_shards: Path, tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(cfg_of(tiny_shards, tmp_path, **extra))


@pytest.mark.parametrize("extra", [{"data.folds": 5}, {"data.train_pairs": 100}])
def test_simulate_source_refuses_folds_and_train_pairs(tmp_path: Path, extra: dict[str, object]) -> None:
    cfg = load_config(None, tiny_overrides(None, tmp_path, **extra))
    key = next(iter(extra))
    with pytest.raises(ConfigError, match=rf"{key}=.*data.source=simulate draws fresh pairs without end"):
        check_config(cfg)


def test_folds_one_or_zero_mean_the_manifests_own_split(tiny_shards: Path, tmp_path: Path) -> None:
    m = load_manifest(tiny_shards)
    for folds in (0, 1):
        cfg = cfg_of(tiny_shards, tmp_path, **{"data.folds": folds})
        check_config(cfg)
        for name in ("train", "val", "test"):
            assert np.array_equal(run_indices(m, name, cfg.data), m.split_indices(name))


@pytest.mark.parametrize("loader", ["item", "block", "memory"])
def test_streams_and_val_loader_use_the_folds_pairs(tiny_shards: Path, tmp_path: Path, loader: str) -> None:
    """The training stream holds exactly fold k's training pairs (first N of them), validation fold k."""
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    split = {k: np.asarray(v, np.int64) for k, v in manifest["split"]["indices"].items()}
    seed = manifest["split"]["seed"]
    env, cpu = DistEnv(), torch.device("cpu")
    for fold in range(3):
        cfg = cfg_of(
            tiny_shards,
            tmp_path,
            **{
                "data.folds": 3,
                "data.fold": fold,
                "data.train_pairs": 20,
                "data.options.loader": loader,
                "data.val_images": 0,
            },
        )
        check_config(cfg)
        train, val = ordered_train_val(split, seed, 3, fold)
        stream = make_train_stream(cfg.data, 0, env, cpu, 4)
        held = stream.pairs.n if loader == "memory" else len(stream.dataset.indices)
        assert held == 20
        if loader != "memory":
            assert np.array_equal(stream.dataset.indices, np.sort(train[:20]))
        lr, hr = next(stream)
        assert lr.shape == (4, 1, 8, 8) and hr.shape == (4, 1, 16, 16)
        loader_ = make_val_loader(cfg.data, 0, env, batch_size=4)
        assert loader_ is not None
        assert np.array_equal(loader_.dataset.dataset.indices, val)  # Subset(ShardDataset)
        assert not np.intersect1d(val, split["test"]).size


def test_memory_stream_holds_the_selected_pairs_pixels(tiny_shards: Path, tmp_path: Path) -> None:
    from tests.conftest import read_shards

    cfg = cfg_of(
        tiny_shards,
        tmp_path,
        **{
            "data.folds": 2,
            "data.fold": 1,
            "data.train_pairs": 8,
            "data.options.loader": "memory",
            "data.patch_size": 0,
            "data.augment": "false",
        },
    )
    idx = run_indices(load_manifest(tiny_shards), "train", cfg.data)
    stream = make_train_stream(cfg.data, 0, DistEnv(), torch.device("cpu"), 4)
    lr_all, _, _ = read_shards(tiny_shards)
    expected = np.sort(lr_all[idx].reshape(len(idx), -1).sum(1))
    got_batches = np.concatenate([next(stream)[0].numpy() for _ in range(2)])  # one epoch: 8 pairs
    assert np.allclose(np.sort(got_batches.reshape(8, -1).sum(1)), expected, rtol=1e-6)
    assert stream.n == 8


def test_clean_targets_of_selected_pairs_are_those_of_their_split(tiny_shards: Path) -> None:
    from hpc_sr.data.dataset import noise_free_split

    m = load_manifest(tiny_shards)
    mixed = np.sort(np.concatenate([m.split_indices("train")[:3], m.split_indices("val")[:2]]))
    got = noise_free_split(tiny_shards, "train", indices=mixed)
    for name in ("train", "val"):
        whole = noise_free_split(tiny_shards, name)
        pos = np.searchsorted(m.split_indices(name), mixed)
        inside = np.isin(mixed, m.split_indices(name))
        assert np.array_equal(got[inside], whole[pos[inside]])
