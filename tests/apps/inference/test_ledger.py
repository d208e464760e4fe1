"""The ledger on disk: run.json checked key by key, rank files read as a union, torn lines, overwrite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hpc_sr.apps.inference.fingerprint import differences
from hpc_sr.apps.inference.ledger import LEDGER_DIR, Ledger, rank_file
from hpc_sr.errors import LedgerError

FP = {"hpc_sr": "1.0", "options": {"tile": 0, "suffix": "_sr"}, "model": {"weights_sha256": "aa"}}


def test_the_first_run_writes_run_json_and_a_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    first = Ledger(tmp_path, 0)
    assert first.open(FP) is True
    assert json.loads((tmp_path / LEDGER_DIR / "run.json").read_text()) == FP
    first.close()
    again = Ledger(tmp_path, 1)
    assert again.open(FP) is False
    again.close()
    other = {**FP, "options": {"tile": 64, "suffix": "_sr"}, "model": {"weights_sha256": "bb"}}
    with pytest.raises(
        LedgerError,
        match=r"model\.weights_sha256 \(was \"aa\", now \"bb\"\); options\.tile \(was 0, now 64\)",
    ) as err:
        Ledger(tmp_path, 0).open(other)
    assert "--overwrite" in str(err.value) and "suffix" not in str(err.value)
    assert json.loads((tmp_path / LEDGER_DIR / "run.json").read_text()) == FP  # untouched


def test_records_of_every_rank_make_one_status(tmp_path: Path) -> None:
    out = tmp_path / "x_sr.npy"
    out.write_bytes(b"output")
    r0, r1 = Ledger(tmp_path, 0), Ledger(tmp_path, 1)
    r0.open(FP, world=2)
    r1.open(FP, world=2)
    r0.record("a", "failed", reason="a: cannot read", images=1)
    r1.record("a", "done", outputs=[out], images=1)  # a retry on another rank (another world size)
    r0.record("b", "skipped", reason="b: holds no image")
    r1.record("c", "failed", reason="first")
    r1.record("c", "failed", reason="second")
    status = Ledger(tmp_path, 5).status()
    assert {u: r["status"] for u, r in status.items()} == {"a": "done", "b": "skipped", "c": "failed"}
    assert status["a"]["outputs"] == [{"path": "x_sr.npy", "sha256": hashlib.sha256(b"output").hexdigest()}]
    assert status["c"]["reason"] == "second"


def test_a_torn_last_line_is_ignored_and_cut_when_the_rank_reopens(tmp_path: Path) -> None:
    led = Ledger(tmp_path, 0)
    led.open(FP)
    led.record("a", "done")
    led.close()
    path = rank_file(tmp_path / LEDGER_DIR, 0)
    with open(path, "ab") as fh:
        fh.write(b'{"unit": "b", "status": "do')  # killed mid-append
    assert set(Ledger(tmp_path, 1).status()) == {"a"}
    led = Ledger(tmp_path, 0)
    led.open(FP)
    led.record("c", "done")
    led.close()
    assert path.read_bytes().count(b"\n") == 2 and set(led.status()) == {"a", "c"}


def test_overwrite_replaces_run_json_and_empties_the_rank_files(tmp_path: Path) -> None:
    for rank in (0, 1, 2):
        led = Ledger(tmp_path, rank)
        led.open(FP, world=3)
        led.record(f"u{rank}", "done")
        led.close()
    other = {**FP, "options": {"tile": 8, "suffix": "_sr"}}
    one = Ledger(tmp_path, 1)
    one.open(other, overwrite=True, world=2)  # a non-zero rank empties only its own file
    assert set(one.status()) == {"u0", "u2"}
    zero = Ledger(tmp_path, 0)
    zero.open(other, overwrite=True, world=2)  # rank 0: run.json, and ranks beyond the new world
    assert zero.status() == {} and zero.fingerprint() == other
    assert sorted(p.name for p in zero.rank_files()) == ["rank_00000.jsonl", "rank_00001.jsonl"]


def test_differences_name_nested_added_and_removed_keys() -> None:
    old = {"a": {"b": 1, "c": [1, 2]}, "gone": True}
    new = {"a": {"b": 2, "c": [1, 2]}, "new": "x"}
    assert differences(old, new) == ["a.b (was 1, now 2)", "gone (was true, now -)", 'new (was -, now "x")']
