"""The HDF5 catalog format of survey inference: plan / read / write / finish, a fake model (x2 by np.kron)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from hpc_sr.apps.inference import format_hdf5  # noqa: E402
from hpc_sr.apps.inference.format_hdf5 import Hdf5Format  # noqa: E402
from hpc_sr.apps.inference.formats import InferenceOptions, NotAnImage, Results, Unit, format_for  # noqa: E402
from hpc_sr.errors import DataError  # noqa: E402

FMT = Hdf5Format()
REPO = Path(__file__).resolve().parents[3]


def catalog(
    path: Path, n: int = 10, layout: tuple[int, ...] = (6, 8), ids: bool = True, **extra: Any
) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("cutouts/lr", data=rng.normal(5, 1, (n, *layout)).astype(np.float32))
        ds.attrs["BUNIT"] = "MJy/sr"
        if ids:
            f.create_dataset("cutouts/ids", data=np.arange(1000, 1000 + n)[::-1].astype(np.int64))
        for name, data in extra.items():
            f.create_dataset(name, data=data)
    return path


def process(unit: Unit, opts: InferenceOptions, sigma: bool = False) -> list[Path]:
    """read, fake SR (x2 by kron; normalisation offset = the row number), write."""
    images = FMT.read(unit, opts)
    sr = [np.kron(x, np.ones((2, 2), np.float32)) for x in images.images]
    a = unit.detail["rows"][0]
    notes = [
        {"normalize": "max", "offset": 0.0, "scale": float(a + i), "flux": f, "blank": 0}
        for i, f in enumerate(images.flux)
    ]
    sig = [np.full_like(x, 0.5) for x in sr] if sigma else None
    return FMT.write(images, Results(sr, sig, notes, ["hpc_sr 0.2.0 upscale x2: model fake"]), opts)


def run(src: Path, out: Path, sigma: bool = False, **kw: Any) -> tuple[list[Unit], Path]:
    opts = InferenceOptions(catalog_rows=4, samples=4 if sigma else 0, **kw)
    units = FMT.plan(src, Path("sub") / src.name, out, opts)
    for unit in units:
        (part,) = process(unit, opts, sigma)
        assert part == unit.target and part.is_file()
    (merged,) = FMT.finish(units, opts)
    return units, merged


def test_plan_units_of_catalog_rows_with_part_targets(tmp_path: Path) -> None:
    src = catalog(tmp_path / "cat.h5")
    units = FMT.plan(src, Path("sub/cat.h5"), tmp_path / "out", InferenceOptions(catalog_rows=4))
    assert [u.id for u in units] == ["sub/cat.h5#rows=0:4", "sub/cat.h5#rows=4:8", "sub/cat.h5#rows=8:10"]
    assert [u.detail["rows"] for u in units] == [(0, 4), (4, 8), (8, 10)]
    assert units[2].target == tmp_path / "out" / "sub" / "cat_sr.parts" / "rows_8_10.h5"
    assert [u.pixels for u in units] == [4 * 48, 4 * 48, 2 * 48] and format_for(Path("x.HDF5")) == "hdf5"


def test_a_unit_reads_only_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = catalog(tmp_path / "cat.h5", n=100)
    opts = InferenceOptions(catalog_rows=16)
    unit = FMT.plan(src, Path(src.name), tmp_path, opts)[2]
    touched = []
    real = h5py.Dataset.__getitem__

    def spy(self: Any, key: Any) -> Any:
        out = real(self, key)
        touched.append((self.name, np.shape(out)))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    images = FMT.read(unit, opts)
    assert touched == [("/cutouts/lr", (16, 6, 8)), ("/cutouts/ids", (16,))]
    with h5py.File(src) as f:
        np.testing.assert_array_equal(images.images[3], real(f["cutouts/lr"], 35))
    assert images.labels[0] == f"{src}[cutouts/lr][32] id=1067" and images.flux[0] == "surface-brightness"


@pytest.mark.parametrize("layout", [(6, 8), (1, 6, 8)])
def test_merged_images_ids_notes_and_sigma_in_the_input_layout(
    tmp_path: Path, layout: tuple[int, ...]
) -> None:
    src = catalog(tmp_path / "cat.hdf5", layout=layout)
    units, merged = run(src, tmp_path / "out", sigma=True)
    assert merged == tmp_path / "out" / "sub" / "cat_sr.hdf5"
    assert not (tmp_path / "out" / "sub" / "cat_sr.parts").exists()
    with h5py.File(src) as a, h5py.File(merged) as b:
        lr, sr = a["cutouts/lr"][...], b["cutouts/lr"]
        assert sr.shape == (10, *layout[:-2], 12, 16) and sr.dtype == np.float32
        np.testing.assert_array_equal(sr[...], np.kron(lr, np.ones((2, 2))))
        np.testing.assert_array_equal(b["cutouts/ids"][...], a["cutouts/ids"][...])
        np.testing.assert_array_equal(b["cutouts/sigma"][...], 0.5)
        assert b["cutouts/sigma"].shape == sr.shape
        np.testing.assert_array_equal(b["hpc_sr/scale"][...], np.arange(10.0))
        attrs = dict(sr.attrs)
        assert attrs["BUNIT"] == "MJy/sr" and attrs["hpc_sr_upscale"] == 2 and attrs["hpc_sr_samples"] == 4
        assert (attrs["hpc_sr_normalize"], attrs["hpc_sr_flux"]) == ("max", "surface-brightness")
        assert attrs["hpc_sr_scale"] == "per row: /hpc_sr/scale" and attrs["hpc_sr_rows"] == 10
        assert list(attrs["hpc_sr_history"]) == ["hpc_sr 0.2.0 upscale x2: model fake"]


def test_without_ids_float64_kept_ints_as_float32_and_string_ids(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("x64", data=np.ones((5, 4, 4)))
    _, merged = run(tmp_path / "c.h5", tmp_path / "out")
    with h5py.File(merged) as b:
        assert list(b) == ["hpc_sr", "x64"] and b["x64"].dtype == np.float64 and b["x64"].shape == (5, 8, 8)
    names = [f"J1234+56{i}" for i in range(5)]
    with h5py.File(tmp_path / "i.h5", "w") as f:
        f.create_dataset("counts", data=np.ones((5, 4, 4), np.int16))
        f.create_dataset("ids", data=names, dtype=h5py.string_dtype())
    _, merged = run(tmp_path / "i.h5", tmp_path / "out")
    with h5py.File(merged) as b:
        assert b["counts"].dtype == np.float32 and list(b["ids"].asstr()[...]) == names


def test_dataset_found_by_itself_or_named_and_the_ambiguous_case_lists_the_candidates(tmp_path: Path) -> None:
    src = catalog(tmp_path / "two.h5", hr=np.zeros((10, 12, 16), np.float32), meta=np.zeros(10))
    with pytest.raises(
        DataError, match=r"several image datasets \(cutouts/lr \(10, 6, 8\), hr \(10, 12, 16\)\)"
    ):
        FMT.plan(src, Path(src.name), tmp_path, InferenceOptions())
    units = FMT.plan(src, Path(src.name), tmp_path, InferenceOptions(dataset="hr", catalog_rows=5))
    assert [u.detail["dataset"] for u in units] == ["hr", "hr"] and units[0].detail["ids"] is None
    with pytest.raises(DataError, match="dataset 'meta' is not a"):
        FMT.plan(src, Path(src.name), tmp_path, InferenceOptions(dataset="meta"))
    with h5py.File(tmp_path / "table.h5", "w") as f:
        f.create_dataset("ra", data=np.zeros(10))
        f.create_dataset("spectra", data=np.zeros((10, 50)))
    with pytest.raises(NotAnImage, match=r"holds no \(N, H, W\) or \(N, 1, H, W\) image dataset: ra \(10,\)"):
        FMT.plan(tmp_path / "table.h5", Path("table.h5"), tmp_path, InferenceOptions())
    bad = catalog(tmp_path / "bad.h5", ids=False, **{"cutouts/ids": np.zeros(3)})
    with pytest.raises(DataError, match="is not 1-D of length 10"):
        FMT.plan(bad, Path(bad.name), tmp_path, InferenceOptions())


def test_merge_is_idempotent_and_a_stale_temp_file_is_not_the_output(tmp_path: Path) -> None:
    src = catalog(tmp_path / "cat.h5")
    opts = InferenceOptions(catalog_rows=4)
    units = FMT.plan(src, Path(src.name), tmp_path / "out", opts)
    for unit in units[:2]:
        process(unit, opts)
    merged = units[0].detail["merged"]
    stale = merged.parent / f".{merged.name}.x1y2z3.tmp"
    stale.write_bytes(b"half a file")
    with pytest.raises(DataError, match=r"1 part\(s\) missing .*rows_8_10\.h5"):
        FMT.finish(units, opts)
    assert not merged.exists()
    process(units[2], opts)
    assert FMT.finish(units, opts) == [merged] and not stale.exists()
    before = merged.stat().st_mtime_ns
    assert FMT.finish(units, opts) == [merged] and merged.stat().st_mtime_ns == before  # nothing to do
    with h5py.File(merged) as b:
        np.testing.assert_array_equal(b["cutouts/ids"][...], np.arange(1000, 1010)[::-1])
    for unit in units:  # a new run's parts (same rows) replace the merged file
        process(unit, opts)
    FMT.finish(units, opts)
    assert merged.stat().st_mtime_ns != before and not units[0].target.parent.exists()


def test_a_part_killed_mid_merge_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = catalog(tmp_path / "cat.h5")
    opts = InferenceOptions(catalog_rows=4)
    units = FMT.plan(src, Path(src.name), tmp_path / "out", opts)
    for unit in units:
        process(unit, opts)
    monkeypatch.setattr(format_hdf5, "_provenance", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        FMT.finish(units, opts)
    merged = units[0].detail["merged"]
    assert not merged.exists() and not list(merged.parent.glob(".*.tmp"))
    assert all(u.target.is_file() for u in units)  # the parts stay for the next try


PEAK = """
import resource, sys
from pathlib import Path
import h5py, numpy as np
from hpc_sr.apps.inference.format_hdf5 import Hdf5Format
from hpc_sr.apps.inference.formats import InferenceOptions, Results
root, n, rows = Path(sys.argv[1]), int(sys.argv[2]), 50
with h5py.File(root / "cat.h5", "w") as f:
    f.create_dataset("lr", (n, 64, 64), np.float32, chunks=(1, 64, 64))
    for a in range(0, n, rows):
        f["lr"][a:a + rows] = np.random.default_rng(a).random((min(rows, n - a), 64, 64), np.float32)
fmt, opts = Hdf5Format(), InferenceOptions(catalog_rows=rows, samples=2)
units = fmt.plan(root / "cat.h5", Path("cat.h5"), root / "out", opts)
for u in units:
    s = fmt.read(u, opts)
    sr = [np.kron(x, np.ones((2, 2), np.float32)) for x in s.images]
    notes = [{"normalize": "none", "offset": 0.0, "scale": 1.0, "flux": f} for f in s.flux]
    fmt.write(s, Results(sr, sr, notes, []), opts)
    del s, sr
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fmt.finish(units, opts)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(tmp: Path, n: int) -> tuple[int, int]:
    """(peak RSS before finish, after finish) in KiB of a fresh process that merges an n-row catalog."""
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK), str(tmp), str(n)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    base, peak = (int(v) for v in out.stdout.split())
    return base, peak


@pytest.mark.slow
def test_merge_memory_does_not_grow_with_the_catalog(tmp_path: Path) -> None:
    """A 10x longer catalog (100 -> 1000 rows of 128 x 128 float32 + sigma: 13 -> 131 MB) merges in the same
    memory: the peak RSS of finish stays within 1.2x (holding the catalog would add ~130 MB)."""
    base_small, small = peak_kib(tmp_path / "small", 100)
    base_big, big = peak_kib(tmp_path / "big", 1000)
    grow_small, grow_big = small - base_small, big - base_big
    assert big <= 1.2 * small, (small, big)
    assert grow_big < 40_000, (
        f"finish of 1000 rows grew the peak RSS by {grow_big} KiB (100 rows: {grow_small})"
    )


def test_rows_go_straight_into_the_output_file_with_their_checksums(tmp_path: Path) -> None:
    """Units written in any order fill one data file that finish renames into place (no image byte copied);
    each part records the sha256 of its rows' bytes; a unit written twice writes the same bytes."""
    import hashlib

    src = catalog(tmp_path / "cat.h5", n=10)
    opts = InferenceOptions(catalog_rows=4, samples=4)
    units = FMT.plan(src, Path(src.name), tmp_path / "out", opts)
    for unit in [units[2], units[0], units[1], units[0]]:
        process(unit, opts, sigma=True)
    (data,) = units[0].detail["parts"].glob("data_*.h5")
    inode = data.stat().st_ino
    (merged,) = FMT.finish(units, opts)
    assert merged.stat().st_ino == inode and not units[0].detail["parts"].exists()
    with h5py.File(src) as a, h5py.File(merged) as b:
        np.testing.assert_array_equal(b["cutouts/lr"][...], np.kron(a["cutouts/lr"][...], np.ones((2, 2))))
        assert b["cutouts/lr"].chunks is None and format_hdf5.NONCE not in b.attrs
        rows = b["cutouts/lr"][4:8].astype("<f4").tobytes()
    units = FMT.plan(src, Path(src.name), tmp_path / "again", opts)
    process(units[1], opts, sigma=True)
    with h5py.File(units[1].target) as part:
        assert part.attrs["images_sha256"] == hashlib.sha256(rows).hexdigest()
        assert part.attrs["sigma_sha256"] == hashlib.sha256(np.full(4 * 12 * 16, 0.5, "<f4")).hexdigest()
        assert "images" not in part and "sigma" not in part and "ids" in part


def test_a_finish_killed_while_it_edits_the_data_file_is_undone_by_the_next(tmp_path: Path) -> None:
    src = catalog(tmp_path / "cat.h5", n=10)
    opts = InferenceOptions(catalog_rows=4)
    units = FMT.plan(src, Path(src.name), tmp_path / "out", opts)
    for unit in units:
        process(unit, opts)
    (data,) = units[0].detail["parts"].glob("data_*.h5")
    before = data.read_bytes()
    format_hdf5._restore_or_save(data, "cutouts/lr")  # what finish does first; then it is killed mid-edit
    with h5py.File(data, "r+") as f:
        f.create_dataset("half/written", data=np.zeros(1000))
        f["cutouts/lr"].attrs["hpc_sr_rows"] = -1
    assert data.read_bytes() != before
    (merged,) = FMT.finish(units, opts)
    with h5py.File(src) as a, h5py.File(merged) as b:
        assert "half" not in b and b["cutouts/lr"].attrs["hpc_sr_rows"] == 10
        np.testing.assert_array_equal(b["cutouts/lr"][...], np.kron(a["cutouts/lr"][...], np.ones((2, 2))))
        np.testing.assert_array_equal(b["cutouts/ids"][...], a["cutouts/ids"][...])


def test_rows_written_into_a_data_file_that_was_replaced_are_refused_at_finish(tmp_path: Path) -> None:
    src = catalog(tmp_path / "cat.h5", n=8)
    opts = InferenceOptions(catalog_rows=4)
    units = FMT.plan(src, Path(src.name), tmp_path / "out", opts)
    process(units[0], opts)
    (data,) = units[0].detail["parts"].glob("data_*.h5")
    data.unlink()  # removed behind the run's back: the rows of units[0] are gone
    process(units[1], opts)
    with pytest.raises(DataError, match=r"rows of rows_4_8\.h5 went into another data file .*--overwrite"):
        FMT.finish(units, opts)


def test_a_run_records_the_model_version_engine_and_normalisation_as_plain_attributes(tmp_path: Path) -> None:
    """Through the runner with real (tiny) generators: what made the output, readable without parsing."""
    import json

    from hpc_sr.apps.inference.fingerprint import weights_sha256
    from hpc_sr.apps.inference.formats import InferenceOptions as Opts
    from hpc_sr.apps.inference.ledger import LEDGER_DIR
    from hpc_sr.apps.inference.runner import execute
    from hpc_sr.eval.recalibration import SpreadScales
    from hpc_sr.models.artifacts import CALIBRATION_FORMAT, CALIBRATION_KEY, load_generator
    from hpc_sr.version import __version__
    from tests.apps.inference.test_runner import export, generator
    from tests.models.test_stochastic import tiny

    src = catalog(tmp_path / "cat.h5", n=6)
    ckpt = export(generator(), tmp_path / "G.pt")
    g, payload = load_generator(ckpt)
    opts = Opts(normalize="max", catalog_rows=4, batch_size=4)
    out = tmp_path / "out"
    assert execute(g, payload, [str(src)], out, opts, progress=False, model_label=str(ckpt)).status == 0
    run = json.loads((out / LEDGER_DIR / "run.json").read_text())
    with h5py.File(out / "cat_sr.h5") as f:
        attrs = dict(f["cutouts/lr"].attrs)
    assert attrs["hpc_sr_version"] == __version__ and attrs["hpc_sr_upscale"] == 2
    assert attrs["hpc_sr_model"] == str(ckpt) and attrs["hpc_sr_model_arch"] == "srresnet"
    assert attrs["hpc_sr_model_sha256"] == weights_sha256(g) == run["model"]["weights_sha256"]
    assert json.loads(attrs["hpc_sr_model_spec"]) == run["model"]["generator"]
    assert attrs["hpc_sr_model_step"] == 0 and attrs["hpc_sr_engine"] == "torch"
    assert (attrs["hpc_sr_normalize_option"], attrs["hpc_sr_normalization"]) == ("max", "max for every image")
    assert (
        attrs["hpc_sr_normalize"] == "max" and attrs["hpc_sr_flux_option"] == "auto"
    )  # the rows' own, all max
    assert (attrs["hpc_sr_tile"], attrs["hpc_sr_self_ensemble"]) == (0, False)
    assert "hpc_sr_sigma_calibration" not in attrs and "hpc_sr_samples" not in attrs

    # samples of a stochastic generator: how sigma was calibrated, as an attribute and in the history
    scales = SpreadScales(edges=(0.05, 0.1, 0.2), scales=(0.5, 2.0, 3.0, 4.0))
    fit = {"data": "/data/lenses.h5", "date": "2025-01-02T03:04:05+00:00", "antithetic": False}
    record = {
        "format": CALIBRATION_FORMAT,
        "spread_scales": scales.to_dict(),
        "fit": fit,
        "check": {"split": "val"},
    }
    samples = Opts(normalize="max", catalog_rows=4, samples=2)
    for name, about in (("raw", {}), ("cal", {CALIBRATION_KEY: record})):
        assert (
            execute(tiny("srresnet", 1), about, [str(src)], tmp_path / name, samples, progress=False).status
            == 0
        )
    with h5py.File(tmp_path / "raw" / "cat_sr.h5") as raw, h5py.File(tmp_path / "cal" / "cat_sr.h5") as cal:
        assert raw["cutouts/sigma"].shape == cal["cutouts/sigma"].shape == (6, 12, 16)
        a, b = dict(raw["cutouts/lr"].attrs), dict(cal["cutouts/lr"].attrs)
    assert a["hpc_sr_samples"] == 2 and a["hpc_sr_model"] == a["hpc_sr_model_arch"] == "srresnet"
    assert a["hpc_sr_sigma_calibration"].startswith("none: the raw standard deviation")
    assert b["hpc_sr_sigma_calibration"] == (
        "spread scales stored with the model (data /data/lenses.h5, split val, date "
        "2025-01-02T03:04:05+00:00)"
    )
    assert f"hpc_sr sigma calibration: {b['hpc_sr_sigma_calibration']}" in list(b["hpc_sr_history"])
