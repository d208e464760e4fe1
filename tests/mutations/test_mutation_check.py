"""The mutation list of tools/mutation_check.py still matches the code, and a stale edit is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.mutation_check import MUTATIONS, Edit, Mutation, StaleMutationError, apply_edits, check_mutations


def test_every_shipped_mutation_applies_exactly_once_to_the_current_code() -> None:
    assert len(MUTATIONS) >= 15
    check_mutations(MUTATIONS)  # raises naming each mutation whose old text moved or changed


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\ny = 2\ny = 2\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    return tmp_path


def test_stale_or_ambiguous_old_text_names_the_mutation_file_and_count(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    ok = Mutation("ok", "", (Edit("pkg/a.py", "x = 1", "x = 0"),), ("tests/test_a.py",))
    check_mutations((ok,), root)
    gone = Mutation("gone", "", (Edit("pkg/a.py", "z = 3", "z = 0"),), ("tests/test_a.py",))
    twice = Mutation("twice", "", (Edit("pkg/a.py", "y = 2", "y = 0"),), ("tests/test_a.py::t",))
    no_test = Mutation("no_file", "", (Edit("pkg/b.py", "x", "y"),), ("tests/test_b.py",))
    with pytest.raises(StaleMutationError) as err:
        check_mutations((ok, gone, twice, no_test, ok), root)
    text = str(err.value)
    assert "gone: pkg/a.py: expected the old text exactly once, found 0x" in text
    assert "twice: pkg/a.py: expected the old text exactly once, found 2x" in text
    assert "no_file: pkg/b.py does not exist" in text and "test file tests/test_b.py does not exist" in text
    assert "duplicate mutation name 'ok'" in text


def test_edits_apply_in_order_and_refuse_text_not_found(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("a\nb\nc\n")
    apply_edits(tmp_path, (Edit("m.py", "a\n", ""), Edit("m.py", "c\n", "a\nc\n")))  # move a line
    assert (tmp_path / "m.py").read_text() == "b\na\nc\n"
    with pytest.raises(StaleMutationError, match="m.py: old text not found exactly once"):
        apply_edits(tmp_path, (Edit("m.py", "d\n", ""),))
