"""The FITS output of `hpc-sr upscale` on every image and WCS header astropy ships in its test data.

Each case goes through the inference FITS format (:class:`hpc_sr.apps.inference.format_fits.FitsFormat`:
plan, read, write, as `hpc-sr upscale` runs it) with a nearest-neighbour x2 image (the WCS does not depend on
the pixel values) and is read back with astropy: every input pixel centre of every upscaled HDU must land on
the same world coordinates in the output (all_pix2world: SIP, lookup tables, DSS plate solutions and -TAB
included), or the file must be refused with a one-line message. Header-only files (.hdr, FITS without data)
get a 16 x 16 image.
The memo of checked WCS forms is emptied for every test, so each output is read back.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")
import astropy  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from hpc_sr.apps import fits_cards, fits_io, fits_wcs  # noqa: E402
from hpc_sr.apps.inference import format_fits  # noqa: E402
from hpc_sr.apps.inference.formats import InferenceOptions, NotAnImage, Results  # noqa: E402
from hpc_sr.errors import DataError  # noqa: E402

S = 2
MAS = 1e-3  # largest sky offset accepted, in milliarcseconds (an exact rescale gives ~1e-7)
ASTROPY = Path(astropy.__file__).parent
DATA = [ASTROPY / "wcs" / "tests" / "data", ASTROPY / "io" / "fits" / "tests" / "data"]
DSS = ASTROPY / "wcs" / "tests" / "data" / "dss.14.29.56-62.41.05.fits.gz"


def _has_image(path: Path) -> bool:
    """A file the format upscales: an image HDU (2-D or an (N, H, W) cube) that is not a lookup table."""
    try:
        format_fits.select(format_fits._headers(path), (), path)
        return True
    except Exception:  # noqa: BLE001 - tables, random groups, LZW files, header-only files
        return False


def _has_header_wcs(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                return hdul[0].data is None and "CTYPE1" in hdul[0].header
    except Exception:  # noqa: BLE001
        return False


def read_hdr(path: Path) -> fits.Header:
    text = path.read_bytes().decode("latin-1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.Header.fromstring(text, sep="\n" if "\n" in text.strip() else "")


def _image_header(path: Path) -> bool:
    """A .hdr file written for an image (NAXIS >= 2; not a 1-D spectrum or an event list).

    orion-velo/wave-4 are left out: they are orion-freq-4 (nine WCSs, 1 s a case) with another spectral CTYPE.
    """
    return int(read_hdr(path).get("NAXIS", 0)) >= 2 and not path.name.startswith(("orion-velo", "orion-wave"))


FITS_FILES = sorted(p for d in DATA if d.is_dir() for p in d.rglob("*.fit*"))
IMAGE_FILES = [p for p in FITS_FILES if _has_image(p)]
HEADER_FILES = sorted(p for d in DATA[:1] if d.is_dir() for p in d.rglob("*.hdr") if _image_header(p)) + [
    p for p in FITS_FILES if _has_header_wcs(p)
]
pytestmark = pytest.mark.skipif(not IMAGE_FILES, reason="astropy's test data is not installed")


@pytest.fixture(autouse=True)
def _check_every_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test reads its outputs' WCS back (the format checks a WCS form once per process)."""
    monkeypatch.setattr(format_fits, "_VERIFIED", {})


def _name(path: Path) -> str:
    return str(path.relative_to(ASTROPY))


def nearest(data: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(np.nan_to_num(np.asarray(data, np.float32)), S, axis=-2), S, axis=-1)


def upscale(src: Path, out: Path, samples: int = 0, **kw: Any) -> tuple[Path, list[str]]:
    """``src`` through the FITS format (plan, read, nearest-neighbour x2, write): the output file and the
    UpscaleWarnings given."""
    fmt = format_fits.FitsFormat()
    opts = InferenceOptions(scale=S, flux="surface-brightness", samples=samples, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (unit,) = fmt.plan(src, Path(src.name), out, opts)
        images = fmt.read(unit, opts)
        sr = [nearest(x) for x in images.images]
        sigma = [np.full_like(x, 0.5) for x in sr] if samples else None
        notes = [{"normalize": "none", "offset": 0.0, "scale": 1.0, "flux": f} for f in images.flux]
        (written,) = fmt.write(images, Results(sr, sigma, notes, []), opts)
    return written, [str(w.message) for w in caught if issubclass(w.category, fits_io.UpscaleWarning)]


def world(w: WCS, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pix = np.zeros((x.size, w.pixel_n_dim))
    pix[:, 0] = x.ravel()
    if w.pixel_n_dim > 1:
        pix[:, 1] = y.ravel()
    return np.asarray(w.all_pix2world(pix, 0))


def offsets(before: tuple, after: tuple, shape: tuple[int, ...], key: str = "") -> tuple[float, float]:
    """(sky offset in mas, largest relative offset of the other world axes) over every input pixel centre."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w_in, w_out = (WCS(h, fobj=f, key=key or " ") for h, f in (before, after))
        y, x = np.mgrid[0 : shape[-2], 0 : shape[-1]].astype(float)
        a, b = world(w_in, x, y), world(w_out, S * x + (S - 1) / 2, S * y + (S - 1) / 2)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "a pixel is on the sky in one WCS only"
    a, b = np.nan_to_num(a), np.nan_to_num(b)
    d = b - a
    sky = 0.0
    if w_in.has_celestial:
        lng, lat = w_in.wcs.lng, w_in.wcs.lat
        d_lng = ((d[:, lng] + 180) % 360 - 180) * np.cos(np.radians(a[:, lat]))
        sky = float(np.hypot(d_lng, d[:, lat]).max() * 3.6e6)
        d[:, [lng, lat]] = 0
    other = float((np.abs(d) / np.maximum(np.abs(a), 1.0)).max()) if d.size else 0.0
    return sky, other


def same_world(src: Path, written: Path, notes: list[str], unreadable_ok: bool = False) -> int:
    """Every upscaled HDU of ``written`` puts each input pixel centre where ``src`` does (every WCS key); an
    input WCS astropy cannot read is allowed with ``unreadable_ok`` when the output's notes say so. Returns
    the number of upscaled HDUs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = fits.open(src), fits.open(written)
    upscaled = 0
    with a, b:
        assert len(a) == len(b)
        for i, (h_in, h_out) in enumerate(zip(a, b, strict=True)):
            if "HPCSRUPS" not in h_out.header:
                continue  # copied at the input's resolution (a lookup table, a table)
            upscaled += 1
            assert h_out.data.shape[-2:] == tuple(S * n for n in h_in.data.shape[-2:]), i
            for key in fits_wcs.wcs_keys(h_in.header):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        WCS(h_in.header, fobj=a, key=key or " ")
                except Exception:  # noqa: BLE001 - astropy cannot read this input WCS: the output says so
                    assert unreadable_ok and any("astropy cannot read the input WCS" in n for n in notes), (
                        i,
                        key,
                        notes,
                    )
                    continue
                sky, other = offsets((h_in.header, a), (h_out.header, b), h_in.data.shape, key)
                assert sky < MAS and other < 1e-12, (i, key, sky, other)
    return upscaled


@pytest.mark.parametrize("path", IMAGE_FILES, ids=_name)
def test_every_shipped_image_keeps_the_world_position_of_every_pixel(path: Path, tmp_path: Path) -> None:
    """Every image HDU upscaled; the file's structure (HDU names, versions, compression) kept."""
    written, notes = upscale(path, tmp_path / "out")
    assert same_world(path, written, notes) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = fits.open(path), fits.open(written)
    with a, b:
        assert [(h.name, h.ver) for h in b] == [(h.name, h.ver) for h in a]
        for h_in, h_out in zip(a, b, strict=True):
            assert isinstance(h_out, fits.CompImageHDU) == isinstance(h_in, fits.CompImageHDU)
            if isinstance(h_in, fits.CompImageHDU):  # compressed in: compressed out, the same way
                assert h_out.compression_type == h_in.compression_type


def header_on_a_small_image(path: Path, out: Path) -> Path:
    """A 16x16 image file carrying the header (and tables) of a WCS header file or header-only FITS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".hdr":
            header, tables = read_hdr(path), []
        else:
            with fits.open(path) as hdul:
                header, tables = hdul[0].header.copy(), [h.copy() for h in hdul[1:]]
        image = fits.PrimaryHDU(np.ones((16, 16), np.float32), header=header)
        fits.HDUList([image, *tables]).writeto(out, output_verify="silentfix")
    return out


@pytest.mark.parametrize("path", HEADER_FILES, ids=_name)
def test_every_shipped_wcs_header_on_a_small_image(path: Path, tmp_path: Path) -> None:
    src = header_on_a_small_image(path, tmp_path / "img.fits")
    try:
        written, notes = upscale(src, tmp_path / "out")
    except NotAnImage:
        pytest.skip("no HDU the format upscales (a 1-D or 4-D image)")
    assert same_world(src, written, notes, unreadable_ok=True) >= 1


def test_the_shipped_files_cover_every_representation() -> None:
    names = {p.name for p in IMAGE_FILES + HEADER_FILES}
    for needed in (DSS.name, "dist_lookup.fits.gz", "tab-time-last-axis.fits", "comp.fits", "sip.fits"):
        assert needed in names
    assert sum(n.endswith(".hdr") for n in names) >= 20


# ----------------------------------------------------------------------------------------------- DSS
def test_dss_plate_solution_is_rescaled_and_skew_copied_byte_for_byte(tmp_path: Path) -> None:
    written, notes = upscale(DSS, tmp_path / "out")
    header = fits.getheader(DSS)
    with fits.open(written) as out:
        h = out[0].header
    assert (h["CNPIX1"], h["CNPIX2"]) == (2 * 8860, 2 * 1708)
    assert h["XPIXELSZ"] == pytest.approx(header["XPIXELSZ"] / 2)
    assert h["AMDX2"] == header["AMDX2"] and h["PLTSCALE"] == header["PLTSCALE"]
    assert h["CDELT1"] == pytest.approx(header["CDELT1"] / 2)  # PC + CDELT (wcslib) and CD (others)
    assert h["CD1_2"] == pytest.approx(header["CD1_2"] / 2)
    assert h["PC001002"] == header["PC001002"] and h["CROTA2"] == header["CROTA2"]
    with fits.open(DSS) as hdul:
        stored = fits_cards.raw_header(DSS, hdul, 0)
    skew = next(stored[i : i + 80] for i in range(0, len(stored), 80) if stored.startswith(b"SKEW ", i))
    raw = format_fits.load(written)
    assert b"'" not in skew and skew in raw, "the SKEW card is not byte-identical"
    assert any("card(s) SKEW copied byte for byte" in n for n in notes)


PLATE = ("CNPIX", "XPIXELSZ", "YPIXELSZ", "PPO", "AMDX", "AMDY", "PLT")
PC_CDELT = ("PC0", "CDELT")


def drop(header: fits.Header, prefixes: tuple[str, ...]) -> fits.Header:
    return fits.Header([c for c in header.cards if not c.keyword.startswith(prefixes)])


@pytest.mark.parametrize("linear", [("CD", "PC0", "CDELT"), ("CD", "CDELT"), ("PC0", "CDELT")])
def test_dss_linear_part_without_the_plate_solution(linear: tuple[str, ...]) -> None:
    """wcslib reads PC + CDELT where CD is there too, a reader without PC support CD: both stay right."""
    h = fits.getheader(DSS)
    for key in [k for k in h if k.startswith(PLATE) or k.startswith(("CD", "PC0", "CDELT", "CROTA"))]:
        if key.startswith(PLATE) or not key.startswith(linear):
            del h[key]
    after = fits_wcs.rescale_wcs_header(h, S)
    assert offsets((h, None), (after, None), (100, 100))[0] < MAS
    if "CD" in linear:
        cd_in, cd_out = (drop(x, PC_CDELT) for x in (h, after))
        assert offsets((cd_in, None), (cd_out, None), (100, 100))[0] < MAS


# ----------------------------------------------------------------------------------------------- tables
def tan_sip_header() -> fits.Header:
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CRVAL1"], h["CRVAL2"], h["CRPIX1"], h["CRPIX2"] = 150.0, 2.0, 20.3, 14.8
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -1e-5, 2e-6, 3e-6, 1e-5
    h["A_ORDER"], h["B_ORDER"], h["A_2_0"], h["B_0_2"], h["A_1_1"] = 2, 2, 2e-4, -3e-4, 1e-4
    return h


def lookup_file(path: Path, scale_tables: float = 1.0) -> Path:
    """A 24 x 32 image with SIP, two CPDIS lookup tables and a D2IM table of several pixels' amplitude."""
    h = tan_sip_header()
    for j in (1, 2):
        h[f"CPDIS{j}"] = "Lookup"
        h[f"DP{j}"] = f"EXTVER: {j}"
        h[f"DP{j}"] = "NAXES: 2"
        h[f"DP{j}"] = "AXIS.1: 1"
        h[f"DP{j}"] = "AXIS.2: 2"
    h["D2IMDIS1"], h["D2IM1"] = "Lookup", "EXTVER: 1"
    h["D2IM1"] = "NAXES: 2"
    h["D2IM1"] = "AXIS.1: 1"
    h["D2IM1"] = "AXIS.2: 2"
    h["CPERR1"] = 3.0
    ty, tx = np.mgrid[0:9, 0:11].astype(np.float32)
    tables = []
    for ver, values in ((1, 3 * np.sin(tx / 2) * np.cos(ty / 3)), (2, 2 * np.cos(tx / 3) + 0.2 * ty)):
        t = fits.ImageHDU(values.astype(np.float32), name="WCSDVARR", ver=ver)
        t.header["CRPIX1"], t.header["CRPIX2"], t.header["CRVAL1"], t.header["CRVAL2"] = 1.0, 1.0, 0.5, -1.0
        t.header["CDELT1"], t.header["CDELT2"] = 4.0, 4.0
        tables.append(t)
    d2im = fits.ImageHDU((1.5 * np.sin(np.arange(40) / 4)).astype(np.float32)[None], name="D2IMARR", ver=1)
    for axis in (1, 2):
        d2im.header[f"CRPIX{axis}"], d2im.header[f"CRVAL{axis}"], d2im.header[f"CDELT{axis}"] = 1.0, 1.0, 1.0
    sci = fits.ImageHDU(np.ones((24, 32), np.float32), h, name="SCI")
    fits.HDUList([fits.PrimaryHDU(), sci, *tables, d2im]).writeto(path)
    return path


def test_large_lookup_table_distortions_are_copied_and_rescaled(tmp_path: Path) -> None:
    src = lookup_file(tmp_path / "lookup.fits")
    written, notes = upscale(src, tmp_path / "out")
    with fits.open(written) as out:
        assert [(t.name, t.ver) for t in out[2:]] == [("WCSDVARR", 1), ("WCSDVARR", 2), ("D2IMARR", 1)]
        assert out["WCSDVARR", 1].header["CDELT1"] == 8.0 and out["WCSDVARR", 1].header["CRVAL1"] == 0.5
        assert out[1].header["CPERR1"] == 6.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(out[1].header, out)
        assert w.cpdis1 is not None and w.det2im1 is not None and w.sip is not None
    assert same_world(src, written, notes) == 1


def test_lookup_table_distortions_are_rescaled_beside_their_image_and_its_error_map(tmp_path: Path) -> None:
    src = lookup_file(tmp_path / "lookup.fits")
    written, _ = upscale(src, tmp_path / "out", samples=2)
    with fits.open(written) as b:
        names = [(h.name, h.ver) for h in b]
        assert names == [
            ("PRIMARY", 1),
            ("SCI", 1),
            ("ERR", 1),
            ("WCSDVARR", 1),
            ("WCSDVARR", 2),
            ("D2IMARR", 1),
        ]
        assert b["WCSDVARR", 1].header["CDELT1"] == 8.0 and b["SCI"].header["CPERR1"] == 6.0
        assert b["ERR"].header["CPERR1"] == 6.0 and b["ERR"].header["CPDIS1"] == "Lookup"


def test_an_unscaled_table_is_caught_on_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fits_wcs, "rescale_wcs_table", lambda hdu, scale: hdu.copy())
    with pytest.raises(DataError, match=r"lookup\.fits\[1\]: the rescaled WCS moves pixel centres") as err:
        upscale(lookup_file(tmp_path / "lookup.fits"), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "out").glob("*")), "a refused output is not published"


def test_tab_coordinates_keep_their_table(tmp_path: Path) -> None:
    src = ASTROPY / "wcs" / "tests" / "data" / "tab-time-last-axis.fits"
    written, notes = upscale(src, tmp_path / "out")
    with fits.open(written) as out, fits.open(src) as a:
        assert [h.name for h in out] == ["PRIMARY", "WCS-TABLE"]
        np.testing.assert_array_equal(
            out["WCS-TABLE"].data["coordinates"], a["WCS-TABLE"].data["coordinates"]
        )
    assert same_world(src, written, notes) == 1


def test_polynomial_distortion_is_refused_naming_the_card(tmp_path: Path) -> None:
    h = tan_sip_header()
    h["CPDIS1"], h["DP1"] = "Polynomial", "NAXES: 2"
    fits.PrimaryHDU(np.ones((8, 8), np.float32), h).writeto(tmp_path / "poly.fits")
    with pytest.raises(DataError, match=r"poly\.fits\[0\]: CPDIS1 = 'Polynomial': .* the CPDIS1 and DP1\.\*"):
        upscale(tmp_path / "poly.fits", tmp_path / "out")


def test_a_representation_the_rescale_misses_is_refused(tmp_path: Path) -> None:
    """A PC matrix feeding image axis 1 into world axis 3 (a tilted slit cube) is not rescaled by CDELT1/2."""
    h = fits.Header()
    h["WCSAXES"], h["CTYPE1"], h["CTYPE2"], h["CTYPE3"] = 3, "RA---TAN", "DEC--TAN", "WAVE"
    h["CRVAL1"], h["CRVAL2"], h["CRVAL3"], h["CDELT3"], h["CUNIT3"] = 10.0, 20.0, 5e-7, 1e-10, "m"
    h["CDELT1"], h["CDELT2"], h["PC3_1"] = -1e-4, 1e-4, 0.5
    fits.PrimaryHDU(np.ones((8, 8), np.float32), h).writeto(tmp_path / "slit.fits")
    with pytest.raises(DataError, match=r"slit\.fits\[0\]: the rescaled WCS moves pixel centres .* simplify"):
        upscale(tmp_path / "slit.fits", tmp_path / "out")


# ----------------------------------------------------------------------------------------------- IRAF
def physical(header: fits.Header, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """IRAF physical coordinates (1-based) of 1-based image pixels: logical = LTM physical + LTV."""
    ltm = np.array([[header.get(f"LTM{i}_{j}", float(i == j)) for j in (1, 2)] for i in (1, 2)])
    ltv = np.array([header.get("LTV1", 0.0), header.get("LTV2", 0.0)])
    return np.linalg.solve(ltm, np.stack([x.ravel(), y.ravel()]) - ltv[:, None])


IRAF = [
    {"LTV1": -100.0, "LTV2": 20.5},  # a section
    {"LTM1_1": 0.5, "LTM2_2": 0.5, "LTV1": 0.25, "LTV2": -3.75},  # blocked 2 x 2, then a section
    {"LTM1_1": 2.0},
]


@pytest.mark.parametrize("cards", IRAF)
def test_iraf_physical_coordinates_are_kept(cards: dict[str, float]) -> None:
    before = fits.Header(cards)
    after = fits_wcs.rescale_wcs_header(before, S)
    y, x = np.mgrid[1:9, 1:7].astype(float)
    out = physical(after, S * (x - 0.5) + 0.5, S * (y - 0.5) + 0.5)
    np.testing.assert_allclose(out, physical(before, x, y))
