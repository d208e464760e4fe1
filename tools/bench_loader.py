"""Loader throughput: HDF5 shards (per item, blocks, in memory) against the same pairs as DeepLense .npy.

    python tools/bench_loader.py --num 2000 --hr-size 150 --workers 2

Writes ``num`` random pairs (LR = 2x2 mean of HR, float32) as SRC/HR/*.npy + SRC/LR/*.npy in a temp folder,
packs them with ``pack_to_shards`` (split 1,0,0 so every pair is read), then times one full pass of a
DataLoader (batch 32) for each reader with 0 and ``--workers`` workers. Files are freshly written, so every
reader is measured from the page cache; the setup column includes hashing the shards (verify=True) and, for
``memory``, loading the split. With ``--repeats R`` every reader makes R passes, interleaved with the others
(the order rotates each round), and the figures are medians; ``ratio`` compares with the npy baseline
(0 workers) of the same run. Prints a table and one JSON line (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.data.dataset import build_dataset, seed_worker  # noqa: E402
from hpc_sr.data.shards import pack_to_shards  # noqa: E402
from tools.bench_common import emit, machine_info  # noqa: E402


class NpyPairs(Dataset):
    """The baseline: one np.load per image from a DeepLense layout."""

    def __init__(self, src: Path) -> None:
        self.names = sorted(p.name for p in (src / "HR").iterdir())
        self.src = src

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.names[i]
        hr = np.load(self.src / "HR" / n)[None]
        lr = np.load(self.src / "LR" / n)[None]
        return torch.from_numpy(lr), torch.from_numpy(hr)


def write_npy(src: Path, num: int, hr_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (src / "HR").mkdir(parents=True)
    (src / "LR").mkdir()
    h = hr_size // 2
    for i in tqdm(range(num), desc="write npy", unit="pair"):
        hr = rng.random((hr_size, hr_size), dtype=np.float32)
        np.save(src / "HR" / f"lens_{i:06d}.npy", hr)
        np.save(src / "LR" / f"lens_{i:06d}.npy", hr.reshape(h, 2, h, 2).mean((1, 3)))


def time_pass(ds: Dataset, workers: int, batch_size: int) -> tuple[float, float, int, int]:
    """(seconds for the pass, seconds after the first batch, pairs, pairs after the first batch)."""
    kw = {"shuffle": True} if not isinstance(ds, torch.utils.data.IterableDataset) else {}
    dl = DataLoader(ds, batch_size=batch_size, num_workers=workers, worker_init_fn=seed_worker, **kw)
    t0 = time.perf_counter()
    it = iter(dl)
    n0 = len(next(it)[1])
    t1 = time.perf_counter()
    n = n0 + sum(len(hr) for _, hr in it)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, n, n - n0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--hr-size", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"])
    ap.add_argument("--tmp", default=None, help="work folder (default: a new temp folder, removed after)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="passes per reader, interleaved (the order rotates); figures are their medians")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=a.tmp))
    try:
        write_npy(work / "src", a.num, a.hr_size, seed=0)
        t0 = time.perf_counter()
        pack_to_shards("deeplense", work / "src", work / "shards", shard_size=a.shard_size,
                       compression=a.compression, split=(1.0, 0.0, 0.0))
        pack_s = time.perf_counter() - t0
        rows: list[dict] = [{"reader": "pack npy->shards", "workers": 0, "seconds": pack_s,
                             "pairs_per_s": a.num / pack_s}]
        configs = [("npy files", w) for w in (0, a.workers)]
        configs += [(f"shards {kind}", w) for kind in ("item", "block") for w in (0, a.workers)]
        configs += [("shards memory", 0)]
        configs = list(dict.fromkeys(configs))  # --workers 0: no duplicate rows
        passes: dict[tuple[str, int], list[dict]] = {c: [] for c in configs}
        order = [configs[r % len(configs):] + configs[:r % len(configs)] for r in range(a.repeats)]
        for name, w in tqdm([c for rnd in order for c in rnd], desc="bench", unit="pass"):
            t0 = time.perf_counter()
            if name == "npy files":
                ds: Dataset = NpyPairs(work / "src")
            else:
                ds = build_dataset(work / "shards", "train", loader=name.split()[1], block_size=a.block_size)
            setup = time.perf_counter() - t0
            secs, steady_s, n, n_steady = time_pass(ds, w, a.batch_size)
            assert n == a.num, f"{name} read {n} pairs, expected {a.num}"
            passes[(name, w)].append({"setup_s": setup, "seconds": secs, "pairs_per_s": n / secs,
                                      "steady_pairs_per_s": n_steady / max(steady_s, 1e-9)})
        for (name, w), runs in passes.items():  # medians over the interleaved passes
            rows.append({"reader": name, "workers": w, "passes": len(runs),
                         **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
        base = rows[1]["pairs_per_s"]  # npy files, 0 workers
        for r in rows[1:]:
            r["ratio"] = r["pairs_per_s"] / base
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{a.num} pairs, HR {a.hr_size}x{a.hr_size} float32, batch {a.batch_size}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("pairs/s = pairs / whole pass (worker start-up included); steady = after the first batch")
    print(f"medians of {a.repeats} interleaved pass(es) per reader; ratio = pairs/s vs npy files, 0 workers")
    print(f"{'reader':<18} {'workers':>7} {'setup s':>8} {'pass s':>8} {'pairs/s':>9} {'steady':>9} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['reader']:<18} {r['workers']:>7} {r.get('setup_s', 0):>8.2f} {r['seconds']:>8.2f} "
              f"{r['pairs_per_s']:>9.0f} {r.get('steady_pairs_per_s', r['pairs_per_s']):>9.0f} "
              f"{r.get('ratio', float('nan')):>6.2f}")
    result = {"bench": "loader", "num": a.num, "hr_size": a.hr_size, "batch_size": a.batch_size,
              "block_size": a.block_size, "compression": a.compression, "cpus": os.cpu_count(),
              "host": platform.node(), "repeats": a.repeats, "machine": machine_info(), "rows": rows}
    emit(result, a.out)
    return result


if __name__ == "__main__":
    main()
