"""`hpc-sr upscale` on FITS images in each unit: per-pixel units keep the total, surface brightness the level.

One synthetic 16 x 16 image per BUNIT, all upscaled in one upscale_paths call by an untrained bicubic-skip
SRResNet (its output is bicubic: the total of a smooth image is kept to well under 1 %).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")

from hpc_sr.apps.fits_io import UpscaleWarning  # noqa: E402
from hpc_sr.apps.fits_units import PER_PIXEL, SURFACE_BRIGHTNESS, describe_bunit  # noqa: E402
from hpc_sr.apps.upscale import upscale_paths  # noqa: E402
from hpc_sr.models.registry import build_generator  # noqa: E402

PER_PIXEL_UNITS = [
    "counts", "count", "ct", "ct/s", "electron", "electrons", "e-", "e-/s", "electron/s", "ELECTRONS/S",
    "photon", "ph/s", "photons/s/cm2", "adu", "ADU", "DN", "DN/s", "Jy", "mJy", "uJy", "nJy", "Jy/pixel",
    "counts per pixel", "ct/pix", "erg/s/cm2/A", "erg/s/cm2/Angstrom", "1e-20 erg/s/cm2/A",
    "10**(-17) erg/(s cm2 Angstrom)", "W/m2/Hz", "W/m2", "erg/s", "nanomaggy", "nmgy", "solMass", "Jy km/s",
]  # fmt: skip
SURFACE_UNITS = [
    "MJy/sr", "Jy/sr", "Jy/beam", "mJy/beam", "Jy/beam km/s", "mJy/arcsec2", "uJy/arcsec**2",
    "erg/s/cm2/A/arcsec2", "1e-17 erg/s/cm2/Angstrom/arcsec2", "W/(m2 Hz sr)", "mag/arcsec2", "ct/arcsec2",
    "nanomaggies/arcsec2", "Jy/deg2", "K", "K km/s",
]  # fmt: skip
UNDECIDED_UNITS = {"bananas": "not a unit astropy.units can parse", "mag": "logarithmic", "km/s": "neither"}
UNITS = PER_PIXEL_UNITS + SURFACE_UNITS + list(UNDECIDED_UNITS)


def gaussian(n: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n]
    return (5.0 + 400.0 * np.exp(-((y - 7.3) ** 2 + (x - 8.1) ** 2) / (2 * 2.5**2))).astype(np.float32)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    src, out = tmp_path_factory.mktemp("units"), tmp_path_factory.mktemp("units_sr")
    for i, unit in enumerate(UNITS):
        hdu = fits.PrimaryHDU(gaussian())
        hdu.header["BUNIT"] = unit
        hdu.writeto(src / f"u{i:02d}.fits")
    model = build_generator("srresnet", {"channels": 4, "blocks": 1}, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        upscale_paths(model, [str(src)], out, scale=2)
    return src, out, [str(w.message) for w in caught if issubclass(w.category, UpscaleWarning)]


def pair(results: tuple[Path, Path, list[str]], unit: str) -> tuple[np.ndarray, np.ndarray, fits.Header, str]:
    src, out, notes = results
    i = UNITS.index(unit)
    lr, sr = fits.getdata(src / f"u{i:02d}.fits").astype(np.float64), fits.getdata(out / f"u{i:02d}_sr.fits")
    return lr, sr.astype(np.float64), fits.getheader(out / f"u{i:02d}_sr.fits"), " ".join(
        n for n in notes if f"u{i:02d}.fits" in n
    )


@pytest.mark.parametrize("unit", PER_PIXEL_UNITS)
def test_per_pixel_units_keep_the_total(results: tuple[Path, Path, list[str]], unit: str) -> None:
    assert describe_bunit(unit).kind == PER_PIXEL
    lr, sr, header, notes = pair(results, unit)
    assert abs(sr.sum() / lr.sum() - 1) < 0.01
    assert header["HPCSRFLX"] == PER_PIXEL and header["BUNIT"] == unit and "BUNIT" not in notes


@pytest.mark.parametrize("unit", SURFACE_UNITS)
def test_surface_brightness_keeps_the_level(results: tuple[Path, Path, list[str]], unit: str) -> None:
    assert describe_bunit(unit).kind == SURFACE_BRIGHTNESS
    lr, sr, header, notes = pair(results, unit)
    assert abs(sr.mean() / lr.mean() - 1) < 0.01
    assert header["HPCSRFLX"] == SURFACE_BRIGHTNESS and "BUNIT" not in notes


@pytest.mark.parametrize("unit", list(UNDECIDED_UNITS))
def test_an_undecided_unit_is_named_in_a_warning(results: tuple[Path, Path, list[str]], unit: str) -> None:
    lr, sr, header, notes = pair(results, unit)
    assert f"BUNIT {unit!r} is" in notes and UNDECIDED_UNITS[unit] in notes
    assert "keeping the level (surface brightness); pass --flux per-pixel" in notes
    assert abs(sr.mean() / lr.mean() - 1) < 0.01 and header["HPCSRFLX"] == SURFACE_BRIGHTNESS


def test_a_bare_a_is_angstrom_and_case_is_forgiven() -> None:
    from hpc_sr.apps.fits_units import parse_bunit

    assert str(parse_bunit("erg/s/cm2/A")) == "erg / (Angstrom s cm2)"
    assert str(parse_bunit("ELECTRONS/S")) == "electron / s"
    assert parse_bunit("bananas") is None
