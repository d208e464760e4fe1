"""`hpc-sr upscale --help`, `hpc-sr evaluate --help`: the shipped model is named, required options say so."""

from __future__ import annotations

import pytest

from hpc_sr.cli import main


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_upscale_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text("upscale", capsys)
    assert "deeplense-small" in text and "exported G.pt (required)" in text
    assert "(input sub-folders mirrored) (required)" in text and text.count("(required)") == 2
    assert "astropy.units" in text and ".fits.fz" in text


def test_evaluate_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text("evaluate", capsys)
    assert "deeplense-small" in text and "(an ensemble) (required)" in text
    assert "shard directory (required)" in text and text.count("(required)") == 2
