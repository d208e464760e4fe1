"""Memory flat in a catalog's length: planning and the ledger cost a little per unit (1,024 rows), not per
row, and the writer's backlog is bounded in bytes (tools/bench_upscale.py --memory measures whole runs)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hpc_sr.apps.inference import engine
from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.inference.ledger import Ledger
from hpc_sr.apps.inference.plan import plan_units
from hpc_sr.apps.inference.runner import execute
from tests.apps.inference.test_runner import generator

h5py = pytest.importorskip("h5py")


def catalog(path: Path, rows: int, side: int = 2) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("images", (rows, side, side), np.float32)  # never read by planning
        f.create_dataset("ids", data=np.arange(rows))
    return path


def traced_peak(step):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = step()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_planning_and_the_ledger_of_a_long_catalog_cost_bytes_per_unit_not_per_row(tmp_path: Path) -> None:
    opts = InferenceOptions()  # 1,024 rows per unit
    peaks = {}
    for rows in (10_000, 100_000):
        src = catalog(tmp_path / f"c{rows}.h5", rows)
        plan_units([str(src)], tmp_path / "out", opts)  # first-call costs (imports, h5py) outside the count
        plan, peaks[rows] = traced_peak(lambda src=src: plan_units([str(src)], tmp_path / "out", opts))
        assert len(plan.units) == -(-rows // 1024)
        assert peaks[rows] < 4096 * len(plan.units) + 65536, (rows, peaks[rows])  # measured: ~1.3 KB a unit
    assert (peaks[100_000] - peaks[10_000]) / 90_000 < 8  # bytes per row (measured: ~1.2)

    ledger = Ledger(tmp_path / "out")
    ledger.open({"run": 1})
    units = plan.units
    ledger.record_many([(u.id, "done", [], "", 1024) for u in units])
    status, peak = traced_peak(ledger.status)
    ledger.close()
    assert len(status) == len(units) and peak < 4096 * len(units) + 65536, peak


def test_the_writer_backlog_holds_one_unit_past_its_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of one byte at most one complete unit waits for the writer at any time, however many
    units the catalog has (deterministic: the engine's own count, checked as the writer takes each unit)."""
    monkeypatch.setattr(engine, "WRITE_BYTES", 1)
    seen = []
    real = engine.Engine._written

    def written(self: engine.Engine, job: engine._Open) -> None:
        seen.append((self._queued_bytes, job.nbytes))
        real(self, job)

    monkeypatch.setattr(engine.Engine, "_written", written)
    src = tmp_path / "cat.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("images", data=np.random.default_rng(0).random((60, 6, 6), dtype=np.float32))
    opts = InferenceOptions(catalog_rows=4, batch_size=3)
    assert execute(generator(), None, [str(src)], tmp_path / "out", opts, progress=False).status == 0
    assert len(seen) == 15 and all(queued == nbytes > 0 for queued, nbytes in seen), seen
