"""Training-stream throughput: LR patch pairs per second per process, as the trainer consumes them.

    python tools/bench_loader.py                                   # 2000 pairs 150/75 px, patches LR 24
    python tools/bench_loader.py --num 10000 --batches 16,32,64 --rounds 7 --out loader.json
    python tools/bench_loader.py --device cuda                     # memory = pinned RAM, device = on the GPU

Writes ``--num`` random pairs (HR ``--hr-size``, LR = its 2x2 mean, float32) to one .npz and packs them with
``pack_to_shards`` (split 1,0,0: every pair is in train). Then, for every micro-batch size of ``--batches``,
times ``next(stream)`` of the REAL training stream (``hpc_sr.data.streams.make_train_stream``, the object the
trainer draws from: aligned random crops of ``--patch`` LR pixels and the 8 flips/rotations) for each
``data.options.loader``: ``item`` and ``block`` (DataLoader, ``--workers`` workers, per-item crops),
``memory`` (the batched :class:`~hpc_sr.data.memory_stream.MemoryStream` as the trainer builds it: chunks of
``CHUNK_SAMPLES`` samples, on CPU the 4-orientation split and one row gather per chunk) and ``device`` (the
split on the training device; on CPU the same as memory). ``--one-copy-rows`` adds ``memory 1-copy`` (the
same chunked stream with one copy of the split and the per-pixel gather: what chunking alone gives);
``--page-ablation`` adds ``memory 4K-pages`` (the 4-orientation split on ordinary pages instead of
transparent huge pages). Baselines: ``v1 whole`` is the v1-style in-memory read (a DataLoader over
``InMemoryShardDataset``, whole images, per-item ``__getitem__`` + collate, no augmentation) and ``v1 per-item
crop`` the same with per-item crop + augment.

Gather alternatives (``alt:*``, measured here so that hpc_sr/data/augment.py can adopt the fastest): every one
does what the v2.0 ``MemoryStream.__next__`` did per micro-batch (seed a generator, draw crops and transforms,
gather LR and HR from the resident split) with a different gather: ``alt:current`` (``crop_and_augment``),
``alt:int32-maps`` (cached int32 offset maps of the 8 transforms, one flat ``index_select``), ``alt:strided``
(window views ``as_strided`` + ``index_select`` along dim 0, then transposes and flips on the subsets that
need them), ``alt:rows-2copies`` (:class:`RowGather`: whole-row copies from the split and a copy of it rotated
by 180 degrees, 2x memory), ``alt:crop-only`` (the strided gather without augmentation: the lower bound of any
gather) and ``alt:draw-only`` (seed + draw, no gather: the fixed cost per micro-batch). Each alternative's
output is compared with ``crop_and_augment`` first (all but crop-only must give the same pixels in the same
order). ``alt:current`` is also the v2.0 memory stream's work per micro-batch (seed, draw, one per-pixel
gather), so ``memory_vs_per_batch`` (memory / alt:current) is the before/after ratio.

All tasks take turns in ``--rounds`` rounds of ``--window``-second windows (tools.bench_common.round_robin,
the order rotating each round); a figure is the median over its windows; ratios are taken within the run
(``ratio_v1``: vs ``v1 whole`` of the same batch size). With ``--workers`` > 0 the DataLoader workers keep
prefetching between windows, so those rows read high. ``CPU share`` = this process's CPU time / wall time in
a row's windows (how much of a core the shared machine gave it) and ``pairs/CPU-s`` = pairs per CPU-second
(the rate on a core of its own, for work that does not wait on I/O); the target is checked on both.
Prints a table and one JSON line (also ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.config import load_config  # noqa: E402
from hpc_sr.data.augment import N_DIHEDRAL, crop_and_augment, draw  # noqa: E402
from hpc_sr.data.dataset import InMemoryShardDataset  # noqa: E402
from hpc_sr.data.memory_stream import CHUNK_SAMPLES, MemoryStream  # noqa: E402
from hpc_sr.data.shards import pack_to_shards  # noqa: E402
from hpc_sr.data.streams import batch_seed, make_train_stream  # noqa: E402
from hpc_sr.dist.env import DistEnv  # noqa: E402
from tools.bench_common import (  # noqa: E402
    machine_info,
    median,
    print_table,
    report,
    require_device,
    round_robin,
    rounded,
    spread,
    sync,
)

LOADERS = ("item", "block", "memory", "device")
ALTERNATIVES = ("current", "int32-maps", "strided", "rows-2copies", "crop-only", "draw-only")


# ----------------------------------------------------------------------------------------------- data
def write_shards(work: Path, num: int, hr_size: int, shard_size: int, seed: int) -> Path:
    """``num`` random pairs (LR = 2x2 mean of HR) packed as shards, all in the train split."""
    rng = np.random.default_rng(seed)
    hr = rng.random((num, 1, hr_size, hr_size), dtype=np.float32)
    h = hr_size // 2
    lr = hr.reshape(num, 1, h, 2, h, 2).mean((3, 5), dtype=np.float32)
    np.savez(work / "pairs.npz", hr=hr, lr=lr)
    del hr, lr
    out = work / "shards"
    pack_to_shards("npz", work / "pairs.npz", out, shard_size=shard_size, split=(1.0, 0.0, 0.0))
    (work / "pairs.npz").unlink()
    return out


def data_overrides(path: Path, loader: str, batch: int, patch: int, workers: int, block: int) -> list[str]:
    return [f"data.path={path}", f"data.options.loader={loader}", f"data.batch_size={batch}",
            f"data.patch_size={patch}", "data.augment=true", f"data.options.num_workers={workers}",
            f"data.options.block_size={block}"]  # fmt: skip


def stream_task(stream: Any, micro: int, device: torch.device) -> Callable[[], int]:
    def run() -> int:
        lr, hr = next(stream)
        sync(device)
        return int(lr.shape[0])

    return run


def v1_task(ds: Any, batch: int, device: torch.device) -> Callable[[], int]:
    """v1-style read: a DataLoader over the in-memory dataset (per-item getitem + collate), endless."""
    state: dict[str, Any] = {"it": None}

    def run() -> int:
        if state["it"] is None:
            state["it"] = iter(DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=0))
        try:
            lr, hr = next(state["it"])
        except StopIteration:
            state["it"] = None
            return run()
        lr, hr = lr.to(device), hr.to(device)
        sync(device)
        return int(lr.shape[0])

    return run


class CpuClock:
    """Wraps a task: counts its items, wall time and this process's CPU time (``time.process_time``), so a
    row also says how much of a core the shared machine gave it (``share``) and its rate per CPU-second.

    Each call runs the task ``repeat`` times between two clock reads: ``process_time`` costs ~1.5 us here,
    which at batch 16 (~80 us a micro-batch) would be billed to the stream it measures.
    """

    def __init__(self, fn: Callable[[], int], repeat: int = 1) -> None:
        self.fn, self.repeat, self.items, self.cpu_s, self.wall_s = fn, max(1, repeat), 0, 0.0, 0.0

    def __call__(self) -> int:
        c0, w0 = time.process_time(), time.perf_counter()
        n = 0
        for _ in range(self.repeat):
            n += self.fn()
        self.cpu_s += time.process_time() - c0
        self.wall_s += time.perf_counter() - w0
        self.items += n
        return n

    @property
    def share(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan")


# ----------------------------------------------------------------------------------------------- gathers
def dihedral(x: Tensor, e: int) -> Tensor:
    """Transform ``e`` = 2k + flip of augment.py's convention: rot90 k times on the last two dims, then a
    left-right flip."""
    y = torch.rot90(x, e // 2, dims=(-2, -1))
    return y.flip(-1) if e % 2 else y


@lru_cache(maxsize=64)
def offset_maps(ph: int, pw: int, width: int, device: str) -> Tensor:
    """(8, ph*pw) int32 flat offsets (row * width + col, in an image ``width`` wide) of each transform of a
    ph x pw window, relative to the window's top-left corner."""
    off = (torch.arange(ph).view(ph, 1) * width + torch.arange(pw).view(1, pw)).to(torch.int32)
    return torch.stack([dihedral(off, e).reshape(-1) for e in range(N_DIHEDRAL)]).to(device)


def gather_int32(img: Tensor, index: Tensor, y: Tensor, x: Tensor, e: Tensor, ph: int, pw: int) -> Tensor:
    """One flat index_select with int32 offsets: cached transform maps + per-sample base offsets."""
    n, (_, c, h, w) = index.shape[0], img.shape
    if c != 1 or img.numel() >= 2**31:
        raise ValueError("int32 maps: one channel and < 2**31 elements")
    base = (index * (h * w) + y * w + x).to(torch.int32)
    off = offset_maps(ph, pw, w, str(img.device)).index_select(0, e)
    off += base.view(n, 1)
    return img.reshape(-1).index_select(0, off.view(-1)).view(n, 1, ph, pw)


@lru_cache(maxsize=1)
def flip_table() -> Tensor:
    """(8, 3) {0,1}: transform e = [transpose] then [flip rows] then [flip cols], found by trying them."""
    probe = torch.arange(9.0).view(3, 3)

    def apply(a: int, b: int, c: int) -> Tensor:
        t = probe.t() if a else probe
        t = t.flip(0) if b else t
        return t.flip(1) if c else t

    combos = list(itertools.product((0, 1), repeat=3))
    return torch.tensor([next(abc for abc in combos if torch.equal(apply(*abc), dihedral(probe, e)))
                         for e in range(N_DIHEDRAL)])  # fmt: skip


def gather_strided(
    img: Tensor, index: Tensor, y: Tensor, x: Tensor, e: Tensor, ph: int, pw: int, augment: bool = True
) -> Tensor:
    """Windows as rows of an ``as_strided`` view (index_select along dim 0 copies whole rows), then the
    transposes and flips applied to the samples that need them."""
    n, (_, c, h, w) = index.shape[0], img.shape
    if c != 1:
        raise ValueError("strided gather: one channel")
    flat = img.reshape(-1)
    base = index * (h * w) + y * w + x
    length = flat.numel() - (ph - 1) * w - (pw - 1)
    plain = flat.as_strided((length, ph, pw), (1, w, 1))
    if not augment:
        return plain.index_select(0, base).view(n, 1, ph, pw)
    abc = flip_table().to(e.device)[e]  # (n, 3)
    out = torch.empty(n, ph, pw, dtype=img.dtype, device=img.device)
    t_sel = abc[:, 0].nonzero().view(-1)
    p_sel = (abc[:, 0] == 0).nonzero().view(-1)
    out.index_copy_(0, p_sel, plain.index_select(0, base[p_sel]))
    if t_sel.numel():
        transposed = flat.as_strided((length, pw, ph), (1, 1, w))
        out.index_copy_(0, t_sel, transposed.index_select(0, base[t_sel]))
    for col, dim in ((1, 1), (2, 2)):
        sel = abc[:, col].nonzero().view(-1)
        if sel.numel():
            out.index_copy_(0, sel, out.index_select(0, sel).flip(dim))
    return out.view(n, 1, ph, pw)


class RowGather:
    """Row-level gathers from the split and a copy of it rotated by 180 degrees (2x the split's memory).

    Every transform is (copy A or rotated B) x (window rows, or window columns as rows) x (rows in order or
    reversed): 8 combinations, the 8 dihedral transforms (a mirrored copy would give only 6: reading a column
    bottom-up needs the rotated one). So a micro-batch is two ``index_select`` calls that
    copy whole rows (one for the samples taken as rows, one for those taken as columns: the samples are
    ordered by that, then put back in their order), with one int64 offset per output row, not per pixel.
    """

    def __init__(self, img: Tensor) -> None:
        n, c, h, w = img.shape
        if c != 1 or h != w:
            raise ValueError("row gather: one channel, square images")
        self.n, self.h, self.w = n, h, w
        self.both = torch.cat([img, img.flip(-2, -1)]).reshape(-1)  # A, then B = A rotated by 180 degrees

    @lru_cache(maxsize=8)  # noqa: B019 - a few window sizes per instance
    def tables(self, p: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per transform e: rotated copy (0/1), columns-as-rows (0/1), and the (8, p) row offsets."""
        w, probe = self.w, torch.arange(float(p * p)).view(p, p)
        copy, cols, offs = [], [], []
        for e in range(N_DIHEDRAL):
            want = dihedral(probe, e)
            for b, t, v in itertools.product((0, 1), repeat=3):
                win = probe.flip(0, 1) if b else probe
                win = win.t() if t else win
                if torch.equal(win.flip(0) if v else win, want):
                    f = torch.arange(p - 1, -1, -1) if v else torch.arange(p)
                    copy.append(b), cols.append(t), offs.append(f if t else f * w)
                    break
        dev = self.both.device
        return torch.tensor(copy, device=dev), torch.tensor(cols, device=dev), torch.stack(offs).to(dev)

    def __call__(self, index: Tensor, y: Tensor, x: Tensor, e: Tensor, p: int) -> Tensor:
        n, h, w = index.shape[0], self.h, self.w
        copy, cols, offs = self.tables(p)
        b, t = copy[e], cols[e]
        ys, xs = torch.where(b == 1, h - p - y, y), torch.where(b == 1, w - p - x, x)
        base = (b * self.n + index) * (h * w) + ys * w + xs
        order = torch.argsort(t, stable=True)
        n_rows = n - int(t.sum())
        rows = (offs[e] + base.view(n, 1))[order].view(-1)
        size = self.both.numel()
        out = torch.empty(n * p, p, dtype=self.both.dtype, device=self.both.device)
        if n_rows:
            row_view = self.both.as_strided((size - (p - 1), p), (1, 1))
            torch.index_select(row_view, 0, rows[: n_rows * p], out=out[: n_rows * p])
        if n_rows < n:
            col_view = self.both.as_strided((size - (p - 1) * w, p), (1, w))
            torch.index_select(col_view, 0, rows[n_rows * p :], out=out[n_rows * p :])
        back = torch.empty_like(order)
        back[order] = torch.arange(n, device=order.device)
        return out.view(n, p * p).index_select(0, back).view(n, 1, p, p)


class Gatherer:
    """One micro-batch's LR and HR patches from the resident split with gather ``kind`` (see ALTERNATIVES)."""

    def __init__(self, kind: str, lr: Tensor, hr: Tensor, patch: int, scale: int) -> None:
        self.kind, self.lr, self.hr, self.patch, self.scale = kind, lr, hr, patch, scale
        if kind == "rows-2copies":
            self.rows = (RowGather(lr), RowGather(hr))

    @property
    def augment(self) -> bool:
        return self.kind not in ("crop-only", "draw-only")

    def __call__(self, index: Tensor, d: Any) -> tuple[Tensor, Tensor] | None:
        k, s, p, lr, hr = self.kind, self.scale, self.patch, self.lr, self.hr
        if k == "current":
            return crop_and_augment(lr, hr, d, p, s, index=index)
        if k == "draw-only":
            return None
        y, x, e = d.y.to(lr.device), d.x.to(lr.device), d.e.to(lr.device)
        if k == "int32-maps":
            return (gather_int32(lr, index, y, x, e, p, p),
                    gather_int32(hr, index, y * s, x * s, e, p * s, p * s))  # fmt: skip
        if k == "rows-2copies":
            return self.rows[0](index, y, x, e, p), self.rows[1](index, y * s, x * s, e, p * s)
        aug = k == "strided"
        return (gather_strided(lr, index, y, x, e, p, p, aug),
                gather_strided(hr, index, y * s, x * s, e, p * s, p * s, aug))  # fmt: skip


def alt_task(gather: Gatherer, micro: int, device: torch.device) -> Callable[[], int]:
    """A MemoryStream-equivalent micro-batch (seed a generator, draw, gather LR + HR) with ``gather``."""
    state = {"p": 0}
    n = gather.lr.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(gather.lr.device)

    def run() -> int:
        p = state["p"] = (state["p"] + 1) % (n // micro)
        index = order[p * micro : (p + 1) * micro]
        g = torch.Generator().manual_seed(batch_seed(0, 0, 0, p))
        gather(index, draw(micro, tuple(gather.lr.shape[-2:]), gather.patch, gather.augment, g))
        sync(device)
        return micro

    return run


def check_alternatives(lr: Tensor, hr: Tensor, patch: int, scale: int) -> dict[str, bool]:
    """Every alternative gives exactly crop_and_augment's pixels (crop-only: with the identity transform)."""
    g = torch.Generator().manual_seed(123)
    m = min(64, lr.shape[0])
    index = torch.randperm(lr.shape[0], generator=g)[:m].to(lr.device)
    ok: dict[str, bool] = {}
    for kind in ALTERNATIVES:
        gather = Gatherer(kind, lr, hr, patch, scale)
        d = draw(m, tuple(lr.shape[-2:]), patch, gather.augment, g)
        got = gather(index, d)
        if got is None:
            continue
        want = crop_and_augment(lr, hr, d, patch, scale, index=index)
        ok[kind] = bool(torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]))
    return ok


# ----------------------------------------------------------------------------------------------- main
def bench(a: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=a.tmp))
    tasks: dict[str, Callable[[], int]] = {}
    setup_s: dict[str, float] = {}
    meta: dict[str, dict[str, Any]] = {}
    try:
        t0 = time.perf_counter()
        path = write_shards(work, a.num, a.hr_size, a.shard_size, a.seed)
        pack_s = time.perf_counter() - t0
        env = DistEnv()
        resident = None
        t0 = time.perf_counter()
        whole = InMemoryShardDataset(path, "train")  # v1 baselines: one copy each, all batch sizes
        setup_s["v1 whole"] = time.perf_counter() - t0
        per_item = InMemoryShardDataset(path, "train", patch_size=a.patch, augment=True, seed=a.seed)
        for b in batches:
            for loader in LOADERS:
                if loader == "device" and device.type == "cpu" and not a.cpu_device_rows:
                    continue  # = memory on CPU; --cpu-device-rows times it anyway
                t0 = time.perf_counter()
                cfg = load_config(None, data_overrides(path, loader, b, a.patch, a.workers, a.block_size))
                stream = make_train_stream(cfg.data, a.seed, env, device, b)
                setup_s[f"{loader}|{b}"] = time.perf_counter() - t0
                tasks[f"{loader}|{b}"] = stream_task(stream, b, device)
                meta[f"{loader}|{b}"] = {"reader": loader, "kind": "stream", "workers": a.workers
                                         if loader in ("item", "block") else 0}  # fmt: skip
                if loader == "memory" and resident is None:
                    resident = (stream.lr, stream.hr)
                variants = {"memory 1-copy": {"copies": False}, "memory 4K-pages": {"huge_pages": False}}
                wanted = {"memory 1-copy": a.one_copy_rows, "memory 4K-pages": a.page_ablation}
                for reader, kw in variants.items():
                    if loader != "memory" or not wanted[reader]:
                        continue
                    key = f"{reader}|{b}"
                    t0 = time.perf_counter()
                    tasks[key] = stream_task(MemoryStream(cfg.data, a.seed, env, device, b, **kw), b, device)
                    setup_s[key] = time.perf_counter() - t0
                    meta[key] = {"reader": reader, "kind": "stream", "workers": 0}
            tasks[f"v1 whole|{b}"] = v1_task(whole, b, device)
            tasks[f"v1 per-item crop|{b}"] = v1_task(per_item, b, device)
            meta[f"v1 whole|{b}"] = {"reader": "v1 whole", "kind": "baseline", "workers": 0}
            meta[f"v1 per-item crop|{b}"] = {"reader": "v1 per-item crop", "kind": "baseline", "workers": 0}
        checks: dict[str, bool] = {}
        if resident is not None and not a.no_alternatives:
            lr, hr = resident
            if device.type == "cuda":  # the alternatives gather where the split lives: on the GPU here
                lr, hr = lr.to(device), hr.to(device)
            checks = check_alternatives(lr, hr, a.patch, 2)
            gathers = {kind: Gatherer(kind, lr, hr, a.patch, 2) for kind in ALTERNATIVES}
            for b in batches:
                for kind, gather in gathers.items():
                    tasks[f"alt:{kind}|{b}"] = alt_task(gather, b, device)
                    meta[f"alt:{kind}|{b}"] = {"reader": f"alt:{kind}", "kind": "alternative", "workers": 0}
        for fn in tasks.values():  # warm-up: first DataLoader iterators, caches
            fn()
        # one clocked call ~ one gathered chunk (CHUNK_SAMPLES pairs) of every task, whatever its batch
        clocked = {k: CpuClock(fn, CHUNK_SAMPLES // int(k.rsplit("|", 1)[1])) for k, fn in tasks.items()}
        rates = round_robin(clocked, a.rounds, a.window)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for key, r in rates.items():
        reader, b = key.rsplit("|", 1)
        base = median(rates[f"v1 whole|{b}"])
        mem = median(rates[f"memory|{b}"]) if f"memory|{b}" in rates else float("nan")
        rows.append({**meta[key], "batch": int(b), "pairs_per_s": rounded(median(r), 1),
                     "spread": rounded(spread(r), 2), "windows": len(r),
                     "ratio_v1": rounded(median(r) / base, 3), "ratio_memory": rounded(median(r) / mem, 3),
                     "cpu_share": rounded(clocked[key].share, 2),
                     "pairs_per_cpu_s": rounded(clocked[key].items / max(clocked[key].cpu_s, 1e-9), 1),
                     "setup_s": rounded(setup_s.get(key, setup_s.get(reader, float("nan"))), 2)})  # fmt: skip
    rows.sort(key=lambda r: (r["batch"], ["stream", "baseline", "alternative"].index(r["kind"])))
    streams = [r for r in rows if r["kind"] == "stream"]
    best = {b: max((r for r in streams if r["batch"] == b), key=lambda r: r["pairs_per_s"]) for b in batches}
    memory = {r["batch"]: r["pairs_per_s"] for r in streams if r["reader"] == "memory"}
    memory_cpu = {r["batch"]: r["pairs_per_cpu_s"] for r in streams if r["reader"] == "memory"}
    per_batch = {r["batch"]: r for r in rows if r["reader"] == "alt:current"}
    return {
        "bench": "loader",
        "device": str(device),
        "machine": machine_info(device),
        "sizes": {"num": a.num, "hr_size": a.hr_size, "lr_patch": a.patch, "hr_patch": 2 * a.patch,
                  "batches": batches, "workers": a.workers, "block_size": a.block_size,
                  "shard_size": a.shard_size, "threads": a.threads},  # fmt: skip
        "timing": {"rounds": a.rounds, "window_s": a.window, "pack_s": rounded(pack_s, 2)},
        "alternatives_match_current": checks,
        "target_pairs_per_s": a.target,
        "memory_meets_target": {b: memory.get(b, 0.0) >= a.target for b in batches},
        "memory_meets_target_per_cpu_s": {b: memory_cpu.get(b, 0.0) >= a.target for b in batches},
        "memory_vs_per_batch": {b: rounded(memory[b] / per_batch[b]["pairs_per_s"], 2)
                                for b in batches if b in memory and b in per_batch},
        "memory_vs_per_batch_cpu_s": {b: rounded(memory_cpu[b] / per_batch[b]["pairs_per_cpu_s"], 2)
                                      for b in batches if b in memory_cpu and b in per_batch},
        "best_stream": {b: r["reader"] for b, r in best.items()},
        "rows": rows,
    }  # fmt: skip


def print_report(res: dict[str, Any]) -> None:
    m, s = res["machine"], res["sizes"]
    print(
        f"\n{m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, {m.get('gpu', res['device'])}, "
        f"{s['threads']} thread(s), load average {m['load_avg_1m']}, {m['date']}"
    )
    print(f"{s['num']} pairs HR {s['hr_size']} px, LR patch {s['lr_patch']} (HR {s['hr_patch']}) + 8 "
          f"flips/rot; medians of {res['timing']['rounds']} interleaved {res['timing']['window_s']} s "
          "windows; ratio v1 = vs v1 whole-image in-memory read, same batch")  # fmt: skip
    print_table(res["rows"], [
        ("batch", "batch", "d"), ("reader", "reader", ""), ("workers", "workers", "d"),
        ("pairs_per_s", "pairs/s", ",.0f"), ("ratio_v1", "ratio v1", ".2f"),
        ("ratio_memory", "ratio memory", ".2f"), ("spread", "spread", ".2f"),
        ("cpu_share", "CPU share", ".2f"), ("pairs_per_cpu_s", "pairs/CPU-s", ",.0f"),
        ("setup_s", "setup s", ".2f"),
    ])  # fmt: skip
    print(f"alternatives give the same pixels as crop_and_augment: {res['alternatives_match_current']}")
    print(
        f"memory >= {res['target_pairs_per_s']:,} pairs/s: {res['memory_meets_target']}; per CPU-s: "
        f"{res['memory_meets_target_per_cpu_s']}"
    )
    print(f"memory / v2.0 per-micro-batch gather (alt:current), wall: {res['memory_vs_per_batch']}; "
          f"per CPU-s: {res['memory_vs_per_batch_cpu_s']}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--num", type=int, default=2000, help="pairs in the train split")
    ap.add_argument("--hr-size", type=int, default=150)
    ap.add_argument("--patch", type=int, default=24, help="LR patch side")
    ap.add_argument("--batches", default="16,32,64", help="micro-batch sizes, comma separated")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of item/block")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=0.5, help="seconds per timing window")
    ap.add_argument("--target", type=float, default=200_000.0, help="pairs/s per process to meet (memory)")
    ap.add_argument("--no-alternatives", action="store_true", help="skip the alt:* gather rows")
    ap.add_argument("--cpu-device-rows", action="store_true", help="time loader=device on CPU too (= memory)")
    ap.add_argument("--one-copy-rows", action="store_true", help="also time the chunked stream with one copy")
    ap.add_argument("--page-ablation", action="store_true",
                    help="also time the memory stream with its split on 4 KiB pages (no huge pages)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="work folder (default: a new temp folder, removed after)")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    require_device(a.device)
    return report(bench(a), print_report, a.out)


if __name__ == "__main__":
    main()
