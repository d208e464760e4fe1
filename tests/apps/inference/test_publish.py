"""Batched durability (hpc_sr.apps.inference.publish): staged outputs stay invisible until the commit, a
failing unit or commit leaves no temporary file and publishes nothing half-done, and a run with
``durability="batch"`` ends with the outputs and ledger of one with ``durability="file"``, also after a crash
in the middle of a commit."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hpc_sr.apps.inference import publish
from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.inference.ledger import LEDGER_DIR, file_sha256, parse_lines
from hpc_sr.apps.inference.runner import execute
from hpc_sr.errors import HpcSrError
from tests.apps.inference.test_runner import cutouts, generator


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_batch_publishes_nothing_before_its_commit_then_everything(tmp_path: Path) -> None:
    batch = publish.Batch()
    in_place = tmp_path / "data.bin"
    in_place.write_bytes(b"rows")
    targets = [tmp_path / "a" / "x.fits", tmp_path / "b" / "y.npy", tmp_path / "a" / "z.fits"]
    with publish.staging(batch):
        for i, target in enumerate(targets):
            with batch.unit(), publish.output(target, "wb") as fh:
                fh.write(b"%d" % i)
        fd = os.open(in_place, os.O_RDWR)
        publish.written_in_place(fd, in_place)  # synced at the commit, not now
        os.close(fd)
    assert publish.current() is None and batch.pending == 4
    assert not any(t.exists() for t in targets)
    assert all(n.startswith((".x.fits.", ".y.npy.", ".z.fits.")) for n in temps(tmp_path))
    assert batch.commit() == targets and batch.pending == 0
    assert [t.read_bytes() for t in targets] == [b"0", b"1", b"2"] and not temps(tmp_path)
    assert {t.stat().st_mode & 0o777 for t in targets} == {0o666 & ~umask()}
    batch.close()


def test_outside_a_batch_an_output_is_published_at_once(tmp_path: Path) -> None:
    with publish.output(tmp_path / "x.npy", "wb") as fh:
        fh.write(b"x")
    assert (tmp_path / "x.npy").read_bytes() == b"x" and not temps(tmp_path)


def test_a_failing_unit_takes_only_its_own_staged_files(tmp_path: Path) -> None:
    batch = publish.Batch()
    with publish.staging(batch):
        with batch.unit(), publish.output(tmp_path / "good.npy") as fh:
            fh.write(b"good")
        with pytest.raises(ValueError), batch.unit():
            with publish.output(tmp_path / "bad_sr.npy") as fh:
                fh.write(b"complete")
            with publish.output(tmp_path / "bad_sr_sigma.npy") as fh:
                fh.write(b"half")
                raise ValueError("the format failed half-way")
    assert len(temps(tmp_path)) == 1
    batch.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npy"]
    with publish.staging(batch), publish.output(tmp_path / "later.npy") as fh:
        fh.write(b"later")
    batch.close()  # not committed: removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npy"]


def test_a_commit_that_fails_renames_nothing_more_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = publish.Batch()
    with publish.staging(batch):
        for name in ("a", "b", "c"):
            with publish.output(tmp_path / name) as fh:
                fh.write(name.encode())
    real, calls = os.replace, []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        batch.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and (tmp_path / "a").read_bytes() == b"a"
    assert batch.pending == 0
    batch.close()


def records(out: Path) -> list[dict]:
    return [r for p in sorted((out / LEDGER_DIR).glob("rank_*.jsonl")) for r in parse_lines(p.read_bytes())]


def test_batch_and_file_durability_end_with_the_same_outputs_and_ledger(tmp_path: Path) -> None:
    g = generator()
    src = cutouts(tmp_path / "in", 12, 2)
    (src / "bad.npy").write_bytes(b"not numpy")
    outs = {}
    for durability in ("file", "batch"):
        out = tmp_path / durability
        opts = InferenceOptions(batch_size=3, durability=durability)
        result = execute(g, None, [str(src)], out, opts, progress=False)
        assert result.status == 1 and Counter(o.status for o in result.outcomes) == {"done": 12, "failed": 1}
        outs[durability] = out
        assert not temps(out)
        recs = records(out)
        assert Counter(r["unit"] for r in recs if r["status"] == "done") == {
            f"s{i:02d}.npy": 1 for i in range(12)
        }
    a, b = outs["file"], outs["batch"]
    names = sorted(p.name for p in a.glob("*_sr.npy"))
    assert len(names) == 12 and names == sorted(p.name for p in b.glob("*_sr.npy"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)

    def summary(out: Path) -> set:
        return {
            (r["unit"], r["status"], tuple((o["path"], o["sha256"]) for o in r["outputs"]))
            for r in records(out)
        }

    assert summary(a) == summary(b)


def test_an_unknown_durability_is_refused(tmp_path: Path) -> None:
    src = cutouts(tmp_path / "in", 1, 1)
    with pytest.raises(HpcSrError, match="durability"):
        execute(
            generator(), None, [str(src)], tmp_path / "out", InferenceOptions(durability="x"), progress=False
        )


class Crash(BaseException):
    """A stand-in for the process dying (not an Exception: nothing handles it as a unit's failure)."""


def test_a_crash_in_the_middle_of_a_commit_is_redone_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = generator()
    src = cutouts(tmp_path / "in", 10, 2)
    opts = InferenceOptions(batch_size=4)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert execute(g, None, [str(src)], ref, opts, progress=False).status == 0
    real, renamed = os.replace, []

    def replace(a: str, b: str) -> None:
        if str(b).endswith("_sr.npy") and len(renamed) == 5:
            raise Crash("killed between two renames of a batch")
        real(a, b)
        renamed.append(b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        execute(g, None, [str(src)], out, opts, progress=False)
    monkeypatch.setattr(os, "replace", real)
    visible = sorted(p.name for p in out.glob("*_sr.npy"))
    assert len(visible) == 5  # published (synced before their rename), complete, maybe not yet recorded
    assert all((out / n).read_bytes() == (ref / n).read_bytes() for n in visible)
    done = {r["unit"] for r in records(out) if r["status"] == "done"}
    assert {u.replace(".npy", "_sr.npy") for u in done} <= set(visible)  # recorded => visible
    assert execute(g, None, [str(src)], out, opts, progress=False).status == 0
    names = sorted(p.name for p in ref.glob("*_sr.npy"))
    assert sorted(p.name for p in out.glob("*_sr.npy")) == names
    assert all((out / n).read_bytes() == (ref / n).read_bytes() for n in names)
    counts = Counter(r["unit"] for r in records(out) if r["status"] == "done")
    assert len(counts) == 10 and set(counts.values()) == {1} and not temps(out)


def test_staged_outputs_of_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    """A kill leaves staged files under their temporary names: never taken for outputs, removed on rerun."""
    g = generator()
    src = cutouts(tmp_path / "in", 3, 1)
    out = tmp_path / "out"
    out.mkdir()
    batch = publish.Batch()
    with publish.staging(batch), publish.output(out / "s00_sr.npy") as fh:
        np.save(fh, np.zeros((1, 3, 3), np.float32))  # a kill now: the staged file is all that is left
    assert len(temps(out)) == 1 and not (out / "s00_sr.npy").exists()
    batch._staged.clear()  # the process died: nothing removes it
    assert execute(g, None, [str(src)], out, InferenceOptions(), progress=False).status == 0
    assert not temps(out) and len(list(out.glob("*_sr.npy"))) == 3
    batch.close()


def test_outputs_written_front_to_back_are_hashed_as_written(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    batch = publish.Batch()
    for where, staging in (("file", None), ("batch", batch)):
        a, b, c, d = (tmp_path / where / n for n in ("a.fits", "b.npy", "c.bin", "d.txt"))
        with publish.staging(staging), publish.checksums() as sums:
            with publish.output(a, "wb") as fh:
                fh.write(b"header")
                fh.write(memoryview(array))
            with publish.output(b, "wb") as fh:
                np.save(fh, array)
            with publish.output(c, "wb") as fh:  # sought in: hashed by the ledger from the file instead
                fh.write(b"xx")
                fh.seek(0)
                fh.write(b"y")
            with publish.output(d, "w") as fh:  # text: not hashed here
                fh.write("text")
        if staging is not None:
            staging.commit()
        assert set(sums) == {a, b}
        assert all(sums[p] == file_sha256(p) for p in (a, b))
        assert c.read_bytes() == b"yx" and d.read_text() == "text"
    batch.close()


def test_the_ledger_records_the_sha256_of_every_output_as_it_is_on_disk(tmp_path: Path) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    h5py = pytest.importorskip("h5py")
    src = cutouts(tmp_path / "in", 3, 1)
    rng = np.random.default_rng(0)
    for i in range(3):
        fits.HDUList(
            [fits.PrimaryHDU(), fits.ImageHDU(rng.random((12, 12), dtype=np.float32), name="SCI")]
        ).writeto(src / f"f{i}.fits")
    with h5py.File(src / "cat.h5", "w") as f:
        f["images"] = rng.random((5, 12, 12), dtype=np.float32)
    for durability in ("file", "batch"):
        out = tmp_path / durability
        opts = InferenceOptions(batch_size=4, durability=durability, catalog_rows=2)
        result = execute(generator(), None, [str(src)], out, opts, progress=False, on_warning=lambda m: None)
        assert result.status == 0
        outputs = [o for r in records(out) for o in r["outputs"]]
        assert len(outputs) == 3 + 3 + 3  # .npy files, FITS files, catalog parts (rows 0:2, 2:4, 4:5)
        parts = [o for o in outputs if ".parts/" in o["path"]]
        assert len(parts) == 3
        for o in outputs:
            path = out / o["path"]
            if path.exists():  # the catalog's parts are gone after its finish: their sums were read back
                assert o["sha256"] == file_sha256(path)
        assert sum((out / o["path"]).exists() for o in outputs) == 6
