"""What an upscale does to a FITS image's values, decided from its BUNIT parsed with ``astropy.units``.

- **surface brightness** (the level is kept): a solid angle or a beam in the denominator (MJy/sr, Jy/beam,
  erg/s/cm2/A/arcsec2, mag/arcsec2, counts/arcsec2), or a brightness temperature (K, K km/s);
- **per-pixel** (the total is kept: each output pixel is input / scale**2): an explicit per pixel (Jy/pix),
  or a count-like unit (ct, electron, photon, adu, DN, maggy) or a flux-like unit (kg in its SI decomposition:
  Jy, mJy, erg/s/cm2/A, W/m2, erg/s), each also as a rate (/s);
- **undecided** (None, with the reason): a unit astropy cannot parse, a logarithmic unit without a solid angle
  (mag), or a quantity that is neither (dimensionless, km/s, s, cm-2); the caller keeps the level and says so.

Before parsing, a few spellings archives use are read as astronomers mean them: plurals (counts, electrons,
nanomaggies), ``e-`` (electron), ``per`` (``/``), a bare ``A`` (Angstrom, not ampere) and upper case
(``ELECTRONS/S``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

PER_PIXEL = "per-pixel"
SURFACE_BRIGHTNESS = "surface-brightness"
_COUNT_LIKE = {"ct", "electron", "ph", "adu", "DN", "mgy"}  # astropy's irreducible "number of things" units
_ALIASES = {
    "counts": "ct",
    "cts": "ct",
    "electrons": "electron",
    "photons": "ph",
    "adus": "adu",
    "nanomaggies": "nmgy",
    "maggies": "mgy",
    "pixels": "pix",
    "beams": "beam",
}


@dataclass(frozen=True)
class UnitClass:
    """``kind``: PER_PIXEL, SURFACE_BRIGHTNESS or None (undecided); ``why``: one phrase for messages."""

    kind: str | None
    why: str


def _spellings(text: str) -> list[str]:
    """``text`` with the archive spellings rewritten, then as written, then rewritten in lower case."""
    t = re.sub(r"\s+per\s+", "/", text.strip(), flags=re.IGNORECASE)
    t = re.sub(r"(?<![A-Za-z0-9.])e-(?![0-9])", "electron", t)
    t = re.sub(r"(?<![A-Za-z])A(?![A-Za-z])", "Angstrom", t)
    return list(dict.fromkeys([t, text.strip(), t.lower()]))


def parse_bunit(text: str) -> Any | None:
    """The astropy unit of a BUNIT string (FITS syntax first, then astropy's generic), or None."""
    import astropy.units as u

    aliases = {name: u.Unit(unit) for name, unit in _ALIASES.items()}
    with warnings.catch_warnings(), u.add_enabled_aliases(aliases):
        warnings.simplefilter("ignore")
        for spelling in _spellings(text):
            for fmt in ("fits", None):
                try:
                    return u.Unit(spelling, format=fmt, parse_strict="raise")
                except (ValueError, TypeError):
                    continue
    return None


def _powers(unit: Any) -> dict[str, float]:
    """{base name: power} of the SI decomposition of ``unit`` (of its physical unit for mag(AB) and such)."""
    physical = getattr(unit, "physical_unit", None)
    base = (physical if physical is not None else unit).decompose()
    return {str(b): float(p) for b, p in zip(base.bases, base.powers, strict=True)}


def describe_bunit(bunit: str | None) -> UnitClass:
    """How an upscale treats a BUNIT (see the module docstring)."""
    if bunit is None or not str(bunit).strip():
        return UnitClass(None, "no BUNIT")
    unit = parse_bunit(str(bunit))
    if unit is None:
        return UnitClass(None, "not a unit astropy.units can parse")
    import astropy.units as u

    p = _powers(unit)
    logarithmic = isinstance(unit, u.FunctionUnitBase) or "dex" in p
    if p.get("rad", 0) < 0 or p.get("beam", 0) < 0:
        return UnitClass(SURFACE_BRIGHTNESS, "per solid angle or beam")
    if logarithmic:
        return UnitClass(None, "a logarithmic unit (magnitudes) without a solid angle")
    if p.get("K", 0) > 0:
        return UnitClass(SURFACE_BRIGHTNESS, "a brightness temperature")
    if p.get("pix", 0) < 0:
        return UnitClass(PER_PIXEL, "per pixel")
    if any(p.get(name, 0) > 0 for name in _COUNT_LIKE) or p.get("kg", 0) > 0:
        return UnitClass(PER_PIXEL, "a count or flux in each pixel")
    return UnitClass(None, f"neither a flux nor a surface brightness ({unit.physical_type})")


def classify_bunit(bunit: str | None) -> str | None:
    """PER_PIXEL, SURFACE_BRIGHTNESS or None (missing, unparsable or undecided unit)."""
    return describe_bunit(bunit).kind
