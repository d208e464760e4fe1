"""Learning-rate schedules are pure functions of the step; each phase runs its own schedule."""

from __future__ import annotations

import math

import pytest

from hpc_sr.config import TrainConfig
from hpc_sr.train.schedule import lr_at, phase_lrs


def test_warmup_is_linear_then_cosine_decays_to_the_floor() -> None:
    assert [lr_at(s, 1.0, 100, warmup=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 1.0, 100, warmup=4) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 100, min_ratio=0.1) == pytest.approx(0.1)
    mid = lr_at(50, 1.0, 100, min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_step_schedule_halves_at_half_and_three_quarters() -> None:
    values = [lr_at(s, 1.0, 100, kind="step") for s in (0, 49, 50, 74, 75, 99)]
    assert values == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_constant_and_unknown_schedules() -> None:
    assert lr_at(77, 3e-4, 100, kind="constant") == 3e-4
    with pytest.raises(ValueError, match="train.schedule: unknown schedule 'linear'"):
        lr_at(1, 1.0, 10, kind="linear")


def test_each_phase_restarts_its_own_schedule_and_d_only_with_a_gan_phase() -> None:
    t = TrainConfig(steps=30, pretrain_steps=10, lr_g=1.0, lr_d=0.5, schedule="cosine", min_lr_ratio=0.0)
    assert phase_lrs(t, 0, gan=False) == {"g": 1.0}
    assert phase_lrs(t, 9, gan=True)["g"] == pytest.approx(lr_at(9, 1.0, 10, kind="cosine", min_ratio=0.0))
    first_gan = phase_lrs(t, 10, gan=True)
    assert first_gan == {"g": 1.0, "d": 0.5}  # the GAN phase starts at the top of its own cosine
    assert phase_lrs(t, 20, gan=True)["d"] == pytest.approx(0.25)  # half-way through 20 GAN steps


def test_schedules_warm_up_and_decay() -> None:
    assert lr_at(0, 1.0, 100, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 100, warmup=10, kind="cosine") == pytest.approx(1.0)
    assert lr_at(100, 1.0, 100, warmup=10, kind="cosine", min_ratio=0.01) == pytest.approx(0.01)
    mid = lr_at(55, 1.0, 100, warmup=10, kind="cosine", min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(80, 1.0, 100, kind="step") == pytest.approx(0.25)
    assert lr_at(50, 1.0, 100, kind="constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(50, 1.0, 100, kind="linear")
