"""upscale_report.json stays small at survey scale; warnings are counted by kind, not repeated per image."""

from __future__ import annotations

import json
from pathlib import Path

from hpc_sr.apps.inference import report as rep
from hpc_sr.apps.inference.formats import Unit
from hpc_sr.apps.inference.plan import Plan


def synthetic(done: int, pending: int = 0) -> tuple[Plan, dict[str, dict]]:
    """A plan of ``done`` + ``pending`` + 5 units (3 failed, 2 skipped), 2 skipped and 1 failed file, and the
    ledger's status: what build_report reads, without running anything."""
    n = done + pending + 5
    units = [
        Unit(f"c{i:07d}.npy", Path(f"/in/c{i:07d}.npy"), "numpy", Path(f"/out/c{i:07d}_sr.npy"), 1)
        for i in range(n)
    ]
    status = {}
    for u in units[:done]:
        status[u.id] = {
            "unit": u.id,
            "status": "done",
            "images": 2,
            "outputs": [{"path": u.target.name, "sha256": "ab" * 32}],
        }
    for u in units[done : done + 3]:
        status[u.id] = {"unit": u.id, "status": "failed", "reason": f"{u.src}: cannot read"}
    for u in units[done + 3 : done + 5]:
        status[u.id] = {"unit": u.id, "status": "skipped", "reason": f"{u.src}: holds no image"}
    plan = Plan(
        units, skipped=[("/in/t.txt", "a table"), ("/in/h.fits", "header only")], failed=[("/in/x", "bad")]
    )
    return plan, status


def size(plan: Plan, status: dict[str, dict]) -> int:
    return len(json.dumps(rep.build_report(plan, status, "/out"), indent=1))


def test_the_report_does_not_grow_with_done_units_and_lists_every_failure_and_skip() -> None:
    small, large = synthetic(10), synthetic(50_000)
    r = rep.build_report(*large, "/out")
    assert r["counts"] == {"planned": 50_005, "done": 50_000, "skipped": 4, "failed": 4, "pending": 0}
    assert r["done"]["units"] == 50_000 and r["done"]["images"] == 100_000 and r["done"]["outputs"] == 50_000
    assert len(r["failed"]) == 4 and len(r["skipped"]) == 4  # in full: each with its reason
    assert {f["reason"] for f in r["failed"]} >= {"bad", "/in/c0050000.npy: cannot read"}
    assert size(*large) - size(*small) < 40  # only the counts' digits differ
    assert size(*large) < 4000
    # a stopped run: the pending units are counted, the first ones listed
    stopped = synthetic(10, pending=20_000)
    r = rep.build_report(*stopped, "/out")
    assert r["counts"]["pending"] == 20_000 and len(r["pending"]) == rep.PENDING_LISTED
    assert (
        r["pending_listed"] == f"the first {rep.PENDING_LISTED} of 20000"
        and r["pending"][0] == "c0000015.npy"
    )
    assert size(*stopped) < 8000


def test_the_tally_shows_the_first_of_each_kind_and_counts_the_rest() -> None:
    shown: list[str] = []
    tally = rep.WarningTally(shown.append)
    for i in range(500):
        tally.add(f"/in/c{i:03d}.fits[SCI]: BUNIT 'furlong' is not a unit astropy knows; keeping the level")
        tally.add(f"/in/c{i:03d}.fits[SCI]: {i + 1} blank (NaN/inf) pixel(s) filled with the median")
    tally.add("no label here")
    assert shown == [
        "/in/c000.fits[SCI]: BUNIT 'furlong' is not a unit astropy knows; keeping the level",
        "/in/c000.fits[SCI]: 1 blank (NaN/inf) pixel(s) filled with the median",  # numbers masked: one kind
        "no label here",
    ]
    lines = tally.repeated()
    assert len(lines) == 2 and all(line.startswith("500 warnings ") for line in lines)
    assert " in /in/c000.fits[SCI], /in/c001.fits[SCI], /in/c002.fits[SCI] and 497 more" in lines[0]
    doc = tally.to_json()
    assert doc["total"] == 1001 and [k["count"] for k in doc["kinds"]] == [500, 500, 1]
    # the ranks' (and runs') tallies add up; examples and kinds stay bounded
    merged = rep.merge_tallies([doc, None, doc])
    assert merged["total"] == 2002 and [k["count"] for k in merged["kinds"]] == [1000, 1000, 2]
    assert all(len(k["examples"]) <= rep.EXAMPLES for k in merged["kinds"])
    many = rep.WarningTally()
    for i in range(rep.MAX_KINDS + 30):
        many.add(f"f{i}: problem number {'x' * i}")
    assert len(many.kinds) == rep.MAX_KINDS and many.other == 30 and len(many.shown) == rep.MAX_KINDS
    assert many.repeated() == [f"30 more warning(s) of other kinds (see {rep.REPORT})"]
