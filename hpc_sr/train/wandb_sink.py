"""Weights & Biases sink of :class:`~hpc_sr.train.logger.RunLogger` (rank 0, ``log.wandb.enabled``).

W&B gets what TensorBoard gets: the same scalar tags at the same steps, the comparison images, the resolved
config (``config.yaml`` of the run directory) and the final hparam metrics (run summary). Its files go under
``<run_dir>/wandb/`` (``offline-run-*`` by default, for ``wandb sync`` on a login node) and its run id is kept
in ``<run_dir>/wandb_run_id``, so a resumed or requeued job continues the same W&B run. ``wandb`` is imported
only here, only when enabled.

Steps are the trainer's optimiser steps: a run resumed from an older checkpoint than its last logged step
logs those steps again (online W&B keeps the first values and warns).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hpc_sr.atomic import atomic_write_text
from hpc_sr.config import ConfigError, WandbConfig

RUN_ID_FILE = "wandb_run_id"
MISSING = (
    "log.wandb.enabled=true needs the wandb package, which is not installed: "
    'pip install -e ".[wandb]" (or pip install wandb), or set log.wandb.enabled=false'
)


def wandb_mode(cfg: WandbConfig) -> str:
    """``log.wandb.mode``, unless ``WANDB_MODE`` is set in the environment (then that)."""
    return os.environ.get("WANDB_MODE") or cfg.mode


def wandb_wanted(cfg: WandbConfig) -> bool:
    """Whether the run logs to W&B; raises ConfigError when it should but wandb is not installed.

    Cheap (no import): every rank calls it, so a missing package fails all ranks alike, not rank 0 alone.
    """
    if not cfg.enabled or wandb_mode(cfg) == "disabled":
        return False
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(MISSING)
    return True


class WandbSink:
    """One W&B run, started (or resumed) in ``run_dir``; see the module docstring."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, run_name: str) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(MISSING) from exc
        self._image_type = wandb.Image
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else ""
        config_file = run_dir / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            name=cfg.name or run_name,
            tags=list(cfg.tags),
            config=config,
            id=run_id or None,
            resume="allow",
            dir=str(run_dir),
            mode=wandb_mode(cfg),  # type: ignore[arg-type]  # WANDB_MODE may hold an alias (dryrun)
            reinit="create_new",  # never log into (or finish) another run this process has open
        )
        if self.run.id != run_id:
            atomic_write_text(id_file, self.run.id + "\n")

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Values of one step (calls with the same step merge into one W&B history row)."""
        self.run.log(values, step=step)

    def image(self, tag: str, step: int, image_hwc: np.ndarray) -> None:
        self.log(step, {tag: self._image_type(image_hwc)})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self) -> None:
        """Finish the run; marked failed when called while an exception propagates (a ``finally``)."""
        self.run.finish(exit_code=0 if sys.exc_info()[1] is None else 1)
