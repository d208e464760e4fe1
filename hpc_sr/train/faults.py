"""Fault-injection hooks for the reliability tests, gathered in one place (all off unless a variable is set).

- ``HPC_SR_FAULT_SAVE_PAUSE=<stage>[@<step>]``: a checkpoint save touches ``.fault-<stage>-<step>`` beside the
  checkpoint directory and sleeps at that stage (the test then SIGKILLs the run). Stages: :data:`SAVE_STAGES`.
- ``HPC_SR_FAULT_NAN_STEPS=3,4``: the generator loss of those optimiser steps is made NaN.
- ``HPC_SR_FAULT_STEP_SLEEP=0.5``: sleep that long after every optimiser step (lets a test aim a signal at a
step).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hpc_sr.dist.env import env_float
from hpc_sr.errors import EnvironmentVariableError

SAVE_PAUSE = "HPC_SR_FAULT_SAVE_PAUSE"
NAN_STEPS = "HPC_SR_FAULT_NAN_STEPS"
STEP_SLEEP = "HPC_SR_FAULT_STEP_SLEEP"
SAVE_STAGES = ("created", "rank_files", "trainer_file", "renamed")


def save_point(stage: str, step: int, directory: Path) -> None:
    """Pause forever at ``stage`` of the save of ``step`` when HPC_SR_FAULT_SAVE_PAUSE asks for it."""
    wanted = os.environ.get(SAVE_PAUSE, "")
    if not wanted:
        return
    name, _, at = wanted.partition("@")
    if name not in SAVE_STAGES or (at and not at.isdigit()):
        raise EnvironmentVariableError(
            f"environment variable {SAVE_PAUSE}={wanted!r}: expected <stage>[@<step>] with stage one of "
            f"{list(SAVE_STAGES)}"
        )
    if name == stage and (not at or int(at) == step):
        (directory.parent / f".fault-{stage}-{step}").touch()
        time.sleep(3600)


def nan_steps() -> set[int]:
    """Optimiser steps (1-based) whose generator loss is made NaN."""
    raw = os.environ.get(NAN_STEPS, "")
    try:
        return {int(s) for s in raw.split(",") if s.strip()}
    except ValueError:
        raise EnvironmentVariableError(
            f"environment variable {NAN_STEPS}={raw!r}: expected comma-separated step numbers"
        ) from None


def step_sleep_s() -> float:
    """Seconds to sleep after each optimiser step (0 unless HPC_SR_FAULT_STEP_SLEEP is set)."""
    return env_float(STEP_SLEEP, 0.0, positive=False)
