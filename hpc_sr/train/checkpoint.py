"""Training checkpoints: atomic step directories, ``latest`` written last, keep-last-K + best, exact resume.

Layout: :mod:`hpc_sr.models.checkpoint_layout`. A directory is written as ``.tmp-step_XXXXXXXX`` and renamed
when complete, so a half-written checkpoint is never taken for a good one; stale temp directories are removed
at the next save. Loading uses ``torch.load(weights_only=True)``: a file carrying arbitrary pickled objects
is refused.

- :class:`CheckpointManager` writes, finds, prunes and reads step directories (every rank calls ``save``).
- :class:`TrainingCheckpointer` decides what a training checkpoint holds and when one is due, and restores a
  run from one (the trainer only says "save now" / "resume").

Before it publishes a step directory or ``latest``, the manager calls its ``guard`` (the run lock's check on
rank 0): a writer that has lost the run directory to another stops before it overwrites the new owner's work.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hpc_sr.atomic import atomic_write_text, fsync_dir
from hpc_sr.config import ModelConfig, flatten
from hpc_sr.dist import collectives as du
from hpc_sr.errors import CheckpointError, HpcSrError
from hpc_sr.models.artifacts import resolved_model
from hpc_sr.models.checkpoint_layout import (
    FORMAT,
    LATEST,
    META_FILE,
    TRAINER_FILE,
    VERSION,
    atomic_torch_save,
    complete_steps,
    is_complete,
    latest_step,
    load_trainer_state,
    read_meta,
    safe_load,
    step_dirname,
)
from hpc_sr.train import faults


def _no_guard() -> None:
    return None


class CheckpointManager:
    """Saves and finds the checkpoints of one run; every rank constructs one and calls :meth:`save`."""

    def __init__(
        self, run_dir: str | Path, keep_last: int = 3, rank: int = 0, guard: Callable[[], None] | None = None
    ) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)
        self.rank = rank
        self.guard = guard or _no_guard  # raises when this process may no longer publish into the run dir

    # -- finding ------------------------------------------------------------------------------------------
    def steps(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        return complete_steps(self.dir)

    def latest(self) -> Path | None:
        """The directory ``latest`` names, or the newest complete one if ``latest`` is missing or broken."""
        return latest_step(self.dir)

    def resolve(self, resume: str) -> Path | None:
        """``never`` -> None; ``auto`` -> latest if any; else a path (step dir or run dir) that must exist."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if (path / "checkpoints").is_dir():
            found = CheckpointManager(path).latest()
            if found is None:
                raise CheckpointError(
                    f"--resume {resume}: no complete checkpoint under {path / 'checkpoints'}"
                )
            return found
        if not is_complete(path):
            raise CheckpointError(f"--resume {resume}: not a complete checkpoint directory (no {META_FILE})")
        return path

    # -- saving -------------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        backend: Any,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        meta: dict[str, Any],
        device: torch.device,
    ) -> Path:
        """Collective save; raises CheckpointError on every rank if any rank failed (nothing half-written).

        When the guard says this process has lost the run directory (rank 0), every rank stops: rank 0
        raises the guard's error, the others a CheckpointError, and nothing is published.
        """
        final = self.dir / step_dirname(step)
        tmp = self.dir / f".tmp-{step_dirname(step)}"
        error: str | None = None
        superseded: HpcSrError | None = None
        try:
            if self.rank == 0:
                self.guard()  # before touching anything: temps in the directory may be the new owner's
                self.dir.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.dir.parent)  # checkpoints/ itself is durable in the run directory
                self._remove_stale_temps()
                tmp.mkdir()
        except OSError as exc:
            error = f"cannot create {tmp}: {exc}"
        except HpcSrError as exc:
            superseded, error = exc, str(exc)
        self._agree(error, superseded, f"checkpoint {final}: rank 0 could not create the directory", device)
        if self.rank == 0:
            faults.save_point("created", step, tmp)
        try:
            (tmp / "rng").mkdir(exist_ok=True)
            atomic_torch_save(rank_state, tmp / "rng" / f"rank_{self.rank:05d}.pt")
        except OSError as exc:
            error = f"rank {self.rank}: cannot write RNG state into {tmp}: {exc}"
        backend_state = backend.save(tmp)  # collective for DeepSpeed: every rank must call it
        du.barrier()
        if self.rank == 0:
            faults.save_point("rank_files", step, tmp)
        if self.rank == 0 and error is None:
            try:
                atomic_torch_save(
                    {**trainer_state, "backend_state": backend_state, "format": FORMAT, "version": VERSION},
                    tmp / TRAINER_FILE,
                )
                faults.save_point("trainer_file", step, tmp)
                atomic_write_text(
                    tmp / META_FILE, json.dumps({**meta, "step": step, "time": time.time()}, indent=2)
                )
                self._publish(tmp, final, step)
            except OSError as exc:
                error = f"cannot write checkpoint {final}: {exc}"
            except HpcSrError as exc:
                superseded, error = exc, str(exc)
        self._agree(error, superseded, f"checkpoint {final}: another rank failed to save", device)
        return final

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        """Rename the complete directory into place, then point ``latest`` at it (the guard before each)."""
        self.guard()
        replaced = None
        if final.exists():  # re-saving a step after a resume: swap the old directory out
            replaced = final.with_name(f".pruned-{final.name}")
            os.replace(final, replaced)
        os.replace(tmp, final)
        fsync_dir(self.dir)  # step_N durable before `latest` names it (latest's own rename fsyncs too)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        faults.save_point("renamed", step, final)
        self.guard()
        atomic_write_text(self.dir / LATEST, final.name + "\n")
        self._prune()

    @staticmethod
    def _agree(error: str | None, superseded: HpcSrError | None, fallback: str, device: torch.device) -> None:
        """Every rank learns whether any failed; this rank raises its own error, or the fallback."""
        if du.any_rank(error is not None, device):
            if superseded is not None:
                raise superseded
            raise CheckpointError(error or fallback)

    def _remove_stale_temps(self) -> None:
        for pattern in (".tmp-step_*", ".pruned-step_*"):
            for stale in self.dir.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)

    def _prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep_last :])
        best = best_checkpoint(steps)
        if best is not None:
            keep.add(best)
        latest = self.latest()
        if latest is not None:
            keep.add(latest)
        for path in steps:
            if path not in keep:
                remove_checkpoint_dir(path)

    # -- loading ------------------------------------------------------------------------------------------
    def load(self, step_dir: Path) -> dict[str, Any]:
        """Trainer state of a checkpoint (rank-independent part)."""
        return load_trainer_state(step_dir)

    def load_rank_state(self, step_dir: Path) -> dict[str, Any] | None:
        """This rank's RNG and data-stream state (None when the checkpoint was written by fewer ranks)."""
        path = step_dir / "rng" / f"rank_{self.rank:05d}.pt"
        return safe_load(path) if path.is_file() else None


def remove_checkpoint_dir(path: Path) -> None:
    """Rename out of the ``step_*`` namespace first, so a half-deleted directory never looks complete."""
    doomed = path.with_name(f".pruned-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def best_checkpoint(steps: list[Path]) -> Path | None:
    """The checkpoint with the highest validation PSNR recorded in its meta.json."""
    best, best_psnr = None, float("-inf")
    for path in steps:
        psnr = (read_meta(path).get("val") or {}).get("psnr")
        if psnr is not None and psnr > best_psnr:
            best, best_psnr = path, psnr
    return best


def model_config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "model.") -> list[str]:
    """``model.g.options.channels: checkpoint 8 vs config 16`` for every key that differs."""
    a, b = flatten(saved, prefix), flatten(current, prefix)
    return [
        f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def check_model_config(
    state: dict[str, Any], model_cfg: ModelConfig, scale: int, source: Path, generator_only: bool = False
) -> None:
    """Refuse a checkpoint whose model config differs from the run's, naming the keys."""
    saved_cfg = state.get("config", {})
    saved, current = resolved_model(saved_cfg.get("model", {})), resolved_model(model_cfg)
    if generator_only:
        saved, current = {"g": saved["g"]}, {"g": current["g"]}
    diff = model_config_diff(saved, current)
    saved_scale = saved_cfg.get("data", {}).get("scale", scale)
    if saved_scale != scale:
        diff.append(f"data.scale: checkpoint {saved_scale!r} vs config {scale!r}")
    if diff:
        raise CheckpointError(f"{source}: checkpoint of another model config: " + "; ".join(diff))


