"""Lensing presets (hpc_sr.data.presets): the shipped ones and resolve_preset."""

from __future__ import annotations

import dataclasses

import pytest

from hpc_sr.data.presets import PRESETS, SAMPLED_NAMES, LensPreset, resolve_preset
from hpc_sr.errors import DataError


def test_shipped_presets_are_named_by_their_keys_and_have_every_prior() -> None:
    assert sorted(PRESETS) == ["deeplense_sr", "ground_space", "model_i", "randomized", "wide"]
    for name, preset in PRESETS.items():
        assert preset.name == name and len(preset.priors()) == len(SAMPLED_NAMES)
    assert [n for n, p in sorted(PRESETS.items()) if not p.lr_is_mean] == ["ground_space", "randomized"]


def test_resolve_preset_takes_a_name_or_a_preset() -> None:
    assert resolve_preset("wide") is PRESETS["wide"]
    custom = dataclasses.replace(PRESETS["deeplense_sr"], name="custom", pixel_scale=0.1)
    assert resolve_preset(custom) is custom


def test_unknown_preset_names_it_and_the_valid_ones() -> None:
    with pytest.raises(
        DataError,
        match="unknown lensing preset .nope.; valid presets: deeplense_sr, ground_space, model_i, "
        "randomized, wide",
    ):
        resolve_preset("nope")
    with pytest.raises(DataError, match="pixel_scale=0.0 must be > 0"):
        dataclasses.replace(PRESETS["wide"], pixel_scale=0.0)
    assert isinstance(PRESETS["model_i"], LensPreset)
