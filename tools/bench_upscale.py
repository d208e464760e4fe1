"""Survey inference throughput: cutouts per second of `hpc-sr upscale` (hpc_sr.apps.inference).

    python tools/bench_upscale.py                                    # 256 cutouts 75x75, deeplense-small, CPU
    python tools/bench_upscale.py --device cuda --num 20000 --batches 16,64,256 --out upscale.json

In-process rows: each call is a whole run of the engine (:func:`hpc_sr.apps.inference.runner.execute`, as
`hpc-sr upscale` runs it) into a new folder of its own (new output files, as a survey's run writes them; the
folders are removed between the timing windows), timed in interleaved windows
(tools.bench_common.round_robin):

- ``files``: ``--num`` .npy files of one cutout each (one unit per file);
- ``stack b=B``: one .npy of ``--num`` cutouts, for every batch size B of ``--batches``;
- ``catalog``: one HDF5 file of ``--num`` cutouts (when the hdf5 format is registered; skipped otherwise);
- ``onnx``: the stack through the engine's ONNX Runtime engine (``--engine onnx``: the generator exported once
  into a cache in the work folder, then run by onnxruntime; skipped when the engine cannot run);
- ``io only`` / ``catalog io only``: the stack / the HDF5 catalog with the generator replaced by a
  nearest-neighbour x2 (no compute): reading, normalising, writing, hashing and the ledger alone;
- ``fits io only`` / ``fits io only, durability=file``: ``--num`` FITS files of one cutout each (a TAN WCS and
  ~30 cards, as archive cutouts come), the same nearest-neighbour x2, outputs made durable a batch of units at
  a time (the default) / one file at a time (each output fsynced and renamed, each ledger record fsynced, on
  its own): the A/B of :mod:`hpc_sr.apps.inference.publish` within one run (``durability_ratio``: batch over
  file; skipped without astropy);
- ``resident b=B`` / ``resident onnx b=B``: the same model's forward alone (torch / the onnx engine's session)
  on in-memory batches of B cutouts made before timing (ceil(num / B) batches, as the engine pads the last):
  what the model path could reach. ``of resident`` is each engine row over the resident row of its engine and
  batch size: the target "model path >= 80 % of the resident forward" read from one run.

``--io-only``: the I/O rows alone (no model is loaded, no process rows), ratios against ``io only``:

    python tools/bench_upscale.py --io-only --num 1000 --rounds 5     # FITS batch vs file durability, one run

``--procs-only``: the process rows alone, at a size where start-up is amortised (``of 2 processes``: the
2-rank job over the two independent processes, wall and steady; the target is >= 0.9):

    python tools/bench_upscale.py --procs-only --num 400 --proc-rounds 2

``--memory``: peak memory against the catalog's length: the identity-model (nearest x2) catalog path run in a
fresh process on an HDF5 catalog of each of ``--memory-rows`` rows (``--memory-side`` pixels a side; the
catalogs are written first); each child's peak RSS (``ru_maxrss`` of that child, from ``wait4``), its RSS
just before the run (imports done) and the ratios of the peaks to the first size's (the target: 100k rows
within 1.2x of 10k):

    python tools/bench_upscale.py --memory                            # 10k and 100k rows of 16 x 16

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
import json
import os
import resource
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
    """``files/`` (one cutout per .npy), ``stack.npy``, ``fits/`` (one cutout per FITS file, with astropy)
    and, when asked, ``catalog.h5`` of the same cutouts."""
    rng = np.random.default_rng(seed)
    cutouts = rng.random((num, side, side), dtype=np.float32)
    (work / "files").mkdir(parents=True)
    for i, c in enumerate(cutouts):
        np.save(work / "files" / f"c{i:06d}.npy", c)
    np.save(work / "stack.npy", cutouts)
    paths = {"files": work / "files", "stack": work / "stack.npy"}
    if fits_cutouts(work / "fits", cutouts):
        paths["fits"] = work / "fits"
    if catalog:
        import h5py

        with h5py.File(work / "catalog.h5", "w") as f:
            f.create_dataset("images", data=cutouts, chunks=(1, side, side))
        paths["catalog"] = work / "catalog.h5"
    return paths


FITS_CARDS = {
    "TELESCOP": "HST", "INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER": "F814W", "OBJECT": "lens candidate",
    "EXPTIME": 2028.0, "DATE-OBS": "2019-03-04", "MJD-OBS": 58546.25, "PHOTFLAM": 7.0723e-20,
    "PHOTZPT": -21.1, "PHOTPLAM": 8045.0, "ORIGIN": "bench_upscale", "EQUINOX": 2000.0, "RADESYS": "ICRS",
    "BUNIT": "ELECTRONS/S", "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.1, "CRVAL2": 2.2,
    "CUNIT1": "deg", "CUNIT2": "deg", "CD1_1": -1.4e-5, "CD1_2": 2e-7, "CD2_1": 1e-7, "CD2_2": 1.4e-5,
}  # fmt: skip


def fits_cutouts(folder: Path, cutouts: np.ndarray) -> bool:
    """One FITS file per cutout (a TAN WCS and ~30 cards) under ``folder``; False without astropy."""
    try:
        from astropy.io import fits
    except ImportError:
        return False
    folder.mkdir(parents=True)
    for i, c in enumerate(cutouts):
        hdu = fits.PrimaryHDU(c)
        for key, value in FITS_CARDS.items():
            hdu.header[key] = value
        hdu.header["CRPIX1"] = hdu.header["CRPIX2"] = c.shape[0] / 2
        hdu.header["RA_OBJ"], hdu.header["DEC_OBJ"] = 150.1 + 1e-4 * i, 2.2
        hdu.writeto(folder / f"c{i:06d}.fits")
    return True


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
    """One whole run per call into a new folder under ``out`` (``out/<n>``: new files, as a survey's run
    writes them; renaming onto the outputs of an earlier run costs ext4 the old files' blocks); returns the
    cutouts upscaled. :func:`remove_done` removes the folders of earlier calls between timing windows."""
    calls = [0]

    def task() -> int:
        calls[0] += 1
        result = execute(model, None, [str(src)], out / str(calls[0]), opts, overwrite=True, progress=False)
        if result.status != 0:
            raise RuntimeError(f"{src}: run ended with status {result.status}")
        if opts.device.startswith("cuda"):
            torch.cuda.synchronize()
        return num

    return task


def remove_done(work: Path) -> None:
    """The output folders of the engine rows' runs so far (outside the timed windows)."""
    for out in work.glob("o_*"):
        shutil.rmtree(out, ignore_errors=True)


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
    pair = {
        "wall": median(walls["2 ranks"]) / median(walls["2 processes"]),
        "steady": median(steady["2 ranks"]) / median(steady["2 processes"]),
    }
    for r in rows:
        r["ratio"] = rounded((r["cutouts_per_s"] or float("nan")) / ref, 3)
        if r["config"] == "2 ranks":  # the target: >= 0.9 of two independent processes, wall and steady
            r["of_2_processes"] = rounded(pair["wall"], 3)
            r["steady_of_2_processes"] = rounded(pair["steady"], 3)
    return rows


def bench(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model, payload = (None, {}) if a.io_only else load_generator(a.checkpoint)
    if model is not None:
        model.to(device).eval()
    scale = int(model.scale) if model is not None else 2
    batches = [int(b) for b in a.batches.split(",")]
    work = Path(a.tmp) if a.tmp else Path(tempfile.mkdtemp(prefix="bench_upscale_"))
    work.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    try:
        has_catalog = "hdf5" in FORMATS.names()
        if not has_catalog:
            errors["catalog"] = "skipped: no hdf5 format registered"
        paths = write_inputs(work, a.num, a.side, a.seed, has_catalog)
        if "fits" not in paths:
            errors["fits"] = "skipped: no astropy"

        def opts(batch: int, **kw: Any) -> InferenceOptions:
            return InferenceOptions(scale=scale, batch_size=batch, device=a.device, **kw)

        b0 = batches[0]
        if a.procs_only:  # the process rows alone: a size where start-up is amortised, no in-process rows
            procs = process_rows(a, paths["files"], work, a.num)
            return result_doc(a, device, model, batches, [], None, errors, procs)
        tasks: dict[str, Callable[[], int]] = {}
        resident_of: dict[str, str] = {}  # engine row -> the resident row it is compared with
        session = None
        if model is not None:
            tasks["files"] = engine_task(model, paths["files"], work / "o_files", opts(b0), a.num)
            resident_of["files"] = f"resident b={b0}"
            for b in batches:
                tasks[f"stack b={b}"] = engine_task(
                    model, paths["stack"], work / f"o_stack{b}", opts(b), a.num
                )
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
            except Exception as exc:  # noqa: BLE001 - no onnxruntime, an exporter failing: rows skipped
                errors["onnx"] = f"skipped: {type(exc).__name__}: {exc}"
        nearest = NearestX2(scale, "nearest")
        tasks["io only"] = engine_task(nearest, paths["stack"], work / "o_io", opts(b0), a.num)
        if has_catalog:
            tasks["catalog io only"] = engine_task(
                nearest, paths["catalog"], work / "o_cat_io", opts(b0), a.num
            )
        if "fits" in paths:
            for durability, name in (("batch", "fits io only"), ("file", "fits io only, durability=file")):
                run_opts = opts(b0, durability=durability)
                tasks[name] = engine_task(
                    nearest, paths["fits"], work / f"o_fits_{durability}", run_opts, a.num
                )
        if model is not None:
            for b in batches:
                tasks[f"resident b={b}"] = resident_task(model, a.num, b, a.side, device, a.seed)
            if session is not None:
                tasks[f"resident onnx b={b0}"] = resident_task(session, a.num, b0, a.side, device, a.seed)
        for task in tasks.values():  # warm-up: first-call costs (allocations, kernels, imports)
            task()
        remove_done(work)
        rates = round_robin(tasks, a.rounds, a.window, on_window=lambda: remove_done(work))
        rows = [
            {"config": k, "cutouts_per_s": rounded(median(v), 2), "spread": rounded(spread(v), 3)}
            for k, v in rates.items()
        ]
        ref = median(rates[f"stack b={b0}" if model is not None else "io only"])
        for r in rows:
            r["ratio"] = rounded(median(rates[r["config"]]) / ref, 3)
            if r["config"] in resident_of:
                r["of_resident"] = rounded(
                    median(rates[r["config"]]) / median(rates[resident_of[r["config"]]]), 3
                )
        durability_ratio = None
        if "fits" in paths:  # batch over file, window by window (the same round) and of the medians
            batch, file = rates["fits io only"], rates["fits io only, durability=file"]
            durability_ratio = {
                "of_medians": rounded(median(batch) / median(file), 3),
                "per_round": [rounded(x / y, 3) for x, y in zip(batch, file, strict=True)],
            }
        run_procs = a.proc_rounds > 0 and model is not None
        procs = process_rows(a, paths["files"], work, a.num) if run_procs else []
    finally:
        if not a.tmp:
            shutil.rmtree(work, ignore_errors=True)
    return result_doc(a, device, model, batches, rows, durability_ratio, errors, procs)


def result_doc(
    a: argparse.Namespace,
    device: torch.device,
    model: nn.Module | None,
    batches: list[int],
    rows: list[dict[str, Any]],
    durability_ratio: dict[str, Any] | None,
    errors: dict[str, str],
    procs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The JSON document of a run."""
    return {
        "bench": "upscale",
        "machine": machine_info(device),
        "device": str(device),
        "checkpoint": None if model is None else a.checkpoint,
        "sizes": {"num": a.num, "side": a.side, "batches": batches, "threads": a.threads},
        "timing": {"rounds": a.rounds, "window_s": a.window, "proc_rounds": a.proc_rounds},
        "rows": rows,
        "durability_ratio": durability_ratio,
        "process_rows": procs,
        "errors": errors,
    }


# ----------------------------------------------------------------------------------------------- memory
def write_catalog(path: Path, rows: int, side: int, seed: int, chunk: int = 8192) -> None:
    """An HDF5 catalog of ``rows`` cutouts ``side`` x ``side`` (float32) and their ``ids``, written a chunk of
    rows at a time."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (rows, side, side), np.float32)
        for lo in range(0, rows, chunk):
            hi = min(rows, lo + chunk)
            images[lo:hi] = rng.random((hi - lo, side, side), dtype=np.float32)
        f.create_dataset("ids", data=np.arange(rows, dtype=np.int64))


def rss_kib() -> int:
    """This process's resident set now, KiB (``VmRSS`` of /proc/self/status; 0 where there is none)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_child(catalog: str, out: str, batch: int) -> None:
    """One catalog run in this (fresh) process: the nearest x2 model over ``catalog`` into ``out``; prints
    one JSON line (rows, seconds, RSS before the run)."""
    torch.set_num_threads(1)
    before = rss_kib()
    opts = InferenceOptions(scale=2, batch_size=batch)
    t0 = time.perf_counter()
    result = execute(NearestX2(2, "nearest"), None, [catalog], out, opts, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    if result.status != 0:
        raise SystemExit(f"{catalog}: run ended with status {result.status}")
    rows = sum(int(r.get("images", 0)) for r in result.ledger.values())
    print(json.dumps({"rows": rows, "seconds": seconds, "rss_before_kib": before}))


def run_child(argv: list[str]) -> tuple[dict[str, Any], int]:
    """``argv`` in a fresh process: its JSON line and its peak RSS (KiB, ``wait4``: that child alone)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[-4:]}: status {proc.returncode}: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1]), int(usage.ru_maxrss)  # Linux: KiB


def memory_bench(a: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(n) for n in a.memory_rows.split(",")]
    work = Path(a.tmp) if a.tmp else Path(tempfile.mkdtemp(prefix="bench_upscale_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            catalog = work / f"catalog_{n}.h5"
            write_catalog(catalog, n, a.memory_side, a.seed)
            out = work / f"out_{n}"
            argv = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(catalog), str(out),
                    "--batch-size", str(a.batch_size)]  # fmt: skip
            doc, peak = run_child(argv)
            shutil.rmtree(out, ignore_errors=True)
            catalog.unlink()
            rows.append(
                {
                    "rows": n,
                    "peak_rss_mib": rounded(peak / 1024, 1),
                    "rss_before_mib": rounded(doc["rss_before_kib"] / 1024, 1),
                    "growth_mib": rounded((peak - doc["rss_before_kib"]) / 1024, 1),
                    "rows_per_s": rounded(doc["rows"] / doc["seconds"], 1),
                    "done_rows": doc["rows"],
                }
            )
    finally:
        if not a.tmp:
            shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        r["peak_ratio"] = rounded((r["peak_rss_mib"] or 0) / (rows[0]["peak_rss_mib"] or float("nan")), 3)
    return {
        "bench": "upscale memory",
        "machine": machine_info(torch.device("cpu")),
        "sizes": {
            "rows": sizes,
            "side": a.memory_side,
            "batch_size": a.batch_size,
            "catalog_rows": InferenceOptions().catalog_rows,
        },
        "rows": rows,
        "maxrss_self_mib": rounded(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def print_memory_report(res: dict[str, Any]) -> None:
    m, s = res["machine"], res["sizes"]
    print(f"\n{m['cpu']} ({m['cpus']} CPUs), load average {m['load_avg_1m']}, {m['date']}")
    print(f"HDF5 catalogs of {s['side']}x{s['side']} cutouts, nearest x2 model, batch {s['batch_size']}, "
          f"{s['catalog_rows']} rows per unit; one fresh process per catalog")  # fmt: skip
    print_table(
        res["rows"],
        [("rows", "rows", ",d"), ("peak_rss_mib", "peak RSS MiB", ",.1f"),
         ("rss_before_mib", "RSS before run MiB", ",.1f"), ("growth_mib", "growth MiB", ",.1f"),
         ("peak_ratio", "peak ratio", ".3f"), ("rows_per_s", "rows/s", ",.0f")],
    )  # fmt: skip


def print_report(res: dict[str, Any]) -> None:
    m, s = res["machine"], res["sizes"]
    print(
        f"\n{m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, {m.get('gpu', res['device'])}, "
        f"{s['threads']} thread(s), load average {m['load_avg_1m']}, {m['date']}"
    )
    ref = f"stack b={s['batches'][0]}" if res["checkpoint"] else "io only"
    what = res["checkpoint"] or "I/O rows only"
    print(f"{s['num']} cutouts {s['side']}x{s['side']}, {what}; in-process runs, "
          f"medians of {res['timing']['rounds']} interleaved windows; ratio vs {ref}")  # fmt: skip
    if res["rows"]:
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
             ("of_2_processes", "of 2 processes", ".2f"),
             ("steady_of_2_processes", "steady of 2 processes", ".2f"), ("spread", "spread", ".2f")],
        )  # fmt: skip
    ratio = res.get("durability_ratio")
    if ratio:
        print(f"fits io only, batch over file durability: {ratio['of_medians']:.2f}x (medians; per round "
              f"{', '.join(f'{x:.2f}' for x in ratio['per_round'])})")  # fmt: skip
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
    ap.add_argument("--io-only", action="store_true", help="the I/O rows alone (no model, no process rows)")
    ap.add_argument("--procs-only", action="store_true", help="the process rows alone (no in-process rows)")
    ap.add_argument("--memory", action="store_true", help="peak RSS of the catalog path against its length")
    ap.add_argument("--memory-rows", default="10000,100000", help="catalog lengths of --memory")
    ap.add_argument("--memory-side", type=int, default=16, help="cutout side of --memory's catalogs")
    ap.add_argument("--memory-child", nargs=2, metavar=("CATALOG", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child:
        memory_child(*a.memory_child, a.batch_size)
        return {}
    if a.memory:
        return report(memory_bench(a), print_memory_report, a.out)
    require_device(a.device)
    return report(bench(a), print_report, a.out)


if __name__ == "__main__":
    main()
