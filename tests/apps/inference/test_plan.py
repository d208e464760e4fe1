"""plan_units and shard on real files: folders, globs, what is skipped, what is an error, balanced shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpc_sr.apps.inference.formats import InferenceOptions, Unit
from hpc_sr.apps.inference.plan import _Resolver, plan_units, shard
from hpc_sr.errors import DataError

OPTS = InferenceOptions()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / ".hidden").mkdir()
    np.save(src / "b.npy", np.zeros((3, 8, 8), np.float32))
    np.save(src / "sub" / "a.npy", np.zeros((4, 6), np.float32))
    np.savez(src / "c.npz", x=np.zeros((2, 5, 5)), y=np.zeros((7, 7)))
    np.savez(src / "empty.npz")
    np.save(src / ".hidden" / "h.npy", np.zeros((2, 2), np.float32))
    (src / "notes.txt").write_text("not an image")
    (src / "broken.npy").write_bytes(b"not numpy at all")
    return src


def test_a_folder_gives_sorted_units_and_names_what_it_skips(tree: Path, tmp_path: Path) -> None:
    plan = plan_units([str(tree)], tmp_path / "out", OPTS)
    assert [u.id for u in plan.units] == ["b.npy", "broken.npy", "c.npz", "sub/a.npy"]
    by_id = {u.id: u for u in plan.units}
    assert by_id["sub/a.npy"].target == tmp_path / "out" / "sub" / "a_sr.npy"
    # the cost: array bytes / 4 from file sizes (c.npz holds float64: 99 pixels count 198)
    assert (by_id["b.npy"].pixels, by_id["c.npz"].pixels, by_id["sub/a.npy"].pixels) == (192, 198, 24)
    assert by_id["broken.npy"].pixels == 1  # planned all the same: its read fails
    skipped = dict(plan.skipped)
    assert set(skipped) == {str(tree / "empty.npz"), str(tree / "notes.txt")}
    assert "holds no arrays" in skipped[str(tree / "empty.npz")]
    assert "not an image file" in skipped[str(tree / "notes.txt")] and not plan.failed


def test_globs_files_and_errors(tree: Path, tmp_path: Path) -> None:
    plan = plan_units([str(tree / "**" / "*.npy")], tmp_path / "out", OPTS)
    assert [u.id for u in plan.units] == ["a.npy", "b.npy", "broken.npy"]  # a glob's matches by name
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file type"):
        plan_units([str(tree / "notes.txt")], tmp_path / "out", OPTS)  # named directly: an error
    direct = plan_units([str(tree / "empty.npz"), str(tree / "b.npy")], tmp_path / "out", OPTS)
    assert [u.id for u in direct.units] == ["b.npy"] and "holds no arrays" in direct.failed[0][1]
    with pytest.raises(DataError, match="no such file or folder"):
        plan_units([str(tmp_path / "missing")], tmp_path / "out", OPTS)
    with pytest.raises(DataError, match="the pattern matches no file"):
        plan_units([str(tmp_path / "none*.npy")], tmp_path / "out", OPTS)
    with pytest.raises(DataError, match="no image among the inputs"):
        plan_units([str(tree / "*.txt")], tmp_path / "out", OPTS)


def test_outputs_inside_the_input_folder_are_not_inputs(tree: Path) -> None:
    out = tree / "sr"
    (out / ".hpc_sr_ledger").mkdir(parents=True)
    np.save(out / "b_sr.npy", np.zeros((2, 2), np.float32))
    assert "sr/b_sr.npy" not in {u.id for u in plan_units([str(tree)], out, OPTS).units}


def units(pixels: list[int]) -> list[Unit]:
    return [Unit(f"u{i:03d}", Path(f"u{i}"), "numpy", Path(f"o{i}"), p) for i, p in enumerate(pixels)]


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_complete_deterministic_and_balanced(world: int) -> None:
    rng = np.random.default_rng(world)
    all_units = units([int(p) for p in rng.integers(1, 1000, 200)])
    shards = [shard(all_units, r, world) for r in range(world)]
    ids = [u.id for s in shards for u in s]
    assert sorted(ids) == sorted(u.id for u in all_units) and len(ids) == len(set(ids))
    assert all(s == sorted(s, key=lambda u: u.id) for s in shards)
    assert shards == [shard(list(reversed(all_units)), r, world) for r in range(world)]  # input order: moot
    loads = [sum(u.pixels for u in s) for s in shards]
    assert max(loads) - min(loads) <= max(u.pixels for u in all_units)  # greedy LPT bound


def test_shard_ties_go_to_the_lower_rank() -> None:
    four = units([10, 10, 10, 10])
    assert [u.id for u in shard(four, 0, 3)] == ["u000", "u003"]
    assert [u.id for u in shard(four, 2, 3)] == ["u002"]
    with pytest.raises(ValueError, match="outside world size"):
        shard(four, 3, 3)


def test_the_planning_resolver_agrees_with_path_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders resolved once, one lstat a path: the same answers as Path.resolve, links and ".." included."""
    (tmp_path / "a" / "real").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "real")
    (tmp_path / "a" / "real" / "f").write_text("x")
    (tmp_path / "fl").symlink_to(tmp_path / "a" / "real" / "f")
    monkeypatch.chdir(tmp_path / "link")
    resolve = _Resolver()
    paths = [Path("."), Path(".."), Path("f"), Path("../fl"), Path("/"), Path("sub/new"),
             tmp_path / "link" / "f", tmp_path / "link" / "new", tmp_path / "link" / ".." / "x"]  # fmt: skip
    for path in paths + paths:  # twice: from the cache
        assert resolve(path) == path.resolve(), path


def test_a_folder_is_walked_as_rglob_walks_it(tmp_path: Path) -> None:
    """Links to files are inputs, links to folders are not walked, hidden entries are left out: the files
    ``Path.rglob`` + ``is_file`` find."""
    src = tmp_path / "in"
    for rel in ("a/b.npy", "a-c.npy", "a/d/e.npy", ".h/x.npy", "a/.y.npy", "z.npy"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(src / rel, np.zeros((4, 4), np.float32))
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "o.npy", np.zeros((4, 4), np.float32))
    (src / "link.npy").symlink_to(outside / "o.npy")
    (src / "dirlink").symlink_to(outside)
    expected = sorted(
        p.relative_to(src).as_posix()
        for p in sorted(src.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    plan = plan_units([str(src)], tmp_path / "out", OPTS)
    assert [u.id for u in plan.units] == expected
    assert expected == ["a-c.npy", "a/b.npy", "a/d/e.npy", "link.npy", "z.npy"]
