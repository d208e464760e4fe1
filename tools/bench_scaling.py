"""DDP scaling on CPU (1 vs 2 ranks, gloo) against two independent processes, where the step loses time, and a
projection for 8-GPU nodes.

    python tools/bench_scaling.py                      # SRResNet 32 ch x 4, D 32 x 4, 16 images per rank
    python tools/bench_scaling.py --repeats 3 --profile-steps 4 --ddp-variants default,bcast,view
    python tools/bench_scaling.py --device cuda --full --ranks 1,2,4,8   # GPU node: nccl, one GPU per rank

Jobs (``--repeats`` times each, the order rotating; OMP_NUM_THREADS=1 and one torch thread per process):

- ``1``: one plain process (what torchrun with one rank amounts to: no process group, no DDP wrapper);
- ``ddp N``: ``torchrun --standalone --nproc_per_node=N``, DDP (gloo on CPU, nccl on GPU);
- ``indep N``: N plain single-process runs started together, each on its own (no process group): a file
  barrier lines up their timing windows, so they run at the same time; their images/s are summed.

Every process builds a real Trainer (fp32, ``data.source=simulate``, batches rendered once and replayed) and
times ``--windows`` windows of ``--steps`` steps per phase (G alone, G+D; ``Trainer.train_step`` + the EMA
update). Weak scaling: the per-rank batch is fixed. ``ddp / indep`` = DDP images/s over the summed images/s of
the independent processes: what DDP costs on top of the compute the machine gave those processes. After every
window all processes run the same matmul probe at once: ``ceiling`` = summed probe rate / one process's;
``per ceiling`` = ddp/indep with each job's rate divided by its ceiling (the load of other users differs
between jobs). ``1/imbalance``: in the indep job, the slowest process's window time over the mean, inverted:
what ddp/indep would be if waiting for the slower rank were DDP's only cost (a bound set by the machine).

Where the time goes (``--profile-steps K``, DDP jobs): torch.profiler over K steps per phase on every rank;
the share of the step spent in collectives (gloo/nccl all-reduce and broadcast ops, their waits) and the top
ops by self time. Each DDP job also times a bare all-reduce of the gradient bytes and checks that all
replicas (parameters and buffers, e.g. spectral-norm vectors) are identical at the end.

DDP settings (``--ddp-variants``, 2+ ranks): the same step through ``hpc_sr.train.step.optimizer_step`` on a
``DDPBackend(..., ddp_overrides=...)`` for each variant, interleaved in one job: ``default`` (the back-end's
:func:`~hpc_sr.train.backends.ddp.ddp_options`), ``bcast`` (broadcast_buffers=True before every forward:
torch's default, the back-end's before it chose per module), ``view`` (gradient_as_bucket_view=True),
``bucket1`` (bucket_cap_mb=1), ``static`` (static_graph=True).

Projection: the gradient all-reduce of one step (fp32 gradients of G, plus D in the GAN phase) against the
compute time of one step on an H100 at an assumed MFU, hierarchical ring: inside a node 2(g-1)/g x bytes over
NVLink (``--nvlink-gbs``), across N nodes 2(N-1)/N x bytes over the node's network (``--ib-gbs``), plus a
fixed latency per call. Prints the tables and ONE JSON line at the end.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hpc_sr.models.complexity import count_parameters, flops_per_image  # noqa: E402
from hpc_sr.models.registry import build_discriminator, build_generator  # noqa: E402
from tools.bench_common import machine_info, median, print_table, report, rounded, spread, sync  # noqa: E402

PHASES = {"g": "pretrain", "gan": "gan"}
DDP_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "bcast": {"broadcast_buffers": True},  # torch's default, the back-end's before it chose per module
    "view": {"gradient_as_bucket_view": True},
    "bucket1": {"bucket_cap_mb": 1},
    "static": {"static_graph": True},
}
COMM_PREFIXES = ("c10d::", "gloo:", "nccl:", "record_param_comms")  # profiler names of collective ops


# ----------------------------------------------------------------------------------------------- worker
class FileBarrier:
    """A barrier for processes without a process group: each writes ``<k>.<rank>`` and waits for all."""

    def __init__(self, folder: Path, rank: int, world: int) -> None:
        self.folder, self.rank, self.world, self.k = folder, rank, world, 0

    def __call__(self) -> None:
        self.k += 1
        (self.folder / f"{self.k}.{self.rank}").touch()
        deadline = time.monotonic() + 600
        while not all((self.folder / f"{self.k}.{r}").exists() for r in range(self.world)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"file barrier {self.k}: peers did not arrive in {self.folder}")
            time.sleep(0.0005)


class StepRig:
    """The training step without the Trainer: a DDPBackend with ``ddp_overrides``, G and D, the loss terms
    and EMA; ``train_step`` is what Trainer.train_step runs (optimizer_step), then the EMA update."""

    def __init__(
        self, cfg: Any, world: int, device: torch.device, overrides: dict[str, Any], batches: list
    ) -> None:
        from hpc_sr.train.backends.ddp import DDPBackend
        from hpc_sr.train.components import build_discriminator as build_d
        from hpc_sr.train.components import build_generator as build_g
        from hpc_sr.train.components import build_loss_terms
        from hpc_sr.train.ema import ModelEMA
        from hpc_sr.train.step import StepOptions
        from tools.bench_train import ReplayStream

        t = cfg.train
        self.backend = DDPBackend(cfg, device, world, ddp_overrides=overrides)
        self.backend.add("g", build_g(cfg.model, cfg.data.scale), t.lr_g)
        self.backend.add("d", build_d(cfg.model), t.lr_d)
        self.terms, kind = build_loss_terms(cfg.train.losses)
        self.opts = StepOptions(adversarial_kind=kind, channels_last=t.channels_last)
        self.ema = ModelEMA(self.backend.module("g"), t.ema_decay)
        self.stream = ReplayStream(batches)

    def train_step(self, phase: str) -> Any:
        from hpc_sr.train.step import optimizer_step

        opts = dataclasses.replace(self.opts, gan=phase == "gan")  # StepOptions are frozen
        res = optimizer_step(self.backend, self.terms, lambda: next(self.stream), opts)
        if res.skipped:
            raise RuntimeError(f"{phase} step skipped (non-finite loss)")
        self.ema.update(self.backend.module("g"))
        return res


def state_digest(modules: list[torch.nn.Module]) -> str:
    """sha256 of every parameter and buffer of ``modules`` (replicas must agree bit for bit)."""
    h = hashlib.sha256()
    for m in modules:
        for name, v in m.state_dict().items():
            h.update(name.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def profile_steps(step: Any, phases: list[str], steps: int, device: torch.device) -> dict[str, Any]:
    """torch.profiler over ``steps`` steps per phase: time in collectives per step, top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out: dict[str, Any] = {}
    for phase in phases:
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(steps):
                step(phase)
            sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
        avgs = prof.key_averages()
        comm = [e for e in avgs if e.key.startswith(COMM_PREFIXES)]
        top = sorted(avgs, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        out[phase] = {
            "wall_ms_per_step": rounded(wall_us / steps / 1e3, 2),
            "comm_self_ms_per_step": rounded(sum(e.self_cpu_time_total for e in comm) / steps / 1e3, 3),
            "comm_total_ms_per_step": rounded(
                max((e.cpu_time_total for e in comm), default=0.0) / steps / 1e3, 3
            ),
            "comm_ops": sorted({e.key for e in comm}),
            "comm_calls_per_step": rounded(sum(e.count for e in comm) / steps, 1),
            "top_self_ms_per_step": [(e.key, rounded(e.self_cpu_time_total / steps / 1e3, 3)) for e in top],
        }
    return out


def worker(a: argparse.Namespace) -> None:
    """One process of a job (``--mode single | ddp | indep``): time the training step, write the result."""
    from hpc_sr.dist import collectives
    from hpc_sr.dist.env import DistEnv, init_distributed, select_device, shutdown_distributed
    from tools.bench_train import BenchConfig, ReplayStream, build_trainer, model_spec, trainer_config

    torch.set_num_threads(1)
    ddp = a.mode == "ddp"
    env = DistEnv.from_environment() if ddp else DistEnv()
    rank, world = (env.rank, env.world_size) if ddp else (a.indep_rank, a.indep_world)
    device = select_device(env) if a.device == "cuda" else torch.device("cpu")
    if a.device == "cuda" and not ddp:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    init_distributed(env, device)  # gloo on CPU, nccl on GPU; a no-op for single/indep
    barrier = collectives.barrier if ddp else FileBarrier(Path(a.sync_dir), rank, world)
    ns = copy.copy(a)
    ns.batch = a.batch * env.world_size  # global batch: the per-rank batch stays fixed (weak scaling)
    own = Path(tempfile.mkdtemp(prefix=f"bench_scaling_{rank}_"))
    runs = Path(str(collectives.broadcast_object(str(own))))  # rank 0's directory: the trainer writes there
    spec = model_spec(ns, ns.arch)
    cfg = trainer_config(ns, BenchConfig("ddp", 0, "fp32"), spec, runs, device)
    trainer = build_trainer(cfg, device, env)
    batches = [next(trainer.stream) for _ in range(2)]
    trainer.stream = ReplayStream(batches)

    def step(phase: str) -> None:
        res = trainer.train_step(PHASES[phase])
        if res.skipped:
            raise RuntimeError(f"rank {rank}: {phase} step skipped (non-finite loss)")
        if trainer.ema is not None:
            trainer.ema.update(trainer.backend.module("g"))

    for phase in PHASES:
        for _ in range(a.warmup):
            step(phase)

    def window(fn: Any, phase: str) -> float:
        """Seconds of ``--steps`` steps: the slowest rank's under DDP, this process's own otherwise."""
        barrier()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            fn(phase)
        sync(device)
        elapsed = time.perf_counter() - t0
        if ddp:
            t = torch.tensor([elapsed], dtype=torch.float64, device=device)
            import torch.distributed as dist

            elapsed = float(collectives.all_reduce_(t, dist.ReduceOp.MAX))
        return elapsed

    x = torch.randn(256, 256, device=device)

    def probe() -> float:
        """Matmul GFLOP/s (this process's; the sum over ranks under DDP), all processes running it at once."""
        barrier()
        t0 = time.perf_counter()
        for _ in range(a.probe_matmuls):
            torch.mm(x, x)
        sync(device)
        rate = a.probe_matmuls * 2 * 256**3 / (time.perf_counter() - t0) / 1e9
        if ddp:  # rank 0 writes the result: the sum over ranks
            rate = float(collectives.all_reduce_(torch.tensor([rate], dtype=torch.float64, device=device)))
        return rate

    rates: dict[str, list[float]] = {p: [] for p in PHASES}
    probes: list[float] = []
    for w in range(a.windows):
        for phase in list(PHASES)[w % 2 :] + list(PHASES)[: w % 2]:
            rates[phase].append(a.batch * env.world_size * a.steps / window(step, phase))
        probes.append(probe())

    params = {n: count_parameters(trainer.backend.module(n)) for n in ("g", "d")}
    result: dict[str, Any] = {"mode": a.mode, "rank": rank, "world_size": world, "rates": rates,
                              "params": params, "probe_gflops": probes}  # fmt: skip
    if ddp and env.distributed:
        result.update(ddp_extras(a, env, device, trainer, step, window, batches, cfg, barrier))
    if rank == 0 or not ddp:
        from hpc_sr.atomic import atomic_write_text

        atomic_write_text(f"{a.result}.{rank}", json.dumps(result))
    barrier()
    trainer.log.close()
    shutil.rmtree(own, ignore_errors=True)
    shutdown_distributed(wait_for_peers=True)


def ddp_extras(
    a: argparse.Namespace, env: Any, device: torch.device, trainer: Any, step: Any, window: Any,
    batches: list, cfg: Any, barrier: Any,
) -> dict[str, Any]:  # fmt: skip
    """DDP jobs only: bare all-reduce time, replica check, profile, DDP-setting variants."""
    import torch.distributed as dist

    out: dict[str, Any] = {}
    params = {n: count_parameters(trainer.backend.module(n)) for n in ("g", "d")}
    allreduce_s: dict[str, float] = {}
    for phase, numel in (("g", params["g"]), ("gan", params["g"] + params["d"])):
        buf = torch.ones(numel, device=device)
        times = []
        for _ in range(a.windows + 1):
            barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            sync(device)
            times.append(time.perf_counter() - t0)
        allreduce_s[phase] = median(times[1:])
    out["allreduce_s"] = allreduce_s
    digest = state_digest([trainer.backend.module("g"), trainer.backend.module("d")])
    digests = [None] * env.world_size
    dist.all_gather_object(digests, digest)
    out["replicas_identical"] = len(set(digests)) == 1
    out["buffers"] = {n: sum(1 for _ in trainer.backend.module(n).buffers()) for n in ("g", "d")}
    if a.profile_steps > 0:
        barrier()
        out["profile"] = profile_steps(step, list(PHASES), a.profile_steps, device)
    names = [v for v in a.ddp_variants.split(",") if v.strip()]
    if names:
        unknown = [v for v in names if v not in DDP_VARIANTS]
        if unknown:
            raise SystemExit(f"--ddp-variants: unknown {unknown}; valid: {sorted(DDP_VARIANTS)}")
        rigs = {v: StepRig(cfg, env.world_size, device, DDP_VARIANTS[v], batches) for v in names}
        for rig in rigs.values():
            for phase in PHASES:
                for _ in range(a.warmup):
                    rig.train_step(phase)
        rates: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PHASES} for v in names}
        for w in range(a.windows):
            order = names[w % len(names) :] + names[: w % len(names)]
            for v in order:
                for phase in PHASES:
                    rates[v][phase].append(
                        a.batch * env.world_size * a.steps / window(rigs[v].train_step, phase)
                    )
        out["variants"] = rates
        out["variant_replicas_identical"] = {}
        for v, rig in rigs.items():
            d = state_digest([rig.backend.module("g"), rig.backend.module("d")])
            ds = [None] * env.world_size
            dist.all_gather_object(ds, d)
            out["variant_replicas_identical"][v] = len(set(ds)) == 1
    return out


# ----------------------------------------------------------------------------------------------- jobs
def worker_args(a: argparse.Namespace) -> list[str]:
    keys = ("arch", "g_options", "d_arch", "d_options", "batch", "patch", "hr_size", "steps", "windows",
            "warmup", "seed", "device", "probe_matmuls", "profile_steps", "ddp_variants")  # fmt: skip
    out = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in keys]
    return out + (["--full"] if a.full else [])


def run_job(a: argparse.Namespace, mode: str, n: int, work: Path, tag: str) -> list[dict[str, Any]]:
    """One job (``single``, ``ddp`` with n ranks, ``indep`` with n processes); its processes' results."""
    result = work / f"{tag}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if a.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    script = [str(Path(__file__).resolve()), "--worker", f"--result={result}", *worker_args(a)]
    if mode == "ddp":
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                 *script, "--mode=ddp"]]  # fmt: skip
    else:
        sync_dir = work / f"{tag}.sync"
        sync_dir.mkdir()
        cmds = [[sys.executable, *script, f"--mode={mode}", f"--indep-rank={r}", f"--indep-world={n}",
                 f"--sync-dir={sync_dir}"] for r in range(n)]  # fmt: skip
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds
    ]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=a.job_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            errors.append(f"exit {p.returncode}: {err[-3000:]}")
    files = sorted(work.glob(f"{tag}.json.*"))
    if errors or not files:
        raise SystemExit(f"{mode} job with {n} process(es) failed:\n" + "\n".join(errors))
    return [json.loads(f.read_text()) for f in files]


def summarise(
    a: argparse.Namespace, jobs: dict[tuple[str, int], list[list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Rows per (mode, processes, phase) and the DDP / independent ratio."""

    def job_rates(results: list[dict[str, Any]], phase: str, mode: str) -> list[float]:
        if mode == "indep":  # window k of every process ran at the same time: sum them
            return [sum(ws) for ws in zip(*(r["rates"][phase] for r in results))]
        return list(results[0]["rates"][phase])

    def probe(results: list[dict[str, Any]]) -> list[float]:
        return [sum(ps) for ps in zip(*(r["probe_gflops"] for r in results))]

    def imbalance(results: list[dict[str, Any]], phase: str) -> list[float]:
        """Per window of an indep job: slowest process's time / mean time, what waiting for the slower one at
        every window would cost a synchronous job on the same machine (a lower bound: DDP waits each step)."""
        times = zip(*(1.0 / np.asarray(r["rates"][phase]) for r in results))
        return [float(max(t) / np.mean(t)) for t in times]

    base = {p: median([x for j in jobs[("single", 1)] for x in job_rates(j, p, "single")]) for p in PHASES}
    base_probe = median([x for j in jobs[("single", 1)] for x in probe(j)])
    rows, ratio = [], {}
    for (mode, n), runs in jobs.items():
        ceiling = median([x for j in runs for x in probe(j)]) / base_probe
        for phase in PHASES:
            rates = [x for j in runs for x in job_rates(j, phase, mode)]
            ips = median(rates)
            ar = [j[0]["allreduce_s"][phase] for j in runs if j[0].get("allreduce_s")]
            step_s = a.batch * n / ips  # per-process step time (every process does a.batch images a step)
            rows.append({
                "job": "1 process" if mode == "single" else f"{mode} {n}", "mode": mode, "processes": n,
                "phase": phase, "images_per_s": rounded(ips, 2), "spread": rounded(spread(rates), 2),
                "speedup": rounded(ips / base[phase], 3), "efficiency": rounded(ips / (n * base[phase]), 3),
                "step_ms": rounded(step_s * 1e3, 1),
                "allreduce_ms": rounded(median(ar) * 1e3, 2) if ar else None,
                "allreduce_share": rounded(median(ar) / step_s, 4) if ar else None,
                "compute_ceiling": rounded(ceiling, 2),
            })  # fmt: skip
    by = {(r["mode"], r["processes"], r["phase"]): r for r in rows}
    norm = {}
    for (mode, n, phase), r in by.items():
        if mode == "ddp" and ("indep", n, phase) in by:
            other = by[("indep", n, phase)]
            ratio[f"{n}|{phase}"] = rounded(r["images_per_s"] / other["images_per_s"], 3)
            r["ddp_over_indep"] = ratio[f"{n}|{phase}"]
            # the same ratio with each job's rate divided by the compute its probe saw (other users' load)
            own = r["images_per_s"] / r["compute_ceiling"]
            norm[f"{n}|{phase}"] = rounded(own / (other["images_per_s"] / other["compute_ceiling"]), 3)
            r["ddp_over_indep_per_ceiling"] = norm[f"{n}|{phase}"]
            waits = [x for j in jobs[("indep", n)] for x in imbalance(j, phase)]
            other["imbalance"] = rounded(median(waits), 3)
            r["sync_bound"] = rounded(1.0 / median(waits), 3)  # ddp/indep if waiting were DDP's only cost
    ddp_runs = [j[0] for (mode, n), runs in jobs.items() if mode == "ddp" for j in runs]
    return {"rows": rows, "ddp_over_indep": ratio, "ddp_over_indep_per_ceiling": norm,
            "params": jobs[("single", 1)][0][0]["params"],
            "replicas_identical": all(r.get("replicas_identical", True) for r in ddp_runs),
            "buffers": ddp_runs[0].get("buffers") if ddp_runs else None,
            "profile": [r["profile"] for r in ddp_runs if "profile" in r],
            "variants": variant_rows(a, ddp_runs)}  # fmt: skip


def variant_rows(a: argparse.Namespace, ddp_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runs = [r for r in ddp_runs if "variants" in r]
    if not runs:
        return []
    rows = []
    names = list(runs[0]["variants"])
    for phase in PHASES:
        base = median([x for r in runs for x in r["variants"][names[0]][phase]])
        for v in names:
            rates = [x for r in runs for x in r["variants"][v][phase]]
            rows.append({"variant": v, "phase": phase, "processes": runs[0]["world_size"],
                         "settings": DDP_VARIANTS[v], "images_per_s": rounded(median(rates), 2),
                         "spread": rounded(spread(rates), 2), "ratio": rounded(median(rates) / base, 3),
                         "replicas_identical": all(r["variant_replicas_identical"][v] for r in runs),
                         })  # fmt: skip
    return rows


def measure(a: argparse.Namespace) -> dict[str, Any]:
    ranks = [int(r) for r in a.ranks.split(",")]
    if ranks[0] != 1:
        raise SystemExit("--ranks must start with 1 (the baseline of the efficiency)")
    kinds = [("single", 1)] + [(m, n) for n in ranks[1:] for m in ("ddp", "indep") if m in a.modes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    jobs: dict[tuple[str, int], list[list[dict[str, Any]]]] = {k: [] for k in kinds}
    order = [(r, k) for r in range(a.repeats) for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]]
    try:
        for i, (_r, (mode, n)) in enumerate(tqdm(order, desc="jobs", unit="job")):
            jobs[(mode, n)].append(run_job(a, mode, n, work, f"j{i}_{mode}{n}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarise(a, jobs)


# ----------------------------------------------------------------------------------------------- projection
def allreduce_seconds(
    nbytes: float, gpus: int, gpus_per_node: int, nvlink_gbs: float, ib_gbs: float, latency_s: float
) -> float:
    """Hierarchical ring all-reduce of ``nbytes`` per GPU: NVLink inside a node, the node's network across."""
    g = min(gpus, gpus_per_node)
    nodes = math.ceil(gpus / gpus_per_node)
    t = latency_s if gpus > 1 else 0.0
    if g > 1:
        t += 2 * (g - 1) / g * nbytes / (nvlink_gbs * 1e9)
    if nodes > 1:
        t += 2 * (nodes - 1) / nodes * nbytes / (ib_gbs * 1e9) + latency_s
    return t


def projection(a: argparse.Namespace) -> dict[str, Any]:
    """All-reduce time against compute time per step for the full SRResNet/SRGAN-D on 8-GPU nodes."""
    g = build_generator("srresnet", {"channels": 64, "blocks": 16}, 2)
    d = build_discriminator("srgan", {"channels": 64, "blocks": 4})
    lr = (a.proj_lr, a.proj_lr)
    fg, fd = flops_per_image(g, lr), flops_per_image(d, (2 * lr[0], 2 * lr[1]))
    train_flops = {"g": 3.0 * fg, "gan": 3.0 * fg + 9.0 * fd}
    grad_bytes = {"g": 4.0 * count_parameters(g), "gan": 4.0 * (count_parameters(g) + count_parameters(d))}
    rows = []
    for phase in PHASES:
        compute_s = a.proj_batch * train_flops[phase] / (a.peak_tflops * 1e12 * a.mfu)
        for gpus in (8, 16, 64, 256):
            comm = allreduce_seconds(grad_bytes[phase], gpus, 8, a.nvlink_gbs, a.ib_gbs, a.latency_us * 1e-6)
            rows.append({
                "phase": phase, "gpus": gpus, "nodes": math.ceil(gpus / 8),
                "grad_mb": rounded(grad_bytes[phase] / 2**20, 2), "compute_ms": rounded(compute_s * 1e3, 3),
                "allreduce_ms": rounded(comm * 1e3, 3), "comm_over_compute": rounded(comm / compute_s, 3),
                "efficiency_no_overlap": rounded(compute_s / (compute_s + comm), 3),
                "images_per_s_per_node": rounded(min(gpus, 8) * a.proj_batch / (compute_s + comm), 0),
            })  # fmt: skip
    return {
        "model": "G srresnet 64 ch x 16 blocks, D srgan 64 ch x 4 blocks", "lr_size": list(lr),
        "batch_per_gpu": a.proj_batch,
        "peak_tflops": a.peak_tflops, "mfu": a.mfu, "nvlink_gbs": a.nvlink_gbs, "ib_gbs_per_node": a.ib_gbs,
        "latency_us": a.latency_us, "train_gflops_per_image": {k: v / 1e9 for k, v in train_flops.items()},
        "rows": rows,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- report
def print_report(res: dict[str, Any]) -> None:
    m, s, p = res["machine"], res["sizes"], res["projection"]
    link = "nccl, one GPU per rank" if res["device"] == "cuda" else "gloo, 1 thread per process"
    print(f"\n{m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, {m['date']}, "
          f"load average {m['load_avg_1m']}; DDP {link}")  # fmt: skip
    print(f"G {s['arch']} {s['g_options']}, D {s['d_arch']} {s['d_options']}, batch {s['batch']} per "
          f"process, LR patch {s['patch']}; medians of {s['windows']} windows x {s['steps']} steps x "
          f"{s['repeats']} rotating repeats")  # fmt: skip
    print_table(res["rows"], [
        ("job", "job", ""), ("phase", "phase", ""), ("images_per_s", "img/s", ".1f"),
        ("speedup", "speedup", ".2f"), ("efficiency", "efficiency", ".0%"),
        ("ddp_over_indep", "ddp/indep", ".0%"), ("ddp_over_indep_per_ceiling", "per ceiling", ".0%"),
        ("sync_bound", "1/imbalance", ".0%"),
        ("spread", "spread", ".2f"),
        ("step_ms", "step ms", ".1f"), ("allreduce_ms", "all-reduce ms", ".2f"),
        ("allreduce_share", "all-reduce/step", ".1%"), ("compute_ceiling", "ceiling", ".2f"),
    ])  # fmt: skip
    print(f"replicas identical after the DDP runs: {res['replicas_identical']}; buffers {res['buffers']}")
    for i, prof in enumerate(res["profile"]):
        for phase, v in prof.items():
            print(f"profile (job {i}, rank 0) {phase}: {v['wall_ms_per_step']} ms/step, collectives "
                  f"{v['comm_total_ms_per_step']} ms ({v['comm_calls_per_step']} calls/step); top self: "
                  + ", ".join(f"{k} {t}" for k, t in v["top_self_ms_per_step"][:6]))  # fmt: skip
    if res["variants"]:
        print("\nDDP settings, same job, interleaved (ratio vs the first):")
        print_table(res["variants"], [
            ("variant", "variant", ""), ("phase", "phase", ""), ("images_per_s", "img/s", ".1f"),
            ("ratio", "ratio", ".2f"), ("spread", "spread", ".2f"), ("replicas_identical", "identical", ""),
        ])  # fmt: skip
    print(f"\nProjection, 8-GPU nodes: {p['model']}, LR {p['lr_size']}, batch {p['batch_per_gpu']} per GPU, "
          f"{p['peak_tflops']} TFLOPs peak at MFU {p['mfu']}, NVLink {p['nvlink_gbs']} GB/s, network "
          f"{p['ib_gbs_per_node']} GB/s per node, {p['latency_us']} us per all-reduce call")  # fmt: skip
    print_table(p["rows"], [
        ("phase", "phase", ""), ("gpus", "GPUs", "d"), ("nodes", "nodes", "d"), ("grad_mb", "grad MB", ".1f"),
        ("compute_ms", "compute ms", ".3f"), ("allreduce_ms", "all-reduce ms", ".3f"),
        ("comm_over_compute", "comm/compute", ".2f"), ("efficiency_no_overlap", "eff. no overlap", ".0%"),
        ("images_per_s_per_node", "img/s/node", ".0f"),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one GPU per rank, nccl")
    ap.add_argument("--ranks", default="1,2", help="process counts, starting with 1")
    ap.add_argument(
        "--modes", default="ddp,indep", help="jobs besides the 1-process baseline: ddp and/or indep"
    )
    ap.add_argument("--repeats", type=int, default=2, help="jobs per kind (the order rotates)")
    ap.add_argument(
        "--full", action="store_true", help="SRResNet 64 ch x 16, D 64 x 4, whole LR images (GPU)"
    )
    ap.add_argument("--arch", default="srresnet", help="registered generator")
    ap.add_argument("--g-options", default="auto", help="JSON object, 'tiny' or 'default' (as bench_train)")
    ap.add_argument("--d-arch", default="srgan")
    ap.add_argument("--d-options", default="auto")
    ap.add_argument("--batch", type=int, default=16, help="images per process per step")
    ap.add_argument("--patch", type=int, default=24, help="LR patch side (0: whole images)")
    ap.add_argument("--hr-size", type=int, default=150)
    ap.add_argument("--steps", type=int, default=3, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=4, help="timing windows per phase and job")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--probe-matmuls", type=int, default=400, help="256^3 matmuls per compute probe")
    ap.add_argument("--profile-steps", type=int, default=0, help="torch.profiler steps per phase (DDP jobs)")
    ap.add_argument("--ddp-variants", default="", help=f"DDP settings to compare: {','.join(DDP_VARIANTS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--job-timeout", type=float, default=900.0)
    ap.add_argument("--proj-lr", type=int, default=75, help="projection: LR image side")
    ap.add_argument("--proj-batch", type=int, default=16, help="projection: images per GPU per step")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="projection: GPU peak (H100 bf16 dense)")
    ap.add_argument("--mfu", type=float, default=0.3, help="projection: assumed model FLOPs utilisation")
    ap.add_argument("--nvlink-gbs", type=float, default=450.0)
    ap.add_argument("--ib-gbs", type=float, default=100.0, help="network per node, GB/s (4 x 200 Gb/s = 100)")
    ap.add_argument("--latency-us", type=float, default=20.0, help="fixed cost per all-reduce call")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="single", help=argparse.SUPPRESS)
    ap.add_argument("--indep-rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--indep-world", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--sync-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.full:
        a.patch = 0
    if a.worker:
        worker(a)
        return None
    res = {
        "bench": "scaling",
        "device": a.device,
        "machine": machine_info(),
        "sizes": {
            k: getattr(a, k)
            for k in (
                "arch",
                "g_options",
                "d_arch",
                "d_options",
                "batch",
                "patch",
                "hr_size",
                "steps",
                "windows",
                "repeats",
                "full",
            )
        },  # fmt: skip
    }
    res.update(measure(a))
    res["projection"] = projection(a)
    return report(res, print_report, a.out)


if __name__ == "__main__":
    main()
