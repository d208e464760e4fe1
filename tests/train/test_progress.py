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
