"""Which pairs of a packed set a run trains and validates on: k-fold cross-validation and few-pair subsets.

``data.folds`` = K >= 2 pools the manifest's train and val indices (its seeded 80/10/10 split; the test
split is never touched), permutes the pool with a generator seeded by the manifest's split seed and cuts
the permutation into K folds whose sizes differ by at most one. Fold ``data.fold`` = k is validated on;
training uses the other K - 1 folds, in the order they have in the permutation. Without folds, training
uses the manifest's train split in an order drawn (also from the split seed) the same way.

``data.train_pairs`` = N keeps the first N of those training indices in that seeded order: the subsets of
one set and fold are nested (the first 100 pairs are among the first 300), and they do not depend on the
training seed, so runs with other ``train.seed`` values see the same pairs.

    train = run_indices(manifest, "train", cfg.data)     # sorted global indices, as the datasets want them
    val = run_indices(manifest, "val", cfg.data)

The index arithmetic is pure numpy: the same manifest and keys give the same indices on every machine and
rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpc_sr.atomic import atomic_write_text
from hpc_sr.config import ConfigError, DataConfig
from hpc_sr.data.shards import MANIFEST, Manifest, load_manifest

# sub-streams of the manifest's split seed (so the fold and order draws are not make_split's permutation)
FOLD_STREAM = 0xF01D
ORDER_STREAM = 0x0BDE
PAIRS_FILE = "pairs.json"  # in a run directory: the global indices the run trains and validates on


def cross_validating(data: DataConfig) -> bool:
    """Whether ``data`` asks for k-fold cross-validation (``data.folds`` >= 2)."""
    return data.folds >= 2


def selects_pairs(data: DataConfig) -> bool:
    """Whether ``data`` narrows the pairs of a packed set (folds or a train-pair cap)."""
    return cross_validating(data) or data.train_pairs > 0


def check_folds(data: DataConfig) -> None:
    """ConfigError naming the key and value for a bad ``data.folds`` / ``data.fold`` / ``data.train_pairs``.

    When the set at ``data.path`` is there already, the selection is also resolved against its manifest,
    so a ``train_pairs`` larger than the pairs available fails before anything is written or submitted.
    """
    if data.folds < 0:
        raise ConfigError(
            f"data.folds={data.folds}: expected 0 (no cross-validation) or a number of folds >= 2"
        )
    if cross_validating(data):
        if not 0 <= data.fold < data.folds:
            raise ConfigError(
                f"data.fold={data.fold}: expected 0 .. {data.folds - 1} for data.folds={data.folds}"
            )
    elif data.fold != 0:
        raise ConfigError(
            f"data.fold={data.fold} needs k-fold cross-validation: set data.folds >= 2 "
            f"(got data.folds={data.folds})"
        )
    if data.train_pairs < 0:
        raise ConfigError(
            f"data.train_pairs={data.train_pairs}: expected 0 (all pairs) or a number of pairs >= 1"
        )
    if not selects_pairs(data):
        return
    if data.source != "shards":
        keys = ", ".join(
            f"data.{k}={getattr(data, k)}" for k in ("folds", "fold", "train_pairs") if getattr(data, k)
        )
        why = " draws fresh pairs without end" if data.source == "simulate" else " is not a packed set"
        raise ConfigError(
            f"{keys}: folds and train_pairs select pairs of a packed set (data.source=shards); "
            f"data.source={data.source}{why}"
        )
    if (Path(data.path) / MANIFEST).is_file():
        m = load_manifest(data.path)
        run_indices(m, "train", data)
        run_indices(m, "val", data)


def fold_partition(pool: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``pool`` (global indices, any order) cut into ``folds`` disjoint folds covering it.

    The sorted pool is permuted by ``default_rng([seed, FOLD_STREAM])`` and cut into consecutive runs whose
    sizes differ by at most one; each fold keeps its permutation order (int64).
    """
    if folds < 2:
        raise ValueError(f"folds={folds}: a partition needs >= 2 folds")
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    if len(pool) < folds:
        raise ValueError(f"{len(pool)} pairs cannot make {folds} non-empty folds")
    perm = pool[np.random.default_rng([seed, FOLD_STREAM]).permutation(len(pool))]
    return [part.astype(np.int64) for part in np.array_split(perm, folds)]


def seeded_order(indices: np.ndarray, seed: int) -> np.ndarray:
    """``indices`` sorted, then permuted by ``default_rng([seed, ORDER_STREAM])`` (int64)."""
    idx = np.sort(np.asarray(indices, dtype=np.int64))
    return idx[np.random.default_rng([seed, ORDER_STREAM]).permutation(len(idx))]


def ordered_train_val(
    split: dict[str, np.ndarray], seed: int, folds: int = 0, fold: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(training indices in their seeded order, validation indices sorted) of a train/val/test ``split``.

    ``folds`` >= 2: the pooled train+val indices cut by :func:`fold_partition`; validation = fold ``fold``,
    training = the other folds in permutation order. Otherwise the split's own train (in
    :func:`seeded_order`) and val. ``split["test"]`` is never read.
    """
    if folds >= 2:
        if not 0 <= fold < folds:
            raise ValueError(f"fold={fold} is not in 0 .. {folds - 1}")
        parts = fold_partition(np.concatenate([split["train"], split["val"]]), folds, seed)
        train = np.concatenate([p for i, p in enumerate(parts) if i != fold]).astype(np.int64)
        return train, np.sort(parts[fold])
    return seeded_order(split["train"], seed), np.sort(np.asarray(split["val"], dtype=np.int64))


def first_pairs(ordered: np.ndarray, n: int, where: str = "") -> np.ndarray:
    """The first ``n`` of ``ordered`` (all when ``n`` is 0); ConfigError naming both numbers if too few."""
    if n <= 0:
        return ordered
    if n > len(ordered):
        raise ConfigError(
            f"data.train_pairs={n} is more than the {len(ordered)} training pairs available{where}"
        )
    return ordered[:n]


def run_indices(m: Manifest, name: str, data: DataConfig) -> np.ndarray:
    """Sorted global indices of split ``name`` (train | val | test) as a run with ``data`` uses them.

    ``test`` is always the manifest's test split; ``train`` and ``val`` follow ``data.folds`` / ``data.fold``
    and ``data.train_pairs`` (the manifest's own split when neither is set).
    """
    if name == "test" or not selects_pairs(data):
        return m.split_indices(name)
    if name not in ("train", "val"):
        return m.split_indices(name)  # DataError naming the split
    split = {k: m.split_indices(k) for k in ("train", "val")}
    folds = data.folds if cross_validating(data) else 0
    if folds and len(split["train"]) + len(split["val"]) < folds:
        raise ConfigError(
            f"data.folds={folds}: {m.root} has {len(split['train']) + len(split['val'])} train+val pairs, "
            f"too few for {folds} non-empty folds"
        )
    train, val = ordered_train_val(split, m.split_seed, folds, data.fold)
    if name == "val":
        return val
    where = f" in fold {data.fold} of {folds} of {m.root}" if folds else f" in the train split of {m.root}"
    return np.sort(first_pairs(train, data.train_pairs, where))


def describe_pairs(data: DataConfig) -> str:
    """One line for logs: what the run trains and validates on."""
    m = load_manifest(data.path)
    train, val = run_indices(m, "train", data), run_indices(m, "val", data)
    what = f"fold {data.fold} of {data.folds}" if cross_validating(data) else "the manifest's split"
    cap = f" (data.train_pairs={data.train_pairs})" if data.train_pairs else ""
    return f"{m.root}: {what}: {len(train)} training pairs{cap}, {len(val)} validation pairs"


def write_pairs(data: DataConfig, path: str | Path) -> dict[str, object]:
    """Write (atomically) the run's selection as JSON: the keys, the manifest's split seed, and the sorted
    global ``train`` and ``val`` indices (one line each); returns what was written."""
    m = load_manifest(data.path)
    record: dict[str, object] = {
        "path": str(data.path),
        "folds": data.folds,
        "fold": data.fold,
        "train_pairs": data.train_pairs,
        "split_seed": m.split_seed,
        "train": [int(i) for i in run_indices(m, "train", data)],
        "val": [int(i) for i in run_indices(m, "val", data)],
    }
    text = json.dumps({k: "@@" + k if k in ("train", "val") else v for k, v in record.items()}, indent=1)
    for k in ("train", "val"):
        text = text.replace(f'"@@{k}"', json.dumps(record[k], separators=(",", ":")))
    atomic_write_text(path, text + "\n")
    return record
