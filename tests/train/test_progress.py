"""Run counters and the cadence rule every component uses."""

from __future__ import annotations

import pytest

from hpc_sr.errors import TrainingError
from hpc_sr.train.progress import TrainProgress, due


def test_due_every_k_steps_and_at_the_last_one_never_when_zero() -> None:
    assert [s for s in range(1, 11) if due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if due(s, 0, 10)] == [10]


def test_skip_streak_counts_resets_and_stops_the_run_naming_the_step() -> None:
    p = TrainProgress(step=7)
    assert p.skipped() == 1
    p.trained()
    assert (p.bad_steps, p.skipped_total) == (0, 1)
    p.skipped()
    p.check_streak(2)
    p.skipped()
    expected = r"2 consecutive non-finite losses \(train.max_bad_steps=2\).*step 7"
    with pytest.raises(TrainingError, match=expected):
        p.check_streak(2)


def test_best_psnr_and_state_round_trip() -> None:
    p = TrainProgress(step=3)
    p.validated({"psnr": 30.0})
    p.validated({"psnr": 29.0})
    assert (p.best_psnr, p.last_val) == (30.0, {"psnr": 29.0})
    q = TrainProgress()
    q.load_state_dict({**p.state_dict(), "unrelated": 1})
    assert (q.step, q.best_psnr, q.bad_steps) == (3, 30.0, 0)
    q.load_state_dict({"step": 5})  # v1 checkpoints: counters absent
    assert (q.step, q.best_psnr) == (5, float("-inf"))


def test_early_stop_count_min_delta_best_step_and_state_round_trip() -> None:
    p = TrainProgress(step=2)
    assert p.validated({"psnr": 30.0}) and (p.best_step, p.stale_validations) == (2, 0)
    p.step = 4
    assert not p.validated({"psnr": 30.05}, min_delta=0.1)  # a gain, but not more than min_delta
    assert (p.best_psnr, p.best_step, p.stale_validations) == (30.05, 4, 1)
    p.step = 6
    assert not p.validated({"psnr": float("nan")}) and p.stale_validations == 2
    assert p.patience_exhausted(2) and not p.patience_exhausted(3) and not p.patience_exhausted(0)
    p.step = 8
    assert p.validated({"psnr": 30.2}, min_delta=0.1) and p.stale_validations == 0
    q = TrainProgress()
    q.load_state_dict(p.state_dict())
    assert (q.step, q.best_psnr, q.best_step, q.stale_validations) == (8, 30.2, 8, 0)
    q.load_state_dict({"step": 5, "best_psnr": 31.0})  # written before early stopping: counts afresh
    assert (q.best_step, q.stale_validations) == (0, 0)
