"""What a training checkpoint holds, when one is due, and how a run resumes from one.

    checkpointer = TrainingCheckpointer(store, RunRecord(...), every=500, last_step=1000, pretrain_steps=200)
    if checkpointer.due(step):
        checkpointer.save(progress, backend, ema, stream, last_val)
    checkpointer.resume("auto", progress, backend, ema, stream)     # -> the step directory, or None

The files keep the v1 layout (``trainer.pt``: step, phase, config, world size, back-end and its state, EMA,
counters, the global data position; ``rng/rank_K.pt``: each rank's RNG and stream state; ``meta.json``), so
checkpoints written by earlier versions resume and load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpc_sr.config import ModelConfig
from hpc_sr.errors import CheckpointError
from hpc_sr.models.checkpoint_layout import step_dirname
from hpc_sr.train import rng
from hpc_sr.train.checkpoint import CheckpointManager, check_model_config
from hpc_sr.train.ema import ModelEMA
from hpc_sr.train.progress import TrainProgress, due


@dataclass(frozen=True)
class RunRecord:
    """What every checkpoint of a run says about the run itself (fixed for the run)."""

    config: dict[str, Any]  # the resolved config, plain data
    model: ModelConfig
    resolved_model: dict[str, Any]  # generator and discriminator specs
    scale: int
    world_size: int
    backend: str
    micro_batch: int
    data_values: dict[str, Any] | None = None  # the training LR's value convention (hpc_sr.data.values)


class TrainingCheckpointer:
    """Owns the contents and the cadence of training checkpoints, and resuming from them."""

    def __init__(
        self,
        store: CheckpointManager,
        record: RunRecord,
        *,
        every: int,
        last_step: int,
        pretrain_steps: int,
        device: torch.device,
    ) -> None:
        self.store, self.record = store, record
        self.every, self.last_step, self.pretrain_steps = every, last_step, pretrain_steps
        self.device = device

    def due(self, step: int) -> bool:
        return due(step, self.every, self.last_step)

    def saved_at(self, step: int) -> bool:
        """Whether the newest checkpoint is of ``step`` already."""
        latest = self.store.latest()
        return latest is not None and latest.name == step_dirname(step)

    def save(self, progress: TrainProgress, backend: Any, ema: ModelEMA | None, stream: Any) -> Path:
        """A collective save of the run at ``progress.step`` (every rank calls it)."""
        r, step = self.record, progress.step
        phase = "pretrain" if step <= self.pretrain_steps else "gan"
        data_state = stream.state_dict()
        trainer_state = {
            "phase": phase,
            "config": r.config,
            "world_size": r.world_size,
            "backend": r.backend,
            "ema": ema.state_dict() if ema is not None else None,
            **progress.state_dict(),
            "data_values": r.data_values,
            "data": {**data_state, "micro_batch": r.micro_batch, "world_size": r.world_size}
            if "position" in data_state
            else {},
        }
        rank_state = {"rng": rng.rng_state(), "stream": data_state}
        meta = {
            "phase": phase,
            "world_size": r.world_size,
            "backend": r.backend,
            "val": {k: v for k, v in progress.last_val.items() if isinstance(v, int | float)},
            "model": r.resolved_model,
            "scale": r.scale,
        }
        return self.store.save(step, backend, trainer_state, rank_state, meta, self.device)

    def resume(
        self, resume: str, progress: TrainProgress, backend: Any, ema: ModelEMA | None, stream: Any
    ) -> Path | None:
        """Restore models, optimisers, EMA, counters, RNG and the data position from ``resume`` (``auto``:
        the latest checkpoint if any; ``never``; or a path). Returns the step directory, or None."""
        path = self.store.resolve(resume)
        if path is None:
            return None
        state = self.store.load(path)
        if state.get("backend", "ddp") != backend.name:
            raise CheckpointError(
                f"{path}: a {state.get('backend')} checkpoint cannot resume with "
                f"dist.backend={backend.name}; export its generator (hpc-sr ckpt export) and start from "
                f"train.init_g"
            )
        check_model_config(state, self.record.model, self.record.scale, path)
        backend.load(path, state["backend_state"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        progress.load_state_dict(state)
        rank_state = self.store.load_rank_state(path)
        same_world = int(state.get("world_size", 1)) == self.record.world_size
        if rank_state is not None and same_world:
            rng.set_rng_state(rank_state["rng"])
            stream.load_state_dict(rank_state["stream"])
        elif (state.get("data") or {}).get("position") is not None and hasattr(stream, "load_global_offset"):
            stream.load_global_offset(state["data"], self.record.world_size)
        return path
