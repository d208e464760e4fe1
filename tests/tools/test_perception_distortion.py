"""tools/perception_distortion.py end to end on a tiny simulated set with two tiny generators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.models.registry import build_generator
from hpc_sr.train.checkpoint import generator_payload
from tools.perception_distortion import CEILING, SAMPLE, main, parse_named, parse_scales

TINY = {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}}


def save_tiny(path: Path, seed: int | None) -> Path:
    """A tiny x2 generator file; with ``seed`` its last layer is random (not bicubic any more)."""
    g = build_generator(TINY["arch"], TINY["options"], 2)
    if seed is not None:
        torch.manual_seed(seed)
        torch.nn.init.normal_(g.tail.weight, std=0.05)
    torch.save(generator_payload({"g": TINY}, 2, g.state_dict(), "test", 0), path)
    return path


def test_tool_writes_table_verdicts_and_pictures(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    psnr, gan = save_tiny(tmp_path / "psnr.pt", None), save_tiny(tmp_path / "gan.pt", 5)
    out = tmp_path / "pd"
    rc = main([str(tiny_shards), "--psnr", f"P={psnr}", "--gan", f"G={gan}", "--scales", "0.5,1",
               "--batch", "2", "--grid", "2", "--crop", "24", "--out", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "pd.json").read_text())
    rows = doc["rows"]
    assert list(rows) == ["bicubic", "P", "P + noise x0.5", "P + noise x1", "G", CEILING, SAMPLE]
    assert doc["n"] == 5 and all(r["n"] == 5 for r in rows.values())  # the 5 test images
    assert doc["scales"] == [0.0, 0.5, 1.0] and doc["noise"] == "LR-block-mean-free" and doc["ema"] is True
    assert [rows[k]["kind"] for k in ("bicubic", "P", "P + noise x1", "G", CEILING)] == [
        "bicubic", "baseline", "baseline", "gan", "reference"]  # fmt: skip
    base = doc["baseline"]
    assert base["high_band_ratio"][0] < base["high_band_ratio"][1] < base["high_band_ratio"][2]
    assert base["psnr"][0] > base["psnr"][2]  # noise costs PSNR
    assert base["psnr"][0] == pytest.approx(rows["P"]["psnr"])
    # a sample of HR given LR has about the HR's high-band power and about twice the ceiling's MSE
    assert rows[SAMPLE]["mse"] > 1.5 * rows[CEILING]["mse"]
    assert rows[SAMPLE]["high_band_ratio"] > rows[CEILING]["high_band_ratio"]
    (verdict,) = doc["verdicts"]
    assert verdict["name"] == "G" and isinstance(verdict["earns"], bool)
    md = (out / "pd.md").read_text()
    assert "| P + noise x0.5 |" in md and "| G |" in md and "5 images (LR-block-mean-free" in md
    assert ("**G: earns its place.**" in md) == verdict["earns"] == (not verdict["failures"])
    assert verdict["text"] in md and verdict["text"] in capsys.readouterr().out
    for png in ("pd.png", "grid.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tool_rejects_bad_arguments(tiny_shards: Path, tmp_path: Path) -> None:
    assert parse_scales("1, 0.5,0.5") == (0.0, 0.5, 1.0)
    assert parse_named("runs/G1e2", "--gan") == ("G1e2", "runs/G1e2")
    with pytest.raises(ValueError, match="needs at least one scale > 0"):
        parse_scales("0")
    with pytest.raises(ValueError, match=">= 0"):
        parse_scales("-1")
    with pytest.raises(ValueError, match="NAME=RUN"):
        parse_named("=x", "--psnr")
    psnr = save_tiny(tmp_path / "psnr.pt", None)
    with pytest.raises(SystemExit):
        main([str(tiny_shards), "--psnr", f"bicubic={psnr}", "--out", str(tmp_path / "o")])
    missing = tmp_path / "missing.pt"
    assert main([str(tiny_shards), "--psnr", f"P={missing}", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
