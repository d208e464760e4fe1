"""One progress bar for a whole job, drawn by rank 0 from the ledger files of every rank.

    with JobProgress(ledger, todo={"a.npy", ...}, before=status, enabled=env.is_main and progress):
        engine.run(...)

Every ~0.5 s a thread reads what each rank file gained since the last look (complete lines only) and moves a
tqdm bar on stderr: units finished out of this run's, with the done / skipped / failed counts, cutouts per
second and the ETA over all ranks. A failed record older than the run (``before``) is not counted. When its
own work is over, rank 0 on a terminal keeps drawing while the other ranks still finish units (until none
has for ``IDLE_S``); the report is rewritten by whichever rank ends last anyway. Other ranks draw nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hpc_sr.apps.inference.ledger import Ledger, merge, parse_lines

POLL_S = 0.5
IDLE_S = 10.0  # rank 0 stops waiting for the other ranks after this long without a new record


class LedgerTail:
    """The records appended to a ledger's rank files since the last :meth:`poll` (complete lines only)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in self.ledger.rank_files():
            try:
                with open(path, "rb") as fh:
                    start = self._offsets.get(path, 0)
                    if fh.seek(0, 2) < start:  # emptied (an --overwrite run started): read it afresh
                        start = 0
                    fh.seek(start)
                    data = fh.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            self._offsets[path] = start + end
            records += parse_lines(data[:end])
        return records


class JobProgress:
    """A context manager drawing the job's bar while it is open (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        todo: set[str],
        before: dict[str, dict[str, Any]] | None = None,
        enabled: bool = True,
    ) -> None:
        self.ledger, self.todo, self.enabled = ledger, todo, enabled and bool(todo)
        self._old = {u: float(r.get("time", 0)) for u, r in (before or {}).items() if r["status"] == "failed"}
        self.status: dict[str, dict[str, Any]] = {}
        self._last = time.monotonic()
        self.wait = sys.stderr.isatty()  # on exit, wait for the other ranks' units (only to draw them)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> JobProgress:
        if self.enabled:
            self._tail = LedgerTail(self.ledger)
            self._bar = tqdm(
                total=len(self.todo), desc="upscale", unit="unit", file=sys.stderr, smoothing=0.1
            )
            self._start = time.monotonic()
            self._thread = threading.Thread(target=self._loop, name="hpc_sr-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self._update()

    def _new(self, rec: dict[str, Any]) -> bool:
        """A record of this run: of a unit to do, and not a failure recorded before the run."""
        old = self._old.get(rec["unit"])
        return rec["unit"] in self.todo and not (old is not None and float(rec.get("time", 0)) <= old)

    def _update(self) -> None:
        fresh = [r for r in self._tail.poll() if self._new(r)]
        if fresh:
            self._last = time.monotonic()
        self.wait = sys.stderr.isatty()  # on exit, wait for the other ranks' units (only to draw them)
        merge(self.status, fresh)
        counts = {"done": 0, "skipped": 0, "failed": 0}
        images = 0
        for rec in self.status.values():
            counts[rec["status"]] += 1
            images += int(rec.get("images", 0))
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._bar.n = len(self.status)
        self._bar.set_postfix(counts, cutouts_s=f"{images / elapsed:.1f}", refresh=False)
        self._bar.refresh()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            while (
                self.wait
                and exc[0] is None
                and len(self.status) < len(self.todo)
                and time.monotonic() - self._last < IDLE_S
            ):
                time.sleep(POLL_S)  # the other ranks' units
            self._stop.set()
            self._thread.join()
            self._update()
            self._bar.close()
