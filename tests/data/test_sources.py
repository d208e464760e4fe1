"""Readers of DeepLense .npy folders, .npz and FITS: good pairs come out unchanged, bad ones name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpc_sr.data.sources import as_image, open_source
from hpc_sr.errors import DataError


def write_deeplense(root: Path, n: int, hr_size: int = 32, scale: int = 2, seed: int = 0,
                    dtype: type = np.float32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """n random pairs with LR = scale x scale mean of HR, as SRC/HR/*.npy + SRC/LR/*.npy."""
    rng = np.random.default_rng(seed)
    (root / "HR").mkdir(parents=True, exist_ok=True)
    (root / "LR").mkdir(exist_ok=True)
    out = {}
    h = hr_size // scale
    for i in range(n):
        hr = rng.random((hr_size, hr_size)).astype(dtype)
        lr = hr.reshape(h, scale, h, scale).mean((1, 3)).astype(dtype)
        name = f"img_{i:04d}"
        np.save(root / "HR" / f"{name}.npy", hr)
        np.save(root / "LR" / f"{name}.npy", lr)
        out[name] = (hr, lr)
    return out


def read_all(src: Path, kind: str = "deeplense", **kw):
    source = open_source(kind, src, **kw)
    return source, list(source)


def test_deeplense_float64_and_channel_dim_become_float32_unscaled(tmp_path: Path) -> None:
    ref = write_deeplense(tmp_path, 3, dtype=np.float64)
    np.save(tmp_path / "HR" / "img_0001.npy", ref["img_0001"][0][None] * 7.5)  # (1, H, W), not in [0, 1]
    np.save(tmp_path / "LR" / "img_0001.npy", ref["img_0001"][1][None] * 7.5)
    _, pairs = read_all(tmp_path)
    assert [p.name for p in pairs] == ["img_0000", "img_0001", "img_0002"]
    for p in pairs:
        assert p.hr.dtype == np.float32 and p.hr.shape == (1, 32, 32) and p.lr.shape == (1, 16, 16)
    np.testing.assert_array_equal(pairs[1].hr[0], (ref["img_0001"][0] * 7.5).astype(np.float32))
    np.testing.assert_array_equal(pairs[2].lr[0], ref["img_0002"][1].astype(np.float32))


def test_non_square_images_are_allowed_when_consistent(tmp_path: Path) -> None:
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR").mkdir()
    np.save(tmp_path / "HR" / "a.npy", np.zeros((32, 48), np.float32))
    np.save(tmp_path / "LR" / "a.npy", np.zeros((16, 24), np.float32))
    _, pairs = read_all(tmp_path)
    assert pairs[0].hr.shape == (1, 32, 48)


@pytest.mark.parametrize("missing_in", ["LR", "HR"])
def test_unpaired_file_is_named(tmp_path: Path, missing_in: str) -> None:
    write_deeplense(tmp_path, 3)
    (tmp_path / missing_in / "img_0001.npy").unlink()
    other = "HR" if missing_in == "LR" else "LR"
    with pytest.raises(DataError, match=rf"{other}/img_0001\.npy has no {missing_in} partner"):
        open_source("deeplense", tmp_path)


BAD = {
    "scale": (np.zeros((32, 32), np.float32), np.zeros((15, 15), np.float32), "is not 2 x"),
    "nan": (np.full((32, 32), np.nan, np.float32), np.zeros((16, 16), np.float32), "NaN or inf"),
    "inf": (np.zeros((32, 32), np.float64), np.full((16, 16), np.inf), "NaN or inf"),
    "ndim": (np.zeros((3, 32, 32), np.float32), np.zeros((16, 16), np.float32), "not an image"),
    "ndim1": (np.zeros(32, np.float32), np.zeros((16, 16), np.float32), "not an image"),
    "str": (np.full((32, 32), "a"), np.zeros((16, 16), np.float32), "not a real numeric"),
    "bool": (np.zeros((32, 32), bool), np.zeros((16, 16), np.float32), "not a real numeric"),
    "complex": (np.zeros((32, 32), np.complex64), np.zeros((16, 16), np.float32), "not a real numeric"),
    "shape_changes": (np.zeros((40, 40), np.float32), np.zeros((20, 20), np.float32), "differs from the"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pair_names_the_file(tmp_path: Path, case: str) -> None:
    write_deeplense(tmp_path, 2)
    hr, lr, msg = BAD[case]
    np.save(tmp_path / "HR" / "z_bad.npy", hr)
    np.save(tmp_path / "LR" / "z_bad.npy", lr)
    with pytest.raises(DataError, match=msg) as exc:
        read_all(tmp_path)
    assert "z_bad.npy" in str(exc.value)


def test_nan_in_lr_names_the_lr_file(tmp_path: Path) -> None:
    write_deeplense(tmp_path, 1)
    lr = np.zeros((16, 16), np.float32)
    lr[3, 4] = np.nan
    np.save(tmp_path / "LR" / "img_0000.npy", lr)
    with pytest.raises(DataError, match=r"LR/img_0000\.npy: 1 NaN"):
        read_all(tmp_path)


@pytest.mark.parametrize("content", [b"not a numpy file", None])
def test_unreadable_or_pickled_file_is_named(tmp_path: Path, content: bytes | None) -> None:
    write_deeplense(tmp_path, 1)
    bad = tmp_path / "HR" / "img_0000.npy"
    if content is None:
        np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=r"HR/img_0000\.npy: cannot read"):
        read_all(tmp_path)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source("deeplense", tmp_path / "nope")
    (tmp_path / "HR").mkdir()
    with pytest.raises(DataError, match=r"missing folder .*LR"):
        open_source("deeplense", tmp_path)
    (tmp_path / "LR").mkdir()
    with pytest.raises(DataError, match=r"no \*\.npy files in .*HR"):
        open_source("deeplense", tmp_path)
    with pytest.raises(DataError, match="unknown source kind"):
        open_source("tiff", tmp_path)


def test_skip_bad_lists_and_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_deeplense(tmp_path, 4)
    np.save(tmp_path / "HR" / "img_0001.npy", np.full((32, 32), np.nan, np.float32))
    (tmp_path / "LR" / "img_0002.npy").unlink()
    source, pairs = read_all(tmp_path, skip_bad=True)
    assert [p.name for p in pairs] == ["img_0000", "img_0003"]
    reasons = dict(source.skipped)
    assert len(reasons) == 2
    assert any("img_0001.npy" in f and "NaN" in r for f, r in reasons.items())
    assert any("img_0002.npy" in f and "no LR partner" in r for f, r in reasons.items())
    err = capsys.readouterr().err
    assert "img_0001.npy" in err and "img_0002.npy" in err


def test_npz_folder_and_stacked_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    hr = rng.random((3, 1, 8, 8)).astype(np.float32)
    lr = rng.random((3, 1, 4, 4)).astype(np.float32)
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in (2, 0, 1):  # written out of order: read sorted by name
        np.savez(folder / f"p{i}.npz", hr=hr[i, 0], lr=lr[i])
    _, pairs = read_all(folder, "npz")
    assert [p.name for p in pairs] == ["p0", "p1", "p2"]
    np.testing.assert_array_equal(np.stack([p.hr for p in pairs]), hr)
    stacked = tmp_path / "all.npz"
    np.savez(stacked, hr=hr, lr=lr)
    _, pairs = read_all(stacked, "npz")
    assert [p.name for p in pairs] == ["all[0]", "all[1]", "all[2]"]
    np.testing.assert_array_equal(np.stack([p.lr for p in pairs]), lr)
    np.savez(folder / "p3.npz", hr=hr[0])
    with pytest.raises(DataError, match=r"p3\.npz: missing array\(s\) \['lr'\]"):
        read_all(folder, "npz")


def test_fits_big_endian_round_trip(tmp_path: Path) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR").mkdir()
    hr = np.random.default_rng(2).random((8, 8)).astype(">f8")
    fits.PrimaryHDU(hr).writeto(tmp_path / "HR" / "a.fits")
    fits.PrimaryHDU(hr.reshape(4, 2, 4, 2).mean((1, 3))).writeto(tmp_path / "LR" / "a.fits")
    _, pairs = read_all(tmp_path, "fits")
    assert pairs[0].hr.dtype == np.float32
    np.testing.assert_array_equal(pairs[0].hr[0], hr.astype(np.float32))
    (tmp_path / "HR" / "b.fits").write_bytes(b"SIMPLE garbage")
    (tmp_path / "LR" / "b.fits").write_bytes(b"SIMPLE garbage")
    with pytest.raises(DataError, match=r"HR/b\.fits: cannot read"):
        read_all(tmp_path, "fits")


_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int16, np.uint8, np.int64])


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), dtype=_DTYPES, lead=st.booleans(), seed=st.integers(0, 99))
def test_as_image_round_trip(h: int, w: int, dtype: type, lead: bool, seed: int) -> None:
    a = (np.random.default_rng(seed).random((h, w)) * 100).astype(dtype)
    out = as_image(a[None] if lead else a, "x.npy")
    assert out.shape == (1, h, w) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], a.astype(np.float32))


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
       bad_value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_as_image_rejects_invalid(shape: list[int], bad_value: float) -> None:
    a = np.ones(shape, np.float64)
    valid_shape = (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)) and a.size > 0
    if valid_shape:
        a.flat[a.size // 2] = bad_value
    with pytest.raises(DataError, match=r"^bad\.npy: "):
        as_image(a, "bad.npy")
