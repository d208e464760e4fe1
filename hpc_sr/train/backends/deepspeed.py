"""DeepSpeed back-end: one engine per model (G, D), ZeRO 0/1/2, fp32/bf16/fp16, the same interface as DDP.

    backend = DeepSpeedBackend(cfg, device, world_size)   # dist.backend=deepspeed
    backend.add("g", G, lr_g); backend.add("d", D, lr_d)  # deepspeed.initialize with a client torch AdamW

The DeepSpeed config comes from hpc_sr's config (:func:`build_ds_config`), optionally starting from a JSON
file (``dist.deepspeed_config``, see configs/deepspeed/); a file value that disagrees with hpc_sr's config
is an error naming the key. Facts this module relies on (measured, DeepSpeed 0.19.8): D is frozen, called
through its raw
module in the G step; ``engine.step()`` is called after every micro-batch backward (it only updates at the
accumulation boundary, which we set explicitly so that a skipped step cannot shift it); every rank calls
``save_checkpoint``; each engine saves into its own directory, with a relative tag in its ``latest`` file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hpc_sr.config import Config
from hpc_sr.errors import CheckpointError, TrainingError
from hpc_sr.models.checkpoint_layout import DEEPSPEED_TAG as TAG
from hpc_sr.models.checkpoint_layout import engine_dir
from hpc_sr.train.backends.base import Backend, make_optimizer

DEFAULT_BUCKET = 5 * 10**8  # DeepSpeed's default ZeRO bucket (elements)
KEEP_SHM_OP = "HPC_SR_DS_SHM_OP"  # set to 1 to let DeepSpeed build its CPU shared-memory comm op
_FP16_DEFAULTS = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                  "min_loss_scale": 1}


# ----------------------------------------------------------------------------------------------- config
def hpc_sr_ds_values(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed keys that hpc_sr's config decides, as dotted paths."""
    t = cfg.train
    parts = world_size * t.grad_accum
    if cfg.data.batch_size % parts:
        raise TrainingError(f"data.batch_size={cfg.data.batch_size} is not divisible by world size "
                            f"{world_size} x train.grad_accum={t.grad_accum}")
    return {
        "train_batch_size": cfg.data.batch_size,
        "train_micro_batch_size_per_gpu": cfg.data.batch_size // parts,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(t.grad_clip),
        "zero_optimization.stage": cfg.dist.zero_stage,
        "bf16.enabled": t.precision == "bf16",
        "fp16.enabled": t.precision == "fp16",
    }


_SOURCE = {
    "train_batch_size": "data.batch_size",
    "train_micro_batch_size_per_gpu": "data.batch_size / (world size x train.grad_accum)",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.grad_clip",
    "zero_optimization.stage": "dist.zero_stage",
    "bf16.enabled": "train.precision",
    "fp16.enabled": "train.precision",
}


def _get(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def read_ds_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise TrainingError(f"dist.deepspeed_config: file not found: {p}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"dist.deepspeed_config: {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TrainingError(f"dist.deepspeed_config: {p} must hold a JSON object")
    return data


def build_ds_config(cfg: Config, world_size: int, base: dict[str, Any] | None = None,
                    source: str = "") -> dict[str, Any]:
    """DeepSpeed config dict for ``cfg``: ``base`` (or the JSON file ``dist.deepspeed_config``) filled with
    hpc_sr's values. A value in the file that differs from hpc_sr's raises TrainingError naming every such key
    with both values ("auto" or a missing key is filled in)."""
    if base is None and cfg.dist.deepspeed_config:
        source = cfg.dist.deepspeed_config
        base = read_ds_json(source)
    if cfg.train.precision == "fp16" and cfg.dist.zero_stage == 0:
        raise TrainingError("train.precision=fp16 with dist.zero_stage=0 is refused: DeepSpeed's ZeRO-0 fp16 "
                            "optimiser does not scale the loss before backward but unscales the gradients "
                            "(measured: updates 2^16 too small); use dist.zero_stage=1 or 2, bf16, or "
                            "dist.backend=ddp")
    ds = copy.deepcopy(base or {})
    wanted = hpc_sr_ds_values(cfg, world_size)
    clashes = []
    for key, value in wanted.items():
        have = _get(ds, key)
        if have is None or have == "auto":
            continue
        if not _same(have, value):
            clashes.append(f"{key}: {source or 'deepspeed config'} has {have!r}, hpc_sr config "
                           f"({_SOURCE[key]}) gives {value!r}")
    if clashes:
        raise TrainingError("DeepSpeed config disagrees with the hpc_sr config: " + "; ".join(clashes))
    for key, value in wanted.items():
        _set(ds, key, value)
    if cfg.train.precision == "fp16":
        for key, value in _FP16_DEFAULTS.items():
            ds["fp16"].setdefault(key, value)
    ds.setdefault("zero_allow_untested_optimizer", True)  # the client torch AdamW (compiles nothing)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def engine_config(ds_config: dict[str, Any], module: nn.Module) -> dict[str, Any]:
    """Per-engine copy of the config: ZeRO buckets no larger than the model unless the file sets them (the
    DeepSpeed default, 5e8 elements, makes ZeRO 2 allocate a 2 GB gradient buffer even for a tiny model)."""
    cfg = copy.deepcopy(ds_config)
    zero = cfg.setdefault("zero_optimization", {})
    if zero.get("stage", 0) >= 1:
        numel = sum(p.numel() for p in module.parameters())
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            if zero.get(key) in (None, "auto"):
                # a multiple of 512: DeepSpeed asserts buckets are multiples of its alignment factor
                zero[key] = int(min(DEFAULT_BUCKET, -(-max(numel, 2**16) // 512) * 512))
    return cfg


# ----------------------------------------------------------------------------------------------- set-up
def _skip_shm_comm_op(device: torch.device) -> None:
    """On CPU DeepSpeed JIT-compiles a shared-memory all-reduce op (40-90 s) that only its inference path
    uses; mark it unavailable so training starts at once on a bare machine (gloo does the reductions)."""
    if device.type != "cpu" or os.environ.get(KEEP_SHM_OP) == "1":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _drop_stale_world_group() -> None:
    """DeepSpeed caches a clone of the world group in a module global; when this process destroyed and
    re-created its default group (several runs in one process: tests, benchmarks), the clone is dead."""
    from deepspeed.utils import groups

    cached = getattr(groups, "_WORLD_GROUP", None)
    if cached is None:
        return
    try:
        dist.get_global_rank(cached, 0)
    except (ValueError, RuntimeError):
        groups._WORLD_GROUP = None


def ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group: start a one-process one (no port) when the run is not distributed,
    and the launcher variables it checks (RANK, WORLD_SIZE, LOCAL_RANK) when no launcher set them."""
    if dist.is_initialized():
        return
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    store = dist.HashStore()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)


def precision_supported(precision: str) -> bool:
    """Whether DeepSpeed's accelerator on this machine runs ``train.precision`` (DeepSpeed refuses the engine
    otherwise; on CPU, fp16 needs oneDNN fp16 support, i.e. AVX512-FP16 or AMX, which depends on the host)."""
    if precision == "fp32":
        return True
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return bool(acc.is_fp16_supported() if precision == "fp16" else acc.is_bf16_supported())


class DeepSpeedBackend(Backend):
    """One DeepSpeed engine per registered model, each with a client torch AdamW."""

    name = "deepspeed"
    finite_check_before_backward = True  # keep NaN out of ZeRO's partitioned gradient buffers

    def __init__(self, cfg: Config, device: torch.device, world_size: int) -> None:
        super().__init__(cfg, device, world_size)
        if cfg.train.compile:
            raise TrainingError("train.compile=true is not supported with dist.backend=deepspeed")
        if not precision_supported(cfg.train.precision):
            p = cfg.train.precision
            raise TrainingError(
                f"train.precision={p} with dist.backend=deepspeed: DeepSpeed's accelerator reports that this "
                f"machine does not support {p} (on CPU, fp16 needs oneDNN fp16: AVX512-FP16 or AMX); use "
                "train.precision=bf16 or fp32, or dist.backend=ddp (torch autocast)"
            )
        self.ds_config = build_ds_config(cfg, world_size)
        self._names: list[str] = []
        self._engines: dict[str, Any] = {}

    def add(self, name: str, module: nn.Module, lr: float) -> None:
        import deepspeed

        t = self.cfg.train
        _skip_shm_comm_op(self.device)
        ensure_process_group(self.device)
        _drop_stale_world_group()
        module.to(self.device)
        if t.channels_last:
            module.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(module.parameters(), lr, t.betas, t.weight_decay)
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, dist_init_required=False,
                                          config=engine_config(self.ds_config, module))
        self._engines[name] = engine
        self._names.append(name)

    def engine(self, name: str) -> Any:
        return self._engines[name]

    def model(self, name: str) -> nn.Module:
        return self._engines[name]

    def module(self, name: str) -> nn.Module:
        return self._engines[name].module

    def accumulate(self, name: str, last_micro: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # the engine reduces at the boundary set in backward()

    def backward(self, name: str, loss: torch.Tensor, last_micro: bool) -> None:
        """The raw micro-batch loss: the engine divides by the accumulation steps itself."""
        engine = self._engines[name]
        engine.set_gradient_accumulation_boundary(last_micro)
        engine.backward(loss)
        if not last_micro:
            engine.step()  # counts the micro-step; the optimiser only steps at the boundary

    def step(self, name: str) -> float:
        """Optimiser step at the boundary; the global grad norm (DeepSpeed's, or for ZeRO 0 without clipping,
        where DeepSpeed computes none, the norm of the all-reduced module gradients)."""
        engine = self._engines[name]
        own = self._module_grad_norm(name) if self.cfg.dist.zero_stage == 0 else float("nan")
        engine.step()
        norm = engine.get_global_grad_norm()
        return own if norm is None else float(norm)

    def _module_grad_norm(self, name: str) -> float:
        grads = [p.grad for p in self.module(name).parameters() if p.grad is not None]
        if not grads:
            return float("nan")
        norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
        return float(torch.linalg.vector_norm(norms))

    def zero_grad(self, name: str) -> None:
        self._engines[name].zero_grad()
        optimizer = self._engines[name].optimizer
        if optimizer is not None and hasattr(optimizer, "zero_grad"):
            optimizer.zero_grad()

    def param_groups(self, name: str) -> list[dict[str, Any]]:
        return self._engines[name].optimizer.param_groups

    def set_lr(self, name: str, lr: float) -> None:
        for group in self.param_groups(name):
            group["lr"] = lr

    def save(self, directory: Path) -> dict[str, Any]:
        """Collective: every rank writes its part of each engine into ``directory/engine_<name>/state``."""
        for name in self._names:
            self._engines[name].save_checkpoint(str(engine_dir(directory, name)), tag=TAG)
        return {"engines": list(self._names), "tag": TAG, "zero_stage": self.cfg.dist.zero_stage,
                "precision": self.cfg.train.precision, "world_size": self.world_size}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        """Resume every engine; refuses (naming both values) a checkpoint of another back-end, ZeRO stage or
        precision, and a ZeRO 1/2 checkpoint of another world size: DeepSpeed would fail obscurely or not at
        all."""
        if "engines" not in state:
            raise CheckpointError(f"{directory}: not a DeepSpeed checkpoint (written by another back-end); "
                                  f"resume it with that back-end or export its weights")
        for key, now in (("zero_stage", self.cfg.dist.zero_stage), ("precision", self.cfg.train.precision)):
            if state.get(key) != now:
                source = "dist.zero_stage" if key == "zero_stage" else "train.precision"
                raise CheckpointError(f"{directory}: checkpoint {key} {state.get(key)!r} vs config {source} "
                                      f"{now!r}; DeepSpeed resumes only the same setting")
        saved_world = int(state.get("world_size", self.world_size))
        saved_zero = int(state["zero_stage"])
        if saved_world != self.world_size and saved_zero > 0:
            raise CheckpointError(
                f"{directory}: a ZeRO-{saved_zero} checkpoint written by {saved_world} ranks cannot be "
                f"resumed on {self.world_size} (DeepSpeed cannot re-partition ZeRO optimiser state); resume "
                f"on {saved_world} ranks, or export the weights (export_generator, ema=False) and start anew")
        for name in self._names:
            if name not in state.get("engines", []):
                continue
            path = engine_dir(directory, name)
            tag = state.get("tag", TAG)
            loaded, _ = self._engines[name].load_checkpoint(str(path), tag=tag, load_optimizer_states=True,
                                                            load_lr_scheduler_states=False)
            if loaded is None:
                raise CheckpointError(f"{path}: DeepSpeed could not load engine {name!r} (tag {tag!r})")


# ----------------------------------------------------------------------------------------------- export
# ----------------------------------------------------------------------------------------------- benchmark
def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimiser inside DeepSpeed's wrappers (ZeRO, bf16, fp16), or the optimiser itself."""
    seen = 0
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) and seen < 4:
        optimizer, seen = getattr(optimizer, "optimizer", None), seen + 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def optimizer_state_mb(backend: Backend, name: str) -> float:
    """MiB this rank holds for model ``name``'s optimiser: moment buffers plus any separate fp32 master copy
    (what ZeRO 1/2 partition across ranks). Works for DDPBackend and DeepSpeedBackend (bench rows)."""
    if isinstance(backend, DeepSpeedBackend):
        optimizer = inner_optimizer(backend.engine(name).optimizer)
    else:
        optimizer = getattr(backend, "optimizer", lambda _: None)(name)
    if optimizer is None:
        return float("nan")
    module_params = {id(p) for p in backend.module(name).parameters()}
    tensors = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [p for g in optimizer.param_groups for p in g["params"] if id(p) not in module_params]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def bench_overrides(zero_stage: int, precision: str = "fp32") -> list[str]:
    """Dotted overrides that make a Trainer use this back-end (e.g. for tools/bench_train.py)."""
    return ["dist.backend=deepspeed", f"dist.zero_stage={zero_stage}", f"train.precision={precision}"]
