"""DDP scaling on CPU (1 vs 2 ranks, gloo) through the real trainer, and a projection for 8-GPU nodes.

    python tools/bench_scaling.py                      # 1 and 2 ranks, 32 ch x 4 blocks, 16 images per rank
    python tools/bench_scaling.py --ranks 1,2,4 --repeats 3 --mfu 0.3

Measurement: each world size runs as its own ``torchrun --standalone --nproc_per_node=N`` job (N = 1: a
plain process, which is what torchrun with one rank amounts to: no process group, no DDP wrapper)
(OMP_NUM_THREADS=1 and one torch thread per rank); the jobs alternate (1, 2, 1, 2, ...) ``--repeats`` times so
that the machine's background load hits both alike. Inside a job every rank builds a real Trainer (DDP, fp32,
``data.source=simulate``, batches rendered once and replayed), warms up, then times ``--windows`` windows of
``--steps`` steps per phase (G alone, G+D) between barriers; a window's time is the slowest rank's. Weak
scaling: the per-rank batch is fixed, images/s counts all ranks; efficiency = images/s(N) / (N x images/s(1)).
Each 2+-rank job also times a bare all-reduce of the gradient bytes (G, G+D). After every window all ranks
run the same matmul probe at once: ``ceiling`` = summed probe rate with N ranks / rate with 1 is the
parallel compute the (shared) machine really gave, and ``eff. vs ceiling`` = speed-up / ceiling separates
DDP's own cost from cores that other users took.

Projection: the gradient all-reduce of one step (fp32 gradients of G, plus D in the GAN phase; DDP reduces
in the parameter dtype also under bf16 autocast) against the compute time of one step on an H100 at an
assumed MFU, with a hierarchical ring: inside a node 2(g-1)/g x bytes over NVLink (``--nvlink-gbs``), across
N nodes 2(N-1)/N x bytes over the node's network (``--ib-gbs``, e.g. 4 x 200 Gb/s = 100 GB/s), plus a fixed
latency per all-reduce call. Prints the tables and ONE JSON line at the end.
"""

from __future__ import annotations

import argparse
import copy
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

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hpc_sr.models.srgan import Discriminator, Generator, count_parameters, flops_per_image  # noqa: E402
from tools.bench_common import emit, machine_info, median, print_table, rounded, spread, sync  # noqa: E402

PHASES = {"g": "pretrain", "gan": "gan"}


# ----------------------------------------------------------------------------------------------- worker
def worker(a: argparse.Namespace) -> None:
    """One rank of a torchrun job: time the real DDP training step, write the result (rank 0)."""
    import torch.distributed as dist

    from hpc_sr.train import distributed as du
    from tools.bench_train import BenchConfig, ReplayStream, build_trainer, trainer_overrides

    torch.set_num_threads(1)
    env = du.DistEnv.from_environment()
    device = du.select_device(env) if a.device == "cuda" else torch.device("cpu")
    du.init_distributed(env, device)  # gloo on CPU, nccl on GPU
    ns = copy.copy(a)
    ns.batch = a.batch * env.world_size  # global batch: the per-rank batch stays fixed (weak scaling)
    own = Path(tempfile.mkdtemp(prefix=f"bench_scaling_{env.rank}_"))
    runs = Path(str(du.broadcast_object(str(own))))  # rank 0's directory: the trainer writes there
    trainer = build_trainer(trainer_overrides(ns, BenchConfig("ddp", 0, "fp32"), runs, device), device)
    trainer.stream = ReplayStream([next(trainer.stream) for _ in range(2)])
    for phase in PHASES:
        for _ in range(a.warmup):
            trainer._train_step(PHASES[phase])

    def window(phase: str) -> float:
        du.barrier()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            values, _ = trainer._train_step(PHASES[phase])
            if values.get("skipped"):
                raise RuntimeError(f"rank {env.rank}: {phase} step skipped (non-finite loss)")
        sync(device)
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        return float(du.all_reduce_(t, dist.ReduceOp.MAX))

    x = torch.randn(256, 256, device=device)

    def probe() -> float:
        """Summed matmul GFLOP/s of all ranks running at once: the parallel compute the machine gives us."""
        du.barrier()
        t0 = time.perf_counter()
        for _ in range(a.probe_matmuls):
            torch.mm(x, x)
        sync(device)
        rate = torch.tensor([a.probe_matmuls * 2 * 256**3 / (time.perf_counter() - t0) / 1e9], device=device)
        return float(du.all_reduce_(rate))

    rates: dict[str, list[float]] = {p: [] for p in PHASES}
    probes: list[float] = []
    for w in range(a.windows):
        for phase in list(PHASES)[w % 2 :] + list(PHASES)[: w % 2]:
            rates[phase].append(a.batch * env.world_size * a.steps / window(phase))
        probes.append(probe())

    params = {n: count_parameters(trainer.backend.module(n)) for n in ("g", "d")}
    allreduce_s: dict[str, float] = {}
    if env.distributed:
        for phase, numel in (("g", params["g"]), ("gan", params["g"] + params["d"])):
            buf = torch.ones(numel, device=device)
            times = []
            for _ in range(a.windows + 1):
                du.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(buf)
                sync(device)
                times.append(time.perf_counter() - t0)
            allreduce_s[phase] = median(times[1:])
    if env.is_main:
        from hpc_sr.atomic import atomic_write_text

        result = {"world_size": env.world_size, "rates": rates, "params": params, "allreduce_s": allreduce_s,
                  "probe_gflops": probes}  # fmt: skip
        atomic_write_text(a.result, json.dumps(result))
    du.barrier()
    shutil.rmtree(own, ignore_errors=True)
    du.shutdown_distributed()


def run_job(a: argparse.Namespace, n: int, result: Path) -> dict[str, Any]:
    """One torchrun job of ``n`` ranks; returns rank 0's result."""
    args = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in
            ("channels", "blocks", "d_channels", "d_blocks", "batch", "patch", "hr_size", "steps", "windows",
             "warmup", "seed", "device", "probe_matmuls")]  # fmt: skip
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else []
    cmd = [sys.executable, *launcher, str(Path(__file__).resolve()), "--worker", f"--result={result}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # the 1-rank baseline is a plain process
        env.pop(key, None)
    if a.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.job_timeout)
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"torchrun with {n} rank(s) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


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
    """All-reduce time against compute time per step for the --full model on 8-GPU nodes."""
    g = Generator(channels=64, blocks=16, scale=2)
    d = Discriminator(channels=64, blocks=4)
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
        "model": "G 64 ch x 16 blocks, D 64 ch x 4 blocks", "lr_size": list(lr),
        "batch_per_gpu": a.proj_batch,
        "peak_tflops": a.peak_tflops, "mfu": a.mfu, "nvlink_gbs": a.nvlink_gbs, "ib_gbs_per_node": a.ib_gbs,
        "latency_us": a.latency_us, "train_gflops_per_image": {k: v / 1e9 for k, v in train_flops.items()},
        "rows": rows,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- main
def measure(a: argparse.Namespace) -> dict[str, Any]:
    ranks = [int(r) for r in a.ranks.split(",")]
    if ranks[0] != 1:
        raise SystemExit("--ranks must start with 1 (the baseline of the efficiency)")
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    jobs: dict[int, list[dict[str, Any]]] = {n: [] for n in ranks}
    order = [(r, n) for r in range(a.repeats) for n in (ranks if r % 2 == 0 else ranks[::-1])]
    try:
        for r, n in tqdm(order, desc="torchrun jobs", unit="job"):
            jobs[n].append(run_job(a, n, work / f"r{r}_n{n}.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    base = {p: median([x for j in jobs[1] for x in j["rates"][p]]) for p in PHASES}
    base_probe = median([x for j in jobs[1] for x in j["probe_gflops"]])
    for n in ranks:
        ceiling = median([x for j in jobs[n] for x in j["probe_gflops"]]) / base_probe
        for phase in PHASES:
            rates = [x for j in jobs[n] for x in j["rates"][phase]]
            ips = median(rates)
            ar = [j["allreduce_s"][phase] for j in jobs[n] if j["allreduce_s"]]
            step_s = a.batch * n / ips
            rows.append({
                "ranks": n, "phase": phase, "images_per_s": rounded(ips, 2),
                "spread": rounded(spread(rates), 2),
                "speedup": rounded(ips / base[phase], 3), "efficiency": rounded(ips / (n * base[phase]), 3),
                "step_ms": rounded(step_s * 1e3, 1),
                "allreduce_ms": rounded(median(ar) * 1e3, 2) if ar else None,
                "allreduce_share": rounded(median(ar) / step_s, 3) if ar else None,
                "compute_ceiling": rounded(ceiling, 2),
                "efficiency_vs_ceiling": rounded(ips / (ceiling * base[phase]), 3),
            })  # fmt: skip
    return {"rows": rows, "params": jobs[1][0]["params"]}


def print_report(res: dict[str, Any]) -> None:
    m, s, p = res["machine"], res["sizes"], res["projection"]
    link = "nccl, one GPU per rank" if res["device"] == "cuda" else "gloo, 1 thread per rank"
    print(f"\n{m['cpu']} ({m['cpus']} CPUs), torch {m['torch']}, {m['date']}, "
          f"load average {m['load_avg_1m']}; DDP {link}")  # fmt: skip
    print(f"G {s['channels']} ch x {s['blocks']} blocks, batch {s['batch']} per rank, LR patch {s['patch']}; "
          f"medians of {s['windows']} windows x {s['steps']} steps x {s['repeats']} alternating jobs"
          )  # fmt: skip
    print_table(res["rows"], [
        ("ranks", "ranks", "d"), ("phase", "phase", ""), ("images_per_s", "img/s", ".1f"),
        ("speedup", "speedup", ".2f"), ("efficiency", "efficiency", ".0%"), ("spread", "spread", ".2f"),
        ("step_ms", "step ms", ".1f"), ("allreduce_ms", "all-reduce ms", ".2f"),
        ("allreduce_share", "all-reduce/step", ".1%"), ("compute_ceiling", "ceiling", ".2f"),
        ("efficiency_vs_ceiling", "eff. vs ceiling", ".0%"),
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
    ap.add_argument("--ranks", default="1,2", help="world sizes, starting with 1")
    ap.add_argument("--repeats", type=int, default=2, help="torchrun jobs per world size (alternating)")
    ap.add_argument("--full", action="store_true", help="64 ch x 16 blocks, D 64 x 4, whole LR images (GPU)")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--d-channels", type=int, default=0, help="D channels (0: same as --channels)")
    ap.add_argument("--d-blocks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16, help="images per rank per step")
    ap.add_argument("--patch", type=int, default=24, help="LR patch side (0: whole images)")
    ap.add_argument("--hr-size", type=int, default=150)
    ap.add_argument("--steps", type=int, default=3, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=4, help="timing windows per phase and job")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--probe-matmuls", type=int, default=400, help="256^3 matmuls per compute probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--job-timeout", type=float, default=600.0)
    ap.add_argument("--proj-lr", type=int, default=75, help="projection: LR image side")
    ap.add_argument("--proj-batch", type=int, default=16, help="projection: images per GPU per step")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="projection: GPU peak (H100 bf16 dense)")
    ap.add_argument("--mfu", type=float, default=0.3, help="projection: assumed model FLOPs utilisation")
    ap.add_argument("--nvlink-gbs", type=float, default=450.0)
    ap.add_argument("--ib-gbs", type=float, default=100.0, help="network per node, GB/s (4 x 200 Gb/s = 100)")
    ap.add_argument("--latency-us", type=float, default=20.0, help="fixed cost per all-reduce call")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return None
    if a.full:
        a.channels, a.blocks, a.d_channels, a.d_blocks, a.patch = 64, 16, 64, 4, 0
    keys = ("channels", "blocks", "d_channels", "d_blocks", "batch", "patch", "hr_size", "steps", "windows")
    res = {
        "bench": "scaling",
        "device": a.device,
        "machine": machine_info(),
        "sizes": {k: getattr(a, k) for k in (*keys, "repeats")},
    }
    res.update(measure(a))
    res["projection"] = projection(a)
    print_report(res)
    emit(res, a.out)
    return res


if __name__ == "__main__":
    main()
