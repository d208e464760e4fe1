"""Smoke test of tools/bench_cli.py (timings are benchmarks, never asserted here)."""

from __future__ import annotations

import json

import pytest

from tools.bench_cli import CASES, main


def test_bench_cli_prints_a_json_line_with_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repeat", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert result["bench"] == "cli" and set(result["seconds"]) == set(CASES)
    assert all(s > 0 for s in result["seconds"].values())
