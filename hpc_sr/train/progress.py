"""Where a run stands: step, non-finite streak, best validation PSNR (saved in checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpc_sr.errors import TrainingError


@dataclass
class TrainProgress:
    """The run's counters; :meth:`state_dict` is what a checkpoint keeps of them."""

    step: int = 0
    bad_steps: int = 0  # consecutive skipped (non-finite) steps
    skipped_total: int = 0
    best_psnr: float = float("-inf")
    last_val: dict[str, Any] = field(default_factory=dict)

    def trained(self) -> None:
        self.bad_steps = 0

    def skipped(self) -> int:
        """One more step dropped on every rank; returns how many in a row."""
        self.bad_steps += 1
        self.skipped_total += 1
        return self.bad_steps

    def check_streak(self, max_bad_steps: int) -> None:
        """``train.max_bad_steps`` skipped steps in a row stop the run."""
        if self.bad_steps >= max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps} consecutive non-finite losses (train.max_bad_steps={max_bad_steps}); last "
                f"at step {self.step}"
            )

    def validated(self, metrics: dict[str, Any]) -> None:
        self.last_val = metrics
        self.best_psnr = max(self.best_psnr, metrics["psnr"])

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "bad_steps": self.bad_steps, "best_psnr": self.best_psnr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.best_psnr = float(state.get("best_psnr", float("-inf")))


def due(step: int, every: int, last_step: int) -> bool:
    """A periodic action's cadence: every ``every`` steps (0 = never) and at the last step."""
    return step == last_step or (every > 0 and step % every == 0)
