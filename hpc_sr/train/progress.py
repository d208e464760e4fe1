"""Where a run stands: step, non-finite streak, best validation PSNR and the early-stopping count (saved in
checkpoints)."""

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
    best_step: int = 0  # the step of best_psnr (0: none yet, or a checkpoint older than this field)
    stale_validations: int = 0  # validations in a row without a val PSNR gain > min_delta (early stopping)
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

    def validated(self, metrics: dict[str, Any], min_delta: float = 0.0) -> bool:
        """Record a validation at ``self.step``; True when its PSNR beats the best so far by more than
        ``min_delta`` dB (the early-stopping count restarts), else the count grows by one.

        ``metrics`` are the validator's, reduced over all ranks, so every rank counts alike.
        """
        self.last_val = metrics
        psnr = float(metrics["psnr"])
        improved = psnr > self.best_psnr + min_delta  # NaN never improves
        if psnr > self.best_psnr:
            self.best_psnr, self.best_step = psnr, self.step
        self.stale_validations = 0 if improved else self.stale_validations + 1
        return improved

    def patience_exhausted(self, patience: int) -> bool:
        """Early stopping is due: ``patience`` > 0 validations in a row without an improvement."""
        return patience > 0 and self.stale_validations >= patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "best_psnr": self.best_psnr,
            "best_step": self.best_step,
            "stale_validations": self.stale_validations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Counters of a checkpoint; those it lacks (older versions) start afresh."""
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.best_psnr = float(state.get("best_psnr", float("-inf")))
        self.best_step = int(state.get("best_step", 0))
        self.stale_validations = int(state.get("stale_validations", 0))


def due(step: int, every: int, last_step: int) -> bool:
    """A periodic action's cadence: every ``every`` steps (0 = never) and at the last step."""
    return step == last_step or (every > 0 and step % every == 0)
