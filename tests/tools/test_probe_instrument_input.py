"""tools/probe_instrument_input.py: the blur map of each pair, and a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.studies.ceiling import read_split
from tools.probe_instrument_input import lr_blur, main


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("probe")
    for seed, preset in enumerate(("deeplense_sr", "ground_space", "randomized")):
        simulate_to_shards(root / preset, 12, preset=preset, hr_size=16, seed=seed, shard_size=8)
    return [root / p for p in ("deeplense_sr", "ground_space", "randomized")]


def test_the_blur_is_zero_exactly_where_lr_is_the_block_mean(sets: list[Path]) -> None:
    mean_set, ground, mixed = sets
    sharp = lr_blur("deeplense_sr", read_split(str(mean_set), "train", 0)[2], 2)
    assert len(sharp) == 10 and not sharp.any()
    g = lr_blur("ground_space", read_split(str(ground), "train", 0)[2], 2)
    # seeing 0.45-0.75" over a 0.10" HR PSF, LR pixels of 0.10": 4.4-7.5 LR px, / 4
    assert bool(((g > 1.0) & (g < 1.95)).all())
    params = read_split(str(mixed), "train", 0)[2]
    from hpc_sr.data.lensing import param_names_of

    is_mean = params[:, param_names_of("randomized").index("lr_psf_fwhm")] == 0
    assert torch.equal(lr_blur("randomized", params, 2) == 0, is_mean)


def test_a_tiny_probe_runs_and_reports_every_set(sets: list[Path], tmp_path: Path) -> None:
    rob = tmp_path / "robustness.json"
    table = {"ground_space": {"ground_space": {"gain_db": 2.0}},
             "randomized": {"randomized": {"gain_db": -0.4}}}  # fmt: skip
    rob.write_text(json.dumps({"table": table}))
    out = tmp_path / "probe.json"
    doc = main([*map(str, sets), "--steps", "3", "--batch", "2", "--patch", "4", "--limit", "2",
                "--project-means", "--robustness", str(rob), "--out", str(out)])  # fmt: skip
    assert set(doc["results"]) == {"deeplense_sr", "ground_space", "randomized"}
    gs = doc["results"]["ground_space"]
    assert gs["share_of_in_domain"] == pytest.approx(gs["gain_db"] / 2.0)
    assert "share_of_in_domain" not in doc["results"]["deeplense_sr"]  # no in-domain model given
    assert "share_of_in_domain" not in doc["results"]["randomized"]  # its in-domain model lost to bicubic
    assert json.loads(out.read_text()) == doc
