"""Shared helpers of the bench_* scripts: machine facts, peak FLOPs, interleaved timing, peak memory, output.

The machines these benchmarks run on are shared and noisy, so figures are reported as ratios measured in one
run: :func:`round_robin` cycles through every configuration in short windows (the start rotates each round)
and the medians of the windows are compared.

Peak memory (:class:`PeakMemory`) is the memory a training step needs above what was resident before it:
on CUDA the allocator's ``max_memory_allocated`` minus ``memory_allocated`` at the start; on CPU the peak of
the process's resident set (``/proc/self/statm`` sampled every 0.5 ms by a thread, which runs while torch
kernels release the GIL) minus the resident set at the start. For the CPU figure to follow tensor lifetimes,
:func:`fix_malloc_thresholds` makes glibc serve every block >= 64 KiB with its own mmap and unmap it on free
(otherwise freed activations stay in the heap and the second step reuses them without growing RSS).
tracemalloc is no use here: it does not see torch's allocations.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

# Dense peak TFLOPs of known GPUs (vendor figures, SXM parts, no sparsity): {name fragment: {precision: TF}}.
# fp32 is plain fp32 on the CUDA cores; tf32 the tensor cores, which cuDNN uses for fp32 convolutions by
# default (torch.backends.cudnn.allow_tf32), so :func:`peak_tflops` takes tf32 for fp32 convolution nets then.
GPU_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


# ----------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU model name (lscpu's "Model name", else /proc/cpuinfo, else platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return _cpuinfo().get("model name", platform.processor() or "unknown")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict ({} when unreadable)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.split("\n\n")[0].splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Facts to print next to any figure: date, host, CPU model and cores, torch (and GPU) version."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other users of a shared machine: read figures with it
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def cpu_flops_per_cycle(flags: Iterable[str]) -> dict[str, int]:
    """Peak FLOPs per cycle per core by precision from the CPU flags.

    fp32: 2 FMA units x SIMD lanes x 2 (AVX-512: 16 lanes, AVX2+FMA: 8, else 4 lanes, no FMA). bf16:
    AMX (1024 bf16 FLOPs/cycle/core, what oneDNN uses for bf16 convolutions) when present, else AVX512_BF16
    (2x the fp32 rate), else the fp32 rate. Assumes two FMA ports, as on server Xeons (some parts have one).
    """
    f = set(flags)
    if "avx512f" in f:
        fp32 = 2 * 16 * 2
    elif "avx2" in f and "fma" in f:
        fp32 = 2 * 8 * 2
    else:
        fp32 = 4 * 2
    if "amx_bf16" in f:
        bf16 = 1024
    elif "avx512_bf16" in f:
        bf16 = 2 * fp32
    else:
        bf16 = fp32
    return {"fp32": fp32, "bf16": bf16, "fp16": bf16 if "avx512_fp16" in f or "amx_fp16" in f else fp32}


def cpu_ghz() -> float:
    """Nominal core clock: /proc/cpuinfo "cpu MHz", else BogoMIPS / 2, else 2.0 GHz."""
    info = _cpuinfo()
    for key, div in (("cpu MHz", 1000.0), ("bogomips", 2000.0)):
        try:
            return float(info[key]) / div
        except (KeyError, ValueError):
            continue
    return 2.0


def peak_tflops(device: torch.device, precision: str, cores: int, override: float | None = None) -> float:
    """Dense peak TFLOPs of ``device`` at ``precision`` (``override`` wins): the GPU table, or for a CPU
    ``cores x GHz x FLOPs/cycle`` (:func:`cpu_flops_per_cycle`). NaN for an unknown GPU."""
    if override:
        return float(override)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if precision == "fp32" and torch.backends.cudnn.allow_tf32:
            precision = "tf32"
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peaks.get(precision, peaks["fp32"])
        return float("nan")
    flags = _cpuinfo().get("flags", "").split()
    return cores * cpu_ghz() * cpu_flops_per_cycle(flags)[precision] / 1e3


# ----------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(
    tasks: dict[str, Callable[[], int]],
    rounds: int,
    window_s: float,
    on_window: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Items/s of every task in ``rounds`` rounds of short windows, interleaved.

    Each task call does some work and returns how many items it processed (it must synchronise the device
    itself). In every round each task runs for at least ``window_s`` seconds (at least one call); the order
    rotates by one each round so that no task always follows the same neighbour. Returns the rates per task.
    """
    names = list(tasks)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            items, t0 = 0, time.perf_counter()
            while True:
                items += tasks[name]()
                elapsed = time.perf_counter() - t0
                if elapsed >= window_s:
                    break
            rates[name].append(items / elapsed)
            if on_window is not None:
                on_window()
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> float:
    """(max - min) / median of the windows: how noisy a figure was."""
    if len(values) < 2:
        return 0.0
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else float("nan")


# ----------------------------------------------------------------------------------------------- memory
def fix_malloc_thresholds(threshold: int = 64 * 1024) -> bool:
    """glibc: serve blocks >= ``threshold`` by mmap and give freed memory back (fixed thresholds; the dynamic
    threshold is switched off), so that RSS follows live tensors. Returns False where mallopt is missing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, threshold) == 1
    return ok and libc.mallopt(m_trim_threshold, threshold) == 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def current_memory_bytes(device: torch.device) -> int:
    """What this process holds now: CUDA allocated bytes, or the resident set on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _rss_bytes()


class PeakMemory:
    """``with PeakMemory(device) as pm: step()`` then ``pm.peak_mb``: peak memory above the start (see the
    module docstring for how on CPU and CUDA)."""

    def __init__(self, device: torch.device, interval_s: float = 5e-4) -> None:
        self.device, self.interval_s = device, interval_s
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._max = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._max = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_bytes())
        self.peak_mb = (peak - self._base) / 2**20


# ----------------------------------------------------------------------------------------------- output
def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` with ``columns`` = [(key, header, format spec)], missing values as '-'."""
    widths = []
    for key, header, fmt in columns:
        cells = [header] + [_cell(r.get(key), fmt) for r in rows]
        widths.append(max(len(c) for c in cells))
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        cells = [_cell(r.get(key), fmt) for key, _, fmt in columns]
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "-"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def emit(result: dict[str, Any], out: str | None = None) -> None:
    """Print ``result`` as the one JSON line that ends every bench, and write it atomically to ``out``."""
    text = json.dumps(_finite(result), default=_jsonable, allow_nan=False)
    if out:
        from hpc_sr.atomic import atomic_write_text

        atomic_write_text(out, text + "\n")
    print(text, flush=True)


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path | torch.device | torch.dtype):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def require_device(device: str) -> None:
    """Exit naming ``--device`` when it is cuda and no CUDA device is available."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")


def report(
    result: dict[str, Any], print_report: Callable[[dict[str, Any]], None], out: str | None = None
) -> dict[str, Any]:
    """A bench's ending: ``print_report(result)``, then :func:`emit`; returns ``result``."""
    print_report(result)
    emit(result, out)
    return result


def rounded(value: float, digits: int = 3) -> float | None:
    """``round`` for JSON: NaN and inf become None."""
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return round(float(value), digits)
