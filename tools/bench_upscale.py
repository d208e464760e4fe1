"""Survey inference throughput: cutouts per second of `hpc-sr upscale` (hpc_sr.apps.inference).

    python tools/bench_upscale.py                                    # 256 cutouts 75x75, deeplense-small, CPU
    python tools/bench_upscale.py --device cuda --num 20000 --batches 16,64,256 --out upscale.json

In-process rows: each call is a whole run of the engine (:func:`hpc_sr.apps.inference.runner.execute`, as
`hpc-sr upscale` runs it, ``overwrite``: every call redoes every unit) into its own folder, timed in
interleaved windows (tools.bench_common.round_robin):

- ``files``: ``--num`` .npy files of one cutout each (one unit per file);
- ``stack b=B``: one .npy of ``--num`` cutouts, for every batch size B of ``--batches``;
- ``catalog``: one HDF5 file of ``--num`` cutouts (when the hdf5 format is registered; skipped otherwise);
- ``onnx``: the stack through the engine's ONNX Runtime engine (``--engine onnx``: the generator exported once
  into a cache in the work folder, then run by onnxruntime; skipped when the engine cannot run);
- ``io only`` / ``catalog io only``: the stack / the HDF5 catalog with the generator replaced by a
  nearest-neighbour x2 (no compute): reading, normalising, writing, hashing and the ledger alone;
- ``resident b=B`` / ``resident onnx b=B``: the same model's forward alone (torch / the onnx engine's session)
  on in-memory batches of B cutouts made before timing (ceil(num / B) batches, as the engine pads the last):
  what the model path could reach. ``of resident`` is each engine row over the resident row of its engine and
  batch size: the target "model path >= 80 % of the resident forward" read from one run.

Process rows (``python -m hpc_sr upscale`` over the ``files`` folder, ``--proc-rounds`` times each): 1 rank;
2 ranks of one job (RANK / WORLD_SIZE, one ledger); two independent processes each on half of the files
(their own --out). ``wall`` counts start-up (imports, model load, planning); ``steady`` is the cutouts over
the span of the ledger's records (first to last, across ranks). Ratios are within the run: in-process rows
against ``stack`` at the first batch size (and ``of resident``), process rows against ``1 rank``. Prints a
table and one JSON line (also ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.apps.inference.formats import FORMATS, InferenceOptions  # noqa: E402
from hpc_sr.apps.inference.ledger import LEDGER_DIR, parse_lines  # noqa: E402
from hpc_sr.apps.inference.onnx_engine import OnnxGenerator, choose_engine  # noqa: E402
from hpc_sr.apps.inference.runner import execute  # noqa: E402
from hpc_sr.models.artifacts import load_generator  # noqa: E402
from tools.bench_common import (  # noqa: E402
    machine_info,
    median,
    print_table,
    report,
    require_device,
    round_robin,
    rounded,
    spread,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- models
class StandIn(nn.Module):
    """A module the engine can run: ``scale`` and one (unused) parameter that says where it lives."""

    def __init__(self, scale: int, arch: str) -> None:
        super().__init__()
        self.scale, self.arch = scale, arch
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)


class NearestX2(StandIn):
    """The generator replaced by nearest-neighbour upsampling: what the pipeline costs without a model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.scale, -1).repeat_interleave(self.scale, -2)


# ----------------------------------------------------------------------------------------------- data
def write_inputs(work: Path, num: int, side: int, seed: int, catalog: bool) -> dict[str, Path]:
    """``files/`` (one cutout per .npy), ``stack.npy`` and, when asked, ``catalog.h5`` of the same cutouts."""
    rng = np.random.default_rng(seed)
    cutouts = rng.random((num, side, side), dtype=np.float32)
    (work / "files").mkdir(parents=True)
    for i, c in enumerate(cutouts):
        np.save(work / "files" / f"c{i:06d}.npy", c)
    np.save(work / "stack.npy", cutouts)
    paths = {"files": work / "files", "stack": work / "stack.npy"}
    if catalog:
        import h5py

        with h5py.File(work / "catalog.h5", "w") as f:
            f.create_dataset("images", data=cutouts, chunks=(1, side, side))
        paths["catalog"] = work / "catalog.h5"
    return paths


# ----------------------------------------------------------------------------------------------- timing
def resident_task(
    net: nn.Module, num: int, batch: int, side: int, device: torch.device, seed: int
) -> Callable[[], int]:
    """The forward alone on in-memory batches: ceil(num / batch) batches of ``batch`` cutouts per call (on
    CUDA as the engine runs torch: channels_last, bf16 autocast)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, side, side, generator=gen).to(device)
    calls = -(-num // batch)
    cuda = device.type == "cuda" and not isinstance(net, OnnxGenerator)
    if cuda:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)

    def task() -> int:
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            for _ in range(calls):
                net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return num

    return task


def engine_task(
    model: nn.Module, src: Path, out: Path, opts: InferenceOptions, num: int
) -> Callable[[], int]:
    """One whole run (every unit redone) per call; returns the cutouts upscaled."""

    def task() -> int:
        result = execute(model, None, [str(src)], out, opts, overwrite=True, progress=False)
        if result.status != 0:
            raise RuntimeError(f"{src}: run ended with status {result.status}")
        if opts.device.startswith("cuda"):
            torch.cuda.synchronize()
        return num

    return task


def ledger_span(outs: list[Path]) -> tuple[int, float]:
    """(cutouts, seconds from the first record to the last) over the ledgers of ``outs``."""
    times, images = [], 0
    for out in outs:
        for path in (out / LEDGER_DIR).glob("rank_*.jsonl"):
            for rec in parse_lines(path.read_bytes()):
                times.append(float(rec["time"]))
                images += int(rec.get("images", 0))
    return images, (max(times) - min(times)) if len(times) > 1 else float("nan")


def process_rows(a: argparse.Namespace, files: Path, work: Path, num: int) -> list[dict[str, Any]]:
    """Wall and steady cutouts/s of 1 rank, a 2-rank job, and two independent processes on halves."""
    names = sorted(p.name for p in files.glob("*.npy"))
    halves = [work / "half0", work / "half1"]
    for half, part in zip(halves, (names[::2], names[1::2])):
        half.mkdir(exist_ok=True)
        for n in part:
            if not (half / n).exists():
                os.link(files / n, half / n)
    ckpt = str(Path(a.checkpoint).resolve()) if Path(a.checkpoint).exists() else a.checkpoint
    base = [sys.executable, "-m", "hpc_sr", "upscale", "--checkpoint", ckpt, "--device", a.device]
    base += ["--batch-size", str(a.batch_size), "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(a.threads)}
    configs: dict[str, list[tuple[dict[str, str], list[str], Path]]] = {
        "1 rank": [({}, [str(files)], work / "p1")],
        "2 ranks": [
            ({"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}, [str(files)], work / "p2")
            for r in (0, 1)
        ],
        "2 processes": [({}, [str(halves[r])], work / f"pi{r}") for r in (0, 1)],
    }
    rows = []
    walls: dict[str, list[float]] = {k: [] for k in configs}
    steady: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(a.proc_rounds):
        for name, procs in configs.items():
            t0 = time.perf_counter()
            running = [
                subprocess.Popen(
                    [*base, "--out", str(out), *inputs],
                    env={**env, **extra},
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for extra, inputs, out in procs
            ]
            errs = [p.communicate()[1] for p in running]
            wall = time.perf_counter() - t0
            bad = [e.decode()[-2000:] for p, e in zip(running, errs) if p.returncode != 0]
            if bad:
                raise RuntimeError(f"{name}: {bad[0]}")
            images, span = ledger_span(sorted({out for _, _, out in procs}))
            walls[name].append(num / wall)
            steady[name].append(images / span if span == span and span > 0 else float("nan"))
    for name in configs:
        rows.append(
            {
                "config": name,
                "cutouts_per_s": rounded(median(walls[name]), 2),
                "steady_per_s": rounded(median(steady[name]), 2),
                "spread": rounded(spread(walls[name]), 3),
            }
        )
    ref = rows[0]["cutouts_per_s"] or float("nan")
    for r in rows:
        r["ratio"] = rounded((r["cutouts_per_s"] or float("nan")) / ref, 3)
    return rows


def bench(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model, payload = load_generator(a.checkpoint)
    model.to(device).eval()
    scale = int(model.scale)
    batches = [int(b) for b in a.batches.split(",")]
    work = Path(a.tmp) if a.tmp else Path(tempfile.mkdtemp(prefix="bench_upscale_"))
    work.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    try:
        has_catalog = "hdf5" in FORMATS.names()
        if not has_catalog:
            errors["catalog"] = "skipped: no hdf5 format registered"
        paths = write_inputs(work, a.num, a.side, a.seed, has_catalog)

        def opts(batch: int) -> InferenceOptions:
            return InferenceOptions(scale=scale, batch_size=batch, device=a.device)

        b0 = batches[0]
        tasks: dict[str, Callable[[], int]] = {
            "files": engine_task(model, paths["files"], work / "o_files", opts(b0), a.num)
        }
        resident_of = {"files": f"resident b={b0}"}  # engine row -> the resident row it is compared with
        for b in batches:
            tasks[f"stack b={b}"] = engine_task(model, paths["stack"], work / f"o_stack{b}", opts(b), a.num)
            resident_of[f"stack b={b}"] = f"resident b={b}"
        if has_catalog:
            tasks["catalog"] = engine_task(model, paths["catalog"], work / "o_cat", opts(b0), a.num)
            resident_of["catalog"] = f"resident b={b0}"
        onnx = dataclasses.replace(opts(b0), engine="onnx", onnx_cache=str(work / "onnx_cache"))
        try:
            choose_engine(model, onnx)
            session = OnnxGenerator.for_model(model, payload, onnx)  # exports into the cache once
            tasks["onnx"] = engine_task(model, paths["stack"], work / "o_onnx", onnx, a.num)
            resident_of["onnx"] = f"resident onnx b={b0}"
        except Exception as exc:  # noqa: BLE001 - no onnxruntime, an exporter failing: the rows are skipped
            errors["onnx"] = f"skipped: {type(exc).__name__}: {exc}"
            session = None
        nearest = NearestX2(scale, "nearest")
        tasks["io only"] = engine_task(nearest, paths["stack"], work / "o_io", opts(b0), a.num)
        if has_catalog:
            tasks["catalog io only"] = engine_task(
                nearest, paths["catalog"], work / "o_cat_io", opts(b0), a.num
            )
        for b in batches:
            tasks[f"resident b={b}"] = resident_task(model, a.num, b, a.side, device, a.seed)
        if session is not None:
            tasks[f"resident onnx b={b0}"] = resident_task(session, a.num, b0, a.side, device, a.seed)
        for task in tasks.values():  # warm-up: first-call costs (allocations, kernels, imports)
            task()
        rates = round_robin(tasks, a.rounds, a.window)
        rows = [
            {"config": k, "cutouts_per_s": rounded(median(v), 2), "spread": rounded(spread(v), 3)}
            for k, v in rates.items()
        ]
        ref = median(rates[f"stack b={b0}"])
        for r in rows:
            r["ratio"] = rounded(median(rates[r["config"]]) / ref, 3)
            if r["config"] in resident_of:
                r["of_resident"] = rounded(
                    median(rates[r["config"]]) / median(rates[resident_of[r["config"]]]), 3
                )
        procs = process_rows(a, paths["files"], work, a.num) if a.proc_rounds > 0 else []
    finally:
        if not a.tmp:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "bench": "upscale",
        "machine": machine_info(device),
        "device": str(device),
        "checkpoint": a.checkpoint,
        "sizes": {"num": a.num, "side": a.side, "batches": batches, "threads": a.threads},
        "timing": {"rounds": a.rounds, "window_s": a.window, "proc_rounds": a.proc_rounds},
        "rows": rows,
        "process_rows": procs,
        "errors": errors,
    }


def print_report(res: dict[str, Any]) -> None:
    m, s = res["machine"], res["sizes"]
    print(
        f"\n{m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, {m.get('gpu', res['device'])}, "
        f"{s['threads']} thread(s), load average {m['load_avg_1m']}, {m['date']}"
    )
    print(f"{s['num']} cutouts {s['side']}x{s['side']}, {res['checkpoint']}; in-process runs, medians of "
          f"{res['timing']['rounds']} interleaved windows; ratio vs stack b={s['batches'][0]}")  # fmt: skip
    print_table(
        res["rows"],
        [("config", "config", ""), ("cutouts_per_s", "cutouts/s", ",.1f"), ("ratio", "ratio", ".2f"),
         ("of_resident", "of resident", ".2f"), ("spread", "spread", ".2f")],
    )  # fmt: skip
    if res["process_rows"]:
        print("\nprocesses (`python -m hpc_sr upscale` over the one-cutout files); ratio vs 1 rank (wall)")
        print_table(
            res["process_rows"],
            [("config", "config", ""), ("cutouts_per_s", "wall cutouts/s", ",.1f"),
             ("steady_per_s", "steady cutouts/s", ",.1f"), ("ratio", "ratio", ".2f"),
             ("spread", "spread", ".2f")],
        )  # fmt: skip
    for key, why in res["errors"].items():
        print(f"{key}: {why}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint", default="deeplense-small", help="any generator source load_generator takes"
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--num", type=int, default=256, help="cutouts")
    ap.add_argument("--side", type=int, default=75, help="LR side of a cutout")
    ap.add_argument("--batches", default="16,64", help="batch sizes of the stack rows, comma separated")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size of the process rows")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (per process)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=0.1, help="seconds per timing window (one run at least)")
    ap.add_argument("--proc-rounds", type=int, default=1, help="runs of each process row (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="work folder (default: a new temp folder, removed after)")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    require_device(a.device)
    return report(bench(a), print_report, a.out)


if __name__ == "__main__":
    main()
