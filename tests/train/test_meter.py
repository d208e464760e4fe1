"""The step meter sums device values between log lines and reads them once; rates and ETA per window."""

from __future__ import annotations

import time

import pytest
import torch

from hpc_sr.train.meter import StepMeter, format_eta


def test_means_are_per_key_over_the_steps_that_reported_it() -> None:
    m = StepMeter()
    m.add({"loss": torch.tensor(1.0), "norm": 4.0}, images=8, data_time=0.0)
    m.add({"loss": torch.tensor(3.0)}, images=8, data_time=0.0)
    m.add({}, images=0, data_time=0.0)  # a skipped step: counts as a step, adds no image and no value
    assert m.means() == {"loss": 2.0, "norm": 4.0}
    assert (m.steps, m.images) == (3, 16)


def test_rates_and_eta_follow_the_window_and_reset_starts_a_new_one() -> None:
    m = StepMeter()
    m.add({}, images=10, data_time=0.01)
    time.sleep(0.05)
    r = m.rates(steps_left=4)
    assert 0 < r["images_per_s"] <= 10 / 0.05
    assert 0 < r["data_wait_share"] <= 0.01 / 0.05
    assert r["eta_s"] == pytest.approx(4 / (1 / (10 / r["images_per_s"])), rel=0.01)
    m.reset()
    assert (m.steps, m.images, m.means()) == (0, 0, {})
    assert m.rates(5)["eta_s"] != m.rates(5)["eta_s"]  # no step yet: NaN


def test_format_eta() -> None:
    assert format_eta(3725) == "1:02:05"
    assert format_eta(float("nan")) == "?"
    assert format_eta(-1) == "?"
