"""The config is checked once per run, and what it names is resolved into a plan the trainer builds from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hpc_sr.train.components as components
import hpc_sr.train.trainer as trainer_module
from hpc_sr.config import ConfigError, load_config
from hpc_sr.errors import CheckpointError
from hpc_sr.train.components import check_config, with_noise_inputs
from hpc_sr.train.entry import run_training
from tests.conftest import tiny_overrides


def test_plan_resolves_specs_terms_and_samples() -> None:
    plan = check_config(load_config(None, ["train.steps=10", "train.pretrain_steps=5"]))
    assert plan.generator["arch"] == "srresnet" and plan.discriminator["arch"] == "srgan"
    assert [t.name for t in plan.terms] == ["pixel", "adversarial"]
    assert (plan.adversarial_kind, plan.samples_per_input) == ("ragan", 1)
    no_gan = check_config(load_config(None, ["train.steps=5", "train.pretrain_steps=5"]))
    assert no_gan.discriminator is None


def test_an_unknown_option_fails_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.g\.options\.blcoks; did you mean 'blocks'"):
        check_config(load_config(None, ["model.g.options.blcoks=2"]))


def test_a_training_run_checks_its_config_exactly_once(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def counting(cfg):  # noqa: ANN001, ANN202
        calls.append(1)
        return check_config(cfg)

    monkeypatch.setattr(components, "check_config", counting)
    monkeypatch.setattr(trainer_module, "check_config", counting)
    cfg = load_config(None, tiny_overrides(tiny_shards, tmp_path, steps=2, pretrain=2))
    assert run_training(cfg) == 0
    assert len(calls) == 1


def test_noise_inputs_grow_exactly_one_first_layer() -> None:
    state = {"head.weight": torch.ones(4, 1, 3, 3), "body.weight": torch.ones(4, 4, 3, 3)}
    target = {"head.weight": torch.zeros(4, 3, 3, 3), "body.weight": torch.zeros(4, 4, 3, 3)}
    grown = with_noise_inputs(state, target, 2, Path("src"))
    assert grown["head.weight"].shape == (4, 3, 3, 3) and grown["head.weight"][:, 1:].abs().sum() == 0
    with pytest.raises(CheckpointError, match="src: cannot start a stochastic generator.*found none"):
        with_noise_inputs(state, target, 1, Path("src"))
