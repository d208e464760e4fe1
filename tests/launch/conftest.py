"""Fixtures for the SLURM tests: a real one-host cluster (slurm/local/up.sh, two slurmd) for the session.

Tests marked ``slurm`` skip with a reason when slurmctld is not installed or we are not root. Every wait
has a deadline; jobs a test submits are cancelled at its end (``jobs`` fixture).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "slurm" / "local"


def _skip_reason() -> str | None:
    if not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()):
        return "slurmctld not installed (apt-get install -y slurm-wlm munge)"
    if not (shutil.which("munged") or Path("/usr/sbin/munged").exists()):
        return "munged not installed (apt-get install -y munge)"
    if os.geteuid() != 0:
        return "the one-host SLURM kit needs root (slurmd, munged)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """Bring the cluster up (2 nodes) and point SLURM clients at it; down.sh at the end if we started it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    state = Path(os.environ.get("HPC_SR_SLURM_DIR", "/tmp/hpc_sr_slurm"))
    was_up = (state / "env.sh").exists() and subprocess.run(
        ["scontrol", "ping"], env={**os.environ, "SLURM_CONF": str(state / "slurm.conf")},
        capture_output=True, timeout=30).returncode == 0
    proc = subprocess.run([str(KIT / "up.sh"), "--nodes", "2", "--dir", str(state), "--timeout", "60"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"slurm/local/up.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH", "OMP_NUM_THREADS")}
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    os.environ["PATH"] = f"{state / 'bin'}:{os.environ['PATH']}"
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield state
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not was_up:
            subprocess.run([str(KIT / "down.sh"), "--dir", str(state)], capture_output=True, timeout=120)


@pytest.fixture
def jobs(slurm_cluster: Path) -> Iterator[list[str]]:
    """Append the ids of submitted jobs; whatever is still queued or running is cancelled afterwards."""
    ids: list[str] = []
    yield ids
    for jid in ids:
        subprocess.run(["scancel", jid.split("_")[0]], capture_output=True, timeout=30)
