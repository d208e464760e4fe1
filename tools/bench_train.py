"""Training-step throughput through the real trainer: G alone (pixel loss) and G+D (GAN step).

    python tools/bench_train.py                       # CPU: SRResNet 32 ch x 4 blocks, batch 16, LR 24x24
    python tools/bench_train.py --device cuda --full  # GPU: SRResNet 64 ch x 16 blocks, whole 75x75 LR images
    python tools/bench_train.py --variants fp32,bf16 --backends ddp,zero1 --rounds 3
    python tools/bench_train.py --arch srresnet,edsr,rcan,rrdb,swinir --g-options tiny --variants fp32 \
        --backends ddp                                # the generator zoo, side by side

For every configuration (generator arch x DDP with precision / channels_last / torch.compile variants, and
DeepSpeed ZeRO 0/1/2) a real :class:`hpc_sr.train.trainer.Trainer` is built on ``data.source=simulate`` (one
process, a throw-away run directory) and its public ``train_step(phase)`` is timed, followed by the EMA update
the training loop does after it: phase ``pretrain`` (G, pixel loss) and ``gan`` (G step with the frozen D,
then the D step). The batches are rendered once by the simulator and replayed, so the step figures are compute
only; the simulator's share of a real step is measured separately at the end (the trainer's own stream, the
``data_time`` of each :class:`~hpc_sr.train.step.StepResult`).

Models: ``--arch`` names one or more registered generators (comma separated); ``--g-options`` is a JSON
object of options for all of them, or ``{"arch": {...}, ...}`` per arch, or ``tiny`` (each arch's
``Options.tiny()``), or ``default`` (the arch's own defaults, the paper sizes). The default is SRResNet 32 ch
x 4 blocks. ``--d-arch`` / ``--d-options`` likewise for the discriminator (default SRGAN D 32 ch x 4 blocks).

Timing: after ``--warmup`` steps (the first one includes torch.compile's compilation, reported as
``compile_s`` = first step - median step; it depends on inductor's on-disk cache, TORCHINDUCTOR_CACHE_DIR,
default /tmp/torchinductor_$USER: ``--cold-compile`` points it at a fresh folder), all (configuration,
phase) pairs take turns in ``--rounds`` rounds of ``--window``-second windows; a figure is the median
over its windows and is reported as a ratio to the first configuration of the same phase.
Peak memory: one more step per pair under :class:`tools.bench_common.PeakMemory` (memory above what was
resident before the step); resident memory: what building a configuration and its warm-up steps added
(models, optimiser state, DeepSpeed buffers, compiled code). The DeepSpeed rows use the shipped
configs/deepspeed/zero<N>.json (``--ds-configs``).

MFU: training FLOPs per image from the model definitions (:func:`hpc_sr.models.complexity.flops_per_image`,
the forward pass; backward ~2x forward): G step 3 G; GAN step 3 G + 9 D (D on the fake with a backward to its
input ~2 D, D on the real without grad 1 D, the D step on real and fake 2 x 3 D); divided by the peak FLOPs
of the device at that precision (:func:`tools.bench_common.peak_tflops`, or ``--peak-tflops``).
Prints a table and ONE JSON line at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hpc_sr.config import Config, load_config  # noqa: E402
from hpc_sr.dist.env import DistEnv  # noqa: E402
from hpc_sr.models.complexity import count_parameters, flops_per_image  # noqa: E402
from hpc_sr.models.registry import (  # noqa: E402
    discriminator_names,
    discriminator_options,
    generator_names,
    generator_options,
    options_dict,
)
from tools.bench_common import (  # noqa: E402
    PeakMemory,
    current_memory_bytes,
    fix_malloc_thresholds,
    machine_info,
    median,
    peak_tflops,
    print_table,
    report,
    require_device,
    round_robin,
    rounded,
    spread,
    sync,
)

PHASES = {"g": "pretrain", "gan": "gan"}
DEFAULT_VARIANTS = "fp32,bf16,fp32+cl,bf16+cl,fp32+compile"
DEFAULT_BACKENDS = "ddp,zero0,zero1,zero2"
DEFAULT_G = {"srresnet": {"channels": 32, "blocks": 4}}  # the CPU default sizes; other archs: their own
DEFAULT_D = {"srgan": {"channels": 32, "blocks": 4}}
FULL_G = {"srresnet": {"channels": 64, "blocks": 16}}
FULL_D = {"srgan": {"channels": 64, "blocks": 4}}


@dataclass(frozen=True)
class BenchConfig:
    """One trainer set-up to time."""

    backend: str  # ddp | deepspeed
    zero_stage: int
    precision: str
    channels_last: bool = False
    compile: bool = False
    arch: str = ""  # generator arch; '' = the only one (not shown in the name)

    @property
    def name(self) -> str:
        head = "ddp" if self.backend == "ddp" else f"zero{self.zero_stage}"
        tail = ("+cl" if self.channels_last else "") + ("+compile" if self.compile else "")
        return (f"{self.arch}:" if self.arch else "") + f"{head}/{self.precision}{tail}"


@dataclass(frozen=True)
class ModelSpec:
    """Generator and discriminator of one configuration (registered names and plain options)."""

    g_arch: str
    g_options: dict[str, Any]
    d_arch: str
    d_options: dict[str, Any]


def parse_variant(text: str) -> tuple[str, bool, bool]:
    """``bf16+cl+compile`` -> (precision, channels_last, compile)."""
    parts = text.strip().split("+")
    precision, flags = parts[0], set(parts[1:])
    if precision not in ("fp32", "bf16", "fp16"):
        raise SystemExit(f"--variants: {text!r}: precision must be fp32, bf16 or fp16")
    unknown = flags - {"cl", "compile"}
    if unknown:
        raise SystemExit(f"--variants: {text!r}: unknown flag(s) {sorted(unknown)} (use +cl, +compile)")
    return precision, "cl" in flags, "compile" in flags


def split_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def plan_configs(
    variants: str, backends: str, backend_precision: str, archs: list[str] | None = None
) -> list[BenchConfig]:
    """Per generator arch: DDP rows for every variant (when ``ddp`` is among the back-ends), then one row per
    ZeRO stage. With one arch (or none given) the arch is left out of the names."""
    names = split_list(backends)
    bad = [b for b in names if b not in ("ddp", "zero0", "zero1", "zero2")]
    if bad:
        raise SystemExit(f"--backends: unknown {bad}; valid: ddp, zero0, zero1, zero2")
    parsed = [parse_variant(v) for v in split_list(variants)]
    configs: list[BenchConfig] = []
    tags = archs if archs and len(archs) > 1 else [""]
    for arch in tags:
        if "ddp" in names:
            configs += [BenchConfig("ddp", 0, p, cl, comp, arch) for p, cl, comp in parsed]
        for b in names:
            if b.startswith("zero"):
                configs.append(BenchConfig("deepspeed", int(b[-1]), backend_precision, arch=arch))
    if not configs:
        raise SystemExit("nothing to measure: give --backends with ddp and/or zero0..2")
    return configs


def resolve_options(text: str, arch: str, defaults: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    """Plain options of ``arch`` from ``--g-options``/``--d-options`` text (see the module docstring)."""
    known = generator_names() if kind == "g" else discriminator_names()
    if arch not in known:
        raise SystemExit(f"--{'arch' if kind == 'g' else 'd-arch'}: unknown {arch!r}; registered: {known}")
    lookup = generator_options if kind == "g" else discriminator_options
    text = text.strip()
    if text in ("", "auto"):
        return dict(defaults.get(arch, {}))
    if text == "default":
        return {}
    if text == "tiny":
        return options_dict(type(lookup(arch, None)).tiny())
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"--{kind}-options: {text!r} is not JSON ({exc}); give an object or 'tiny'"
        ) from None
    if not isinstance(values, dict):
        raise SystemExit(f"--{kind}-options: {text!r} must be a JSON object")
    if values and all(k in known for k in values):  # {"arch": {...}} per architecture
        values = values.get(arch, defaults.get(arch, {}))
    try:
        lookup(arch, values)  # validates: an unknown option names the key
    except ValueError as exc:
        raise SystemExit(f"--{kind}-options: {exc}") from None
    return dict(values)


def model_spec(a: argparse.Namespace, arch: str) -> ModelSpec:
    g_def, d_def = (FULL_G, FULL_D) if a.full else (DEFAULT_G, DEFAULT_D)
    return ModelSpec(
        arch,
        resolve_options(a.g_options, arch, g_def, "g"),
        a.d_arch,
        resolve_options(a.d_options, a.d_arch, d_def, "d"),
    )


def trainer_config(
    a: argparse.Namespace, c: BenchConfig, spec: ModelSpec, runs_dir: Path, device: torch.device
) -> Config:
    """The config of a throw-away trainer for configuration ``c``."""
    values: dict[str, object] = {
        "data.source": "simulate",
        "data.options.sim_device": str(device),
        "data.options.hr_size": a.hr_size,
        "data.batch_size": a.batch,
        "data.patch_size": a.patch,
        "data.val_images": 1,
        "train.steps": 2,
        "train.pretrain_steps": 1,  # steps > pretrain_steps: the trainer builds D too
        "train.precision": c.precision,
        "train.channels_last": c.channels_last,
        "train.compile": c.compile,
        "train.seed": a.seed,
        "dist.backend": c.backend,
        "dist.zero_stage": c.zero_stage,
        "dist.deepspeed_config": ds_config_file(getattr(a, "ds_configs", ""), c),
        "log.runs_dir": str(runs_dir),
        "log.name": c.name.replace("/", "_").replace("+", "_").replace(":", "_"),
        "log.tensorboard": False,
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in values.items()])
    cfg.model.g.arch, cfg.model.g.options = spec.g_arch, dict(spec.g_options)
    cfg.model.d.arch, cfg.model.d.options = spec.d_arch, dict(spec.d_options)
    return cfg


def ds_config_file(directory: str, c: BenchConfig) -> str:
    """The shipped DeepSpeed JSON for this ZeRO stage (``directory``/zero<N>.json) when there is one, else ''
    (the back-end then builds its config from hpc_sr's alone)."""
    if c.backend != "deepspeed" or not directory:
        return ""
    path = Path(directory) / f"zero{c.zero_stage}.json"
    return str(path.resolve()) if path.is_file() else ""


class ReplayStream:
    """Endless replay of a few pre-rendered micro-batches (takes the place of the trainer's stream)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.i = batches, 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.i = (self.i + 1) % len(self.batches)
        return self.batches[self.i]


def build_trainer(cfg: Config, device: torch.device, env: DistEnv | None = None) -> Any:
    """A real Trainer (no resume); one process unless ``env`` says otherwise."""
    from hpc_sr.train.trainer import Trainer

    return Trainer(cfg, env or DistEnv(), device, resume="never")


def train_flops_per_image(trainer: Any, patch: tuple[int, int], scale: int) -> dict[str, float]:
    """Training FLOPs per image of each phase (see the module docstring)."""
    g = flops_per_image(trainer.backend.module("g"), patch)
    d = flops_per_image(trainer.backend.module("d"), (patch[0] * scale, patch[1] * scale))
    return {"g": 3.0 * g, "gan": 3.0 * g + 9.0 * d, "g_forward": float(g), "d_forward": float(d)}


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_deepspeed() -> None:
    with contextlib.suppress(ImportError):
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.ERROR)


def training_step(trainer: Any, phase: str) -> Any:
    """What one iteration of the training loop computes: ``train_step`` and the EMA update after it."""
    res = trainer.train_step(PHASES[phase])
    if res.skipped:
        raise RuntimeError(f"{phase} step skipped (non-finite loss)")
    if trainer.ema is not None:
        trainer.ema.update(trainer.backend.module("g"))
    return res


def step_fn(trainer: Any, phase: str, device: torch.device, batch: int) -> Any:
    """One real training step of ``phase``; returns the images it consumed."""

    def run() -> int:
        training_step(trainer, phase)
        sync(device)
        return batch

    return run


def simulate_share(trainer: Any, stream: Any, device: torch.device, batch: int, steps: int) -> dict[str, Any]:
    """Share of a step spent rendering the batch when the trainer draws from its own simulator stream."""
    replay, trainer.stream = trainer.stream, stream
    out: dict[str, Any] = {}
    try:
        for phase in PHASES:
            data_s = total_s = 0.0
            for _ in range(steps):
                t0 = time.perf_counter()
                res = training_step(trainer, phase)
                sync(device)
                total_s += time.perf_counter() - t0
                data_s += res.data_time
            out[phase] = {
                "share": rounded(data_s / total_s),
                "simulate_pairs_per_s": rounded(steps * batch / data_s, 1),
                "step_images_per_s": rounded(steps * batch / total_s, 1),
            }
    finally:
        trainer.stream = replay
    return out


def start_deepspeed(
    configs: list[BenchConfig], device: torch.device, errors: dict[str, str]
) -> list[BenchConfig]:
    """Start DeepSpeed's one-rank process group before any trainer; a failure becomes an error row."""
    if not any(c.backend == "deepspeed" for c in configs):
        return configs
    quiet_deepspeed()
    try:
        from hpc_sr.train.backends.deepspeed import ensure_process_group

        if "RANK" not in os.environ:  # not under torchrun: DeepSpeed still reads the launcher variables
            DistEnv(master_port=free_port()).export()
        ensure_process_group(device)  # before any trainer: every row pays the same 1-rank all-reduces
    except Exception as exc:  # noqa: BLE001 - report any failure of the optional back-end as a row
        for c in configs:
            if c.backend == "deepspeed":
                errors[c.name] = f"{type(exc).__name__}: {exc}"
        return [c for c in configs if c.backend != "deepspeed"]
    return configs


def bench(a: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        malloc_fixed = fix_malloc_thresholds()
    else:
        malloc_fixed = False
    archs = split_list(a.arch)
    specs = {arch: model_spec(a, arch) for arch in archs}
    configs = plan_configs(a.variants, a.backends, a.backend_precision, archs)
    errors: dict[str, str] = {}
    configs = start_deepspeed(configs, device, errors)

    def spec_of(c: BenchConfig) -> ModelSpec:
        return specs[c.arch or archs[0]]

    runs = Path(tempfile.mkdtemp(prefix="bench_train_"))
    trainers: dict[str, Any] = {}
    first_s: dict[tuple[str, str], float] = {}
    resident: dict[str, float] = {}  # memory kept by a configuration: models, optimiser and engine state
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    sim_stream = None
    flops: dict[str, dict[str, float]] = {}  # per arch
    params: dict[str, dict[str, int]] = {}
    # a throw-away trainer first: the process's one-time costs (oneDNN, autograd, simulator set-up) must not
    # count in the first configuration's resident memory
    with contextlib.suppress(Exception):
        spare = build_trainer(trainer_config(a, configs[0], spec_of(configs[0]), runs, device), device)
        step_fn(spare, "gan", device, a.batch)()
        spare.log.close()
        del spare
        gc.collect()
    for c in tqdm(configs, desc="build + warm up", unit="config"):
        try:
            before = current_memory_bytes(device)
            tr = build_trainer(trainer_config(a, c, spec_of(c), runs, device), device)
            if not batches:  # render the replayed batches once, with the first trainer's real stream
                sim_stream = tr.stream
                batches = [next(sim_stream) for _ in range(2)]
            arch = spec_of(c).g_arch
            if arch not in flops:
                lr = batches[0][0]
                flops[arch] = train_flops_per_image(tr, (lr.shape[-2], lr.shape[-1]), tr.scale)
                params[arch] = {n: count_parameters(tr.backend.module(n)) for n in ("g", "d")}
            tr.stream = ReplayStream(batches)
            for phase in PHASES:
                fn = step_fn(tr, phase, device, a.batch)
                t0 = time.perf_counter()
                fn()
                first_s[(c.name, phase)] = time.perf_counter() - t0
                for _ in range(a.warmup - 1):
                    fn()
            resident[c.name] = (current_memory_bytes(device) - before) / 2**20
            trainers[c.name] = tr
        except Exception as exc:  # noqa: BLE001 - one broken configuration must not hide the others
            errors[c.name] = f"{type(exc).__name__}: {exc}"
            tqdm.write(f"{c.name}: skipped ({errors[c.name][:300]})")
    configs = [c for c in configs if c.name in trainers]
    if not configs:
        raise SystemExit(f"no configuration ran: {errors}")

    tasks = {(c.name, p): step_fn(trainers[c.name], p, device, a.batch) for c in configs for p in PHASES}
    keyed = {f"{n}|{p}": fn for (n, p), fn in tasks.items()}
    with tqdm(total=a.rounds * len(keyed), desc="timing windows", unit="win") as bar:
        rates = round_robin(keyed, a.rounds, a.window, on_window=lambda: bar.update(1))

    peaks: dict[tuple[str, str], float] = {}
    for (name, phase), fn in tasks.items():
        with PeakMemory(device) as pm:
            fn()
        peaks[(name, phase)] = pm.peak_mb

    rows = table_rows(a, device, configs, rates, peaks, resident, first_s, flops, spec_of)
    base = configs[0].name
    share = {}
    if a.sim_steps > 0 and sim_stream is not None:
        share = simulate_share(trainers[base], sim_stream, device, a.batch, a.sim_steps)
    for tr in trainers.values():
        tr.log.close()
    shutil.rmtree(runs, ignore_errors=True)

    lr = batches[0][0]
    first = spec_of(configs[0])
    return {
        "bench": "train",
        "device": str(device),
        "machine": machine_info(device),
        "sizes": {
            "g_arch": first.g_arch,
            "g_options": first.g_options,
            "d_arch": first.d_arch,
            "d_options": first.d_options,
            "archs": archs,
            "batch": a.batch,
            "lr_patch": list(lr.shape[-2:]),
            "hr_size": a.hr_size,
            "full": a.full,
        },  # fmt: skip
        "models": {arch: {"g_options": s.g_options, "d_options": s.d_options} for arch, s in specs.items()},
        "params": params[first.g_arch],
        "params_by_arch": params,
        "train_flops_per_image": flops[first.g_arch],
        "train_flops_by_arch": flops,
        "timing": {
            "rounds": a.rounds,
            "window_s": a.window,
            "warmup": a.warmup,
            "baseline": base,
            "compile_cache": "cold" if a.cold_compile else "default",
            "step": "Trainer.train_step + EMA update",
        },
        "memory_method": "cuda max_memory_allocated - allocated at start"
        if device.type == "cuda"
        else f"peak RSS (0.5 ms sampling) - RSS at start; glibc mmap threshold 64 KiB fixed: {malloc_fixed}",
        "rows": rows,
        "errors": errors,
        "simulate_share": share,
    }


def table_rows(
    a: argparse.Namespace,
    device: torch.device,
    configs: list[BenchConfig],
    rates: dict[str, list[float]],
    peaks: dict[tuple[str, str], float],
    resident: dict[str, float],
    first_s: dict[tuple[str, str], float],
    flops: dict[str, dict[str, float]],
    spec_of: Any,
) -> list[dict[str, Any]]:
    """One row per (configuration, phase); ratios against the first configuration of the same phase."""
    rows: list[dict[str, Any]] = []
    base = configs[0].name
    for phase in PHASES:
        base_ips = median(rates[f"{base}|{phase}"])
        base_mem = peaks[(base, phase)]
        for c in configs:
            r = rates[f"{c.name}|{phase}"]
            ips = median(r)
            step_s = a.batch / ips
            arch = spec_of(c).g_arch
            peak = peak_tflops(device, c.precision, a.threads if device.type == "cpu" else 1, a.peak_tflops)
            achieved = flops[arch][phase] * ips / 1e12
            rows.append({
                "config": c.name, "arch": arch, "phase": phase, "backend": c.backend,
                "zero_stage": c.zero_stage, "precision": c.precision, "channels_last": c.channels_last,
                "compile": c.compile, "images_per_s": rounded(ips, 2), "spread": rounded(spread(r), 2),
                "ratio": rounded(ips / base_ips, 3), "windows": len(r),
                "peak_mem_mb": rounded(peaks[(c.name, phase)], 1),
                "resident_mb": rounded(resident[c.name], 1),
                "mem_ratio": rounded(peaks[(c.name, phase)] / base_mem, 3) if base_mem > 0 else None,
                "tflops": rounded(achieved, 4), "peak_tflops": rounded(peak, 2),
                "mfu": rounded(achieved / peak, 4), "first_step_s": rounded(first_s[(c.name, phase)], 2),
                "compile_s": rounded(max(0.0, first_s[(c.name, phase)] - step_s), 2) if c.compile else None,
            })  # fmt: skip
    return rows


def print_report(res: dict[str, Any]) -> None:
    m, s = res["machine"], res["sizes"]
    print(f"\n{m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, {m.get('gpu', res['device'])}, "
          f"{m['threads']} thread(s), load average {m['load_avg_1m']}, {m['date']}")  # fmt: skip
    for arch, p in res["params_by_arch"].items():
        opts = res["models"][arch]
        print(f"G {arch} {opts['g_options'] or '(defaults)'} ({p['g']:,} params), D {s['d_arch']} "
              f"{opts['d_options'] or '(defaults)'} ({p['d']:,})")  # fmt: skip
    print(
        f"batch {s['batch']}, LR {s['lr_patch']}; medians of {res['timing']['rounds']} interleaved "
        f"{res['timing']['window_s']} s windows; ratio = vs {res['timing']['baseline']} of the same phase"
    )
    print_table(res["rows"], [
        ("config", "config", ""), ("phase", "phase", ""), ("images_per_s", "img/s", ".1f"),
        ("ratio", "ratio", ".2f"), ("spread", "spread", ".2f"), ("peak_mem_mb", "peak MB", ".1f"),
        ("mem_ratio", "mem ratio", ".2f"),
        ("resident_mb", "resident MB", ".1f"), ("tflops", "TFLOP/s", ".4f"), ("mfu", "MFU", ".2%"),
        ("compile_s", "compile s", ".1f"),
    ])  # fmt: skip
    for name, err in res["errors"].items():
        print(f"{name}: not measured: {err[:300]}")
    for phase, v in res["simulate_share"].items():
        print(f"simulation share of a {phase} step (data.source=simulate, {res['device']}): {v['share']:.0%} "
              f"(simulator {v['simulate_pairs_per_s']} pairs/s, step {v['step_images_per_s']} img/s)"
              )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--full", action="store_true", help="SRResNet 64 ch x 16, D 64 x 4, whole 75x75 LR images"
    )
    ap.add_argument("--arch", default="srresnet", help="registered generator(s), comma separated")
    ap.add_argument("--g-options", default="auto", help="JSON object, {arch: {...}}, 'tiny' or 'default'")
    ap.add_argument("--d-arch", default="srgan", help="registered discriminator")
    ap.add_argument("--d-options", default="auto", help="JSON object, 'tiny' or 'default'")
    ap.add_argument("--batch", type=int, default=16, help="images per step (one process)")
    ap.add_argument("--patch", type=int, default=24, help="LR patch side (0: whole images)")
    ap.add_argument("--hr-size", type=int, default=150, help="simulated HR image side")
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="DDP rows: precision[+cl][+compile], comma separated (default: %(default)s)",
    )
    ap.add_argument(
        "--backends",
        default=DEFAULT_BACKENDS,
        help="ddp and/or zero0,zero1,zero2 (DeepSpeed), comma separated (default: %(default)s)",
    )
    ap.add_argument(
        "--backend-precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="precision of the DeepSpeed rows",
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--window", type=float, default=1.0, help="seconds per timing window")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration and phase")
    ap.add_argument("--sim-steps", type=int, default=3, help="steps per phase, simulation share (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: estimated)")
    ap.add_argument(
        "--ds-configs",
        default=str(Path(__file__).resolve().parents[1] / "configs" / "deepspeed"),
        help="folder of zero<N>.json for the DeepSpeed rows ('': the back-end's own config)",
    )
    ap.add_argument("--cold-compile", action="store_true", help="compile with an empty inductor cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    if a.full:
        a.patch, a.hr_size = 0, 150
    require_device(a.device)
    if a.cold_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_inductor_")
    return report(bench(a), print_report, a.out)


if __name__ == "__main__":
    main()
