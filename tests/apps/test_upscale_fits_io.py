"""FITS helpers of `hpc-sr upscale`: WCS rescaling, BUNIT classes, reversible normalisation (the HDU choice:
tests/apps/inference/test_format_fits.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")
from astropy.wcs import WCS  # noqa: E402

from hpc_sr.apps import fits_io  # noqa: E402
from hpc_sr.errors import DataError  # noqa: E402

H, W = 16, 20


def celestial_header(kind: str) -> fits.Header:
    """A TAN WCS rotated by 30 deg, with a CD matrix (skewed) or CDELT + PC; a few other cards."""
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, W, H
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.1, 2.2
    h["CRPIX1"], h["CRPIX2"] = 10.3, 7.7
    h["BUNIT"], h["OBJECT"], h["EXPTIME"] = "counts", "lens J1234", 300.0
    th = math.radians(30)
    if kind == "cd":
        d = 1e-4
        h["CD1_1"], h["CD1_2"] = -d * math.cos(th), 1.1 * d * math.sin(th)
        h["CD2_1"], h["CD2_2"] = d * math.sin(th), d * math.cos(th)
    else:
        h["CDELT1"], h["CDELT2"] = -1e-4, 1.2e-4
        c, s = math.cos(th), math.sin(th)
        h["PC1_1"], h["PC1_2"], h["PC2_1"], h["PC2_2"] = c, -s, s, c
    return h


def assert_same_sky(before: fits.Header, after: fits.Header, scale: int, key: str = "") -> None:
    """World coordinate of input pixel (i, j) == that of output position s*i + (s-1)/2 (0-based), 1e-9 deg."""
    j, i = np.mgrid[0:H, 0:W]
    w_in, w_out = WCS(before, key=key or " "), WCS(after, key=key or " ")
    a = np.array(w_in.pixel_to_world_values(i, j))
    b = np.array(w_out.pixel_to_world_values(scale * i + (scale - 1) / 2, scale * j + (scale - 1) / 2))
    assert np.abs(a - b).max() < 1e-9


@pytest.mark.parametrize("kind", ["cd", "cdelt_pc"])
@pytest.mark.parametrize("scale", [2, 4])
def test_rescaled_wcs_keeps_the_sky_position_of_every_pixel(kind: str, scale: int) -> None:
    before = celestial_header(kind)
    after = fits_io.rescale_wcs_header(before, scale)
    assert_same_sky(before, after, scale)
    assert (after["NAXIS1"], after["NAXIS2"]) == (scale * W, scale * H)
    assert after["BUNIT"] == "counts" and after["OBJECT"] == "lens J1234" and after["EXPTIME"] == 300.0
    assert before["CRPIX1"] == 10.3  # the input header is not modified
    if kind == "cdelt_pc":
        assert after["PC1_2"] == before["PC1_2"] and after["CDELT2"] == pytest.approx(1.2e-4 / scale)
        assert "CD1_1" not in after
    else:
        assert "CDELT1" not in after and after["CD1_1"] == pytest.approx(before["CD1_1"] / scale)
    # without rescaling the positions would be off (the check can fail)
    naive = before.copy()
    naive["NAXIS1"], naive["NAXIS2"] = scale * W, scale * H
    with pytest.raises(AssertionError):
        assert_same_sky(before, naive, scale)


def test_sip_distortion_is_rescaled() -> None:
    before = celestial_header("cd")
    before["CTYPE1"], before["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    before["A_ORDER"], before["B_ORDER"] = 2, 2
    before["A_2_0"], before["A_1_1"], before["B_0_2"], before["B_1_1"] = 1e-3, 2e-4, -3e-4, 1e-4
    assert WCS(before).sip is not None
    after = fits_io.rescale_wcs_header(before, 2)
    assert_same_sky(before, after, 2)
    assert after["A_2_0"] == pytest.approx(1e-3 / 2) and after["A_ORDER"] == 2


def test_alternate_wcs_is_rescaled() -> None:
    before = celestial_header("cdelt_pc")
    before["WCSNAMEA"], before["CTYPE1A"], before["CTYPE2A"] = "PHYS", "LINEAR", "LINEAR"
    before["CRPIX1A"], before["CRPIX2A"], before["CRVAL1A"], before["CRVAL2A"] = 1.0, 1.0, 100.0, 200.0
    before["CDELT1A"], before["CDELT2A"] = 0.5, 0.5
    after = fits_io.rescale_wcs_header(before, 2)
    assert_same_sky(before, after, 2)
    assert_same_sky(before, after, 2, key="A")


def test_no_wcs_only_naxis_changes() -> None:
    h = fits.Header({"NAXIS": 2, "NAXIS1": 8, "NAXIS2": 6, "BUNIT": "adu"})
    after = fits_io.rescale_wcs_header(h, 2)
    assert dict(after) == {"NAXIS": 2, "NAXIS1": 16, "NAXIS2": 12, "BUNIT": "adu"}


PER_PIXEL = [
    "counts",
    "ADU",
    "electrons",
    "e-/s",
    "count",
    "ct",
    "ELECTRONS/S",
    "counts per pixel",
    "Jy/pixel",
    "nanomaggy",
    "Jy",
    "mJy",
    "erg/s/cm2/A",
]
SURFACE = ["MJy/sr", "mag/arcsec2", "Jy/beam", "nanomaggies/arcsec2", "erg/s/cm2/A/arcsec**2", "K"]


@pytest.mark.parametrize(
    "bunit,kind",
    [(u, "per-pixel") for u in PER_PIXEL]
    + [(u, "surface-brightness") for u in SURFACE]
    + [("bananas", None), ("mag", None), ("km/s", None), ("", None), (None, None)],
)
def test_bunit_classes(bunit: str | None, kind: str | None) -> None:
    assert fits_io.classify_bunit(bunit) == kind


def test_unknown_bunit_keeps_the_level_with_a_warning() -> None:
    unparsable = r"img.fits: BUNIT 'bananas' is not a unit astropy.units can parse; keeping the level"
    with pytest.warns(fits_io.UpscaleWarning, match=unparsable):
        assert fits_io.resolve_flux("auto", "bananas", "img.fits") == "surface-brightness"
    with pytest.warns(fits_io.UpscaleWarning, match="no BUNIT"):
        assert fits_io.resolve_flux("auto", None, "img.fits") == "surface-brightness"
    assert fits_io.resolve_flux("per-pixel", "MJy/sr", "img.fits") == "per-pixel"  # override
    assert fits_io.resolve_flux("auto", "counts", "img.fits") == "per-pixel"
    with pytest.raises(DataError, match="flux='total'"):
        fits_io.resolve_flux("total", None, "img.fits")


def test_auto_normalisation_and_its_inverse() -> None:
    rng = np.random.default_rng(0)
    unit = rng.uniform(0, 1, 100)
    physical = rng.uniform(1e3, 1e5, 100)
    signed = rng.normal(0, 1, 1000)
    assert fits_io.choose_normalization(unit, "auto", "x").method == "none"
    norm = fits_io.choose_normalization(physical, "auto", "x")
    assert (norm.method, norm.offset, norm.scale) == ("max", 0.0, physical.max())
    assert fits_io.choose_normalization(physical, "auto", "x").apply(physical).max() == 1.0
    norm = fits_io.choose_normalization(signed, "auto", "x")
    assert norm.method == "percentile"
    assert norm.offset == pytest.approx(np.percentile(signed, 0.5))
    assert norm.offset + norm.scale == pytest.approx(np.percentile(signed, 99.5))
    for n in (fits_io.choose_normalization(physical, m, "x") for m in ("none", "max", "percentile")):
        np.testing.assert_allclose(n.restore(n.apply(physical)), physical, rtol=1e-12)
    assert fits_io.choose_normalization(np.zeros(4), "max", "x").scale == 1.0  # no division by zero
    with pytest.raises(DataError, match="x: no finite"):
        fits_io.choose_normalization(np.array([]), "auto", "x")


def test_out_of_range_warning_names_the_file_and_fraction() -> None:
    norm = fits_io.Normalization("none")
    with pytest.warns(fits_io.UpscaleWarning, match=r"a\.fits: 25% of the pixels .* not clipped"):
        assert fits_io.warn_out_of_range(np.array([0.0, 0.5, 1.0, 1.5]), "a.fits", norm) == 0.25
