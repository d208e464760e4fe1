"""The robustness study end to end on tiny simulated sets: a model per preset, a cross-preset matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_sr.studies.common import StudyArgumentError
from hpc_sr.studies.robustness import check_presets, main, parse_preset_models


def test_parse_models_names_the_bad_item() -> None:
    assert parse_preset_models(["wide=runs/w"]) == {"wide": "runs/w"}
    with pytest.raises(StudyArgumentError, match="--model: unknown lensing preset 'nope'; valid presets: "):
        parse_preset_models(["nope=x"])
    with pytest.raises(StudyArgumentError, match="--model 'wide': expected PRESET=RUN"):
        parse_preset_models(["wide"])
    with pytest.raises(StudyArgumentError, match="--model 'wide=b': the name 'wide' is taken"):
        parse_preset_models(["wide=a", "wide=b"])
    with pytest.raises(StudyArgumentError, match="--presets: unknown lensing preset 'wid'"):
        check_presets(["wide", "wid"], "--presets")
    with pytest.raises(SystemExit):
        main(["--out", "unused", "--model", "nope=x"])


@pytest.mark.slow
def test_robustness_matrix_on_two_tiny_presets(tmp_path: Path) -> None:
    """A mean-LR preset beside a two-instrument one: the latter's model is trained without the LR-consistency
    layer (refused there) and its ceiling is the noise-free HR (no projection onto a blurred LR)."""
    argv = ["--out", str(tmp_path), "--presets", "deeplense_sr,ground_space", "--num", "20",
            "--hr-size", "48", "--steps", "2", "--limit", "2",
            "--model", "deeplense_sr=deeplense-small"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads((tmp_path / "robustness.json").read_text())
    assert out["models"]["deeplense_sr"] == "deeplense-small"
    run = tmp_path / "runs" / "ground_space"
    assert (run / "checkpoints" / "latest").is_file()  # trained: none was given
    assert "lr_consistent: false" in (run / "config.yaml").read_text()
    table = out["table"]
    assert set(table) == {"deeplense_sr", "ground_space"} and all(
        set(r) == set(table) for r in table.values()
    )
    for row in table.values():
        for c in row.values():
            assert c["n"] == 2 and abs(c["gain_db"] - (c["psnr"] - c["bicubic_psnr"])) < 1e-9
        assert 0 < row["deeplense_sr"]["ceiling_gain_db"] < 5  # the mean-LR ceiling: HR noise LR cannot show
        assert row["ground_space"]["ceiling_gain_db"] > 5  # the seeing is what SR must undo
    # the shipped model beats bicubic on its own preset's test images
    assert table["deeplense_sr"]["deeplense_sr"]["gain_db"] > 0
    md = (tmp_path / "robustness.md").read_text()
    assert "| ground_space |" in md and "noise ceiling" in md
    shares = md.split("Share of the in-domain model's gain")[1]
    assert "| deeplense_sr | 100% |" in shares and shares.count("100%") == 2
    # a second call reuses data and runs (nothing retrained) and gives the same numbers
    assert main(argv) == 0
    assert json.loads((tmp_path / "robustness.json").read_text())["table"] == table
