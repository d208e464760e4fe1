"""`python -m hpc_sr.studies` and `hpc-sr study`: one dispatcher that lists every study and runs one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpc_sr.cli import main as cli_main
from hpc_sr.studies import STUDIES, main
from tests.conftest import REPO, subprocess_env

NAMES = ("ceiling", "downstream", "instruments", "perception", "robustness", "zoo")


def test_module_help_lists_every_study() -> None:
    proc = subprocess.run([sys.executable, "-m", "hpc_sr.studies", "--help"], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m hpc_sr.studies STUDY" in proc.stdout
    assert tuple(STUDIES) == NAMES
    for name in NAMES:
        assert f"  {name} " in proc.stdout


@pytest.mark.parametrize("name", NAMES)
def test_each_study_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"], prog="python -m hpc_sr.studies")
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m hpc_sr.studies {name} ")


def test_cli_study_dispatches_and_rejects_unknown_studies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["study", "--help"]) == 0
    assert "usage: hpc-sr study STUDY" in capsys.readouterr().out
    assert cli_main(["study", "nope"]) == 2
    assert "unknown study 'nope'; choose from ceiling, downstream" in capsys.readouterr().err
    assert main([]) == 2
    assert "studies:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["study", "zoo", "--out", str(tmp_path / "w"), "--only", "nope"])
    assert "hpc-sr study zoo: error: --only 'nope': unknown archs ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
