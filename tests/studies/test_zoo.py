"""The zoo study end to end on a tiny simulated set: one arch, then the same arch with LR consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_sr.studies.zoo import ZOO, main, overrides


def test_overrides_are_the_zoo_recipe(tmp_path: Path) -> None:
    cfg = overrides("rrdb", ZOO["rrdb"], tmp_path / "d", tmp_path / "r", "rrdb_lrc", 1200, lr_consistent=True)
    assert f"data.path={tmp_path / 'd'}" in cfg and "model.g.lr_consistent=true" in cfg
    assert "train.val_every=600" in cfg and "log.name=rrdb_lrc" in cfg and "data.patch_size=24" in cfg


@pytest.mark.slow
def test_zoo_table_on_a_tiny_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--num", "20", "--steps", "2", "--limit", "2", "--only", "srresnet"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "zoo.json").read_text())
    assert doc["ceiling"]["split"] == "test" and doc["ceiling"]["ceiling"]["n"] == 2
    rows = doc["rows"]
    assert [(r["arch"], r["lr_consistent"]) for r in rows] == [("srresnet", False), ("srresnet", True)]
    for r in rows:
        assert r["n"] == 2 and r["params"] > 0 and abs(r["gain_db"] - (r["psnr"] - r["bicubic_psnr"])) < 1e-9
        assert r["ceiling_fraction"] == pytest.approx(r["gain_db"] / r["ceiling_gain_db"])
    assert (tmp_path / "runs" / "srresnet_lrc" / "checkpoints" / "latest").is_file()
    table = (tmp_path / "zoo.md").read_text()
    lines = table.splitlines()
    assert (
        len(lines) == 6
        and lines[2].startswith("| srresnet | no |")
        and lines[3].startswith("| srresnet | yes |")
    )
    assert lines[4].startswith("| bicubic |") and lines[5].startswith("| noise ceiling |")
    assert table in capsys.readouterr().out
    # a second call trains nothing again and gives the same numbers
    assert main(argv) == 0
    again = json.loads((tmp_path / "zoo.json").read_text())["rows"]
    assert [r["psnr"] for r in again] == [r["psnr"] for r in rows]
