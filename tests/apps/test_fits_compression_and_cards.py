"""`hpc-sr upscale` writes a tile-compressed image compressed the same way, non-standard cards as stored."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")
import astropy  # noqa: E402

from hpc_sr.apps.fits_io import UpscaleWarning  # noqa: E402
from hpc_sr.apps.upscale import output_name, upscale_paths  # noqa: E402
from hpc_sr.models.registry import build_generator  # noqa: E402

COMPRESSED = Path(astropy.__file__).parent / "io" / "fits" / "tests" / "data" / "compressed_image.fits"


@pytest.fixture(scope="module")
def model() -> object:
    return build_generator("srresnet", {"channels": 4, "blocks": 1}, 2)


def run(model: object, src: Path, out: Path) -> tuple[Path, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (written,) = upscale_paths(model, [str(src)], out, scale=2)
    return written, [str(w.message) for w in caught if issubclass(w.category, UpscaleWarning)]


def test_fits_fz_float_image_keeps_its_compression(model: object, tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(100.0, 5.0, (12, 16)).astype(np.float32)
    kw = {"compression_type": "GZIP_2", "quantize_level": 8.0, "quantize_method": 2, "dither_seed": 7}
    hdu = fits.CompImageHDU(data, tile_shape=(4, 16), **kw)
    hdu.header["BUNIT"], hdu.header["CTYPE1"], hdu.header["CTYPE2"] = "MJy/sr", "RA---TAN", "DEC--TAN"
    for key, value in {"CDELT1": -1e-4, "CDELT2": 1e-4, "CRPIX1": 8.0, "CRPIX2": 6.0}.items():
        hdu.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "lens.fits.fz")
    written, notes = run(model, tmp_path / "lens.fits.fz", tmp_path / "out")
    assert written.name == "lens_sr.fits.fz" == output_name("lens.fits.fz", "_sr") and not notes
    with fits.open(written) as hdul:
        out = hdul[1]
        assert isinstance(out, fits.CompImageHDU) and out.data.shape == (24, 32)
        assert (out.compression_type, out.quantize_level, out.quantize_method) == ("GZIP_2", 8.0, 2)
        assert tuple(int(t) for t in out.tile_shape) == (4, 32)  # whole rows stay whole rows
        assert out.header["CDELT1"] == -5e-5 and out.header["CRPIX1"] == 15.5
        assert abs(out.data.mean() / data.mean() - 1) < 0.01


def test_astropy_compressed_image_comes_out_compressed(model: object, tmp_path: Path) -> None:
    if not COMPRESSED.is_file():
        pytest.skip("astropy's test data is not installed")
    with fits.open(COMPRESSED) as hdul:
        kind, shape = hdul[1].compression_type, hdul[1].data.shape
    written, _ = run(model, COMPRESSED, tmp_path / "out")
    with fits.open(written) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU) and hdul[1].compression_type == kind
        assert hdul[1].data.shape == (2 * shape[0], 2 * shape[1])


def patch_card(path: Path, placeholder: bytes, stored: bytes) -> None:
    raw = path.read_bytes()
    i = raw.index(placeholder)
    path.write_bytes(raw[:i] + stored.ljust(80) + raw[i + 80 :])


def test_non_standard_cards_are_copied_byte_for_byte(model: object, tmp_path: Path) -> None:
    primary = fits.PrimaryHDU()
    primary.header["ORIGCARD"] = "xxxxxxxx"
    sci = fits.ImageHDU(np.ones((8, 8), np.float32), name="SCI")
    sci.header["SKEW"], sci.header["BUNIT"] = "yyyyyyyy", "counts"
    src = tmp_path / "odd.fits"
    fits.HDUList([primary, sci]).writeto(src)
    skew = b"SKEW    = -1.3869888376036E+00, -1.6912592180432E+00 /Measure of skew"
    orig = b"ORIGCARD= unquoted words here"
    patch_card(src, b"SKEW    = 'yyyyyyyy'", skew)
    patch_card(src, b"ORIGCARD= 'xxxxxxxx'", orig)
    written, notes = run(model, src, tmp_path / "out")
    raw = written.read_bytes()
    assert skew.ljust(80) in raw and orig.ljust(80) in raw
    assert any("non-standard card(s) ORIGCARD, SKEW copied byte for byte" in n for n in notes)
    with fits.open(written) as hdul:  # astropy reads it as it reads the input (and says so on verify)
        assert "SKEW" in hdul[1].header and hdul[1].data.shape == (16, 16)
