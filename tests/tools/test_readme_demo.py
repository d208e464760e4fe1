"""README's demo table is the demo's recorded result formatted by today's code (tools/readme_demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import readme_demo


def test_readme_demo_table_is_in_step_with_the_record_and_the_code() -> None:
    assert readme_demo.main(["--check"]) == 0


def test_a_drifted_figure_or_format_is_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    record = json.loads(readme_demo.RECORD.read_text())
    record["model"]["flux_err"] *= 1.2  # what the issue saw: the README kept an old run's flux error
    drifted = tmp_path / "demo.json"
    drifted.write_text(json.dumps(record))
    monkeypatch.setattr(readme_demo, "RECORD", drifted)
    assert readme_demo.main(["--check"]) == 1
    head, block, _ = readme_demo.split_readme(readme_demo.README.read_text())
    assert block.startswith("```") and "gain over bicubic" in block
    assert head.endswith(readme_demo.BEGIN + "\n")
