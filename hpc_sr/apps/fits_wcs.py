"""The WCS of an image upscaled ``s`` x: every input pixel centre keeps its world coordinates.

Input pixel i (0-based) becomes output pixels s*i .. s*i+s-1, so its centre sits at s*i + (s-1)/2; a 1-based
pixel coordinate p (CRPIX, LTV, a distortion table's CRVAL) becomes s*(p - 0.5) + 0.5.

:func:`rescale_wcs_header` edits each representation in its own cards, so an archive header keeps its form and
every reader (wcslib, DS9, IRAF) gets the same answer:

- NAXIS1/2 x s; CRPIXja (primary and alternates A-Z) as above;
- CDi_ja (pixel axes j = 1, 2) / s and CDELTia (i = 1, 2) / s, both when both are present (wcslib reads
  PC + CDELT where a header also has CD, other readers CD); without either, CDELTia = 1/s. PC, PC00i00j and
  CROTA are kept;
- SIP A/B/AP/BP_p_q x s**(1-p-q), A/B_DMAX x s; TPV (PV cards) is kept: it acts on intermediate world
  coordinates;
- a DSS plate solution: CNPIX1/2 and OBJCTX/Y x s, XPIXELSZ/YPIXELSZ / s (AMDX/AMDY, PPO, PLTSCALE kept);
- IRAF logical = LTM * physical + LTV: LTMi_j (i = 1, 2) x s and LTVi as a pixel coordinate (added when one is
  present), so physical (DS9) coordinates are kept;
- lookup-table distortions (CPDISj / D2IMDISj = 'Lookup'): CPERRj, D2IMERRj x s, and the WCSDVARR / D2IMARR
  tables by :func:`rescale_wcs_table` (their CRVAL as a pixel coordinate, CDELT x s, values in pixels x s);
- -TAB coordinates: the table is looked up by intermediate world coordinates, which do not change: copied.

Distortion functions other than lookup tables (CPDIS/CQDIS 'Polynomial', 'TPD', ...) are refused. Every result
is checked by :func:`check_rescaled_wcs`, which reads both WCS back with astropy (distortions included).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from hpc_sr.errors import DataError

ALT_WCS = ("", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
LOOKUP_TABLES = ("WCSDVARR", "D2IMARR")
TOLERANCE_PX = 1e-4  # largest offset (input pixels) check_rescaled_wcs accepts
_SIP = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")
_TIMES_S = re.compile(r"^(A_DMAX|B_DMAX|CNPIX[12]|OBJCTX|OBJCTY|(CPERR|D2IMERR)\d+[A-Z]?)$")
_OVER_S = ("XPIXELSZ", "YPIXELSZ")
_DISTORTION = re.compile(r"^(CPDIS|CQDIS|D2IMDIS)\d+[A-Z]?$")
_OLD_CD = re.compile(r"^CD\d{3}00[12]$")  # CD001002: the AIPS spelling of CD1_2
_IRAF = re.compile(r"^(LTV|LTM)\d")
_TABLE_REF = re.compile(r"^(DP|DQ|D2IM)\d+[A-Z]?\.EXTVER$")


def output_pixel(p: float, s: float) -> float:
    """The output coordinate (1-based) of input pixel coordinate ``p`` (1-based) after an ``s`` x upscale."""
    return s * (p - 0.5) + 0.5


_WCS_CARD = re.compile(r"^(?:CTYPE|CRPIX|CRVAL|CD|PC|CDELT)\d+(?:_\d+)?([A-Z]?)$")


def wcs_keys(header: Any) -> list[str]:
    """The WCS keys of ``header``: ``""`` (primary) and the alternates A-Z that have cards."""
    found = {m.group(1) for key in header if (m := _WCS_CARD.match(key))}
    return [alt for alt in ALT_WCS if alt in found]


def _times(out: Any, key: str, factor: float) -> None:
    if isinstance(out[key], bool) or not isinstance(out[key], int | float):
        return  # not a number: nothing a reader could use
    value = out[key] * factor
    out[key] = int(value) if isinstance(out[key], int) and float(value).is_integer() else float(value)


def refuse_unsupported(header: Any, label: str) -> None:
    """DataError naming the card for a distortion function the rescale cannot express (not a lookup table)."""
    for key in header:
        m = _DISTORTION.match(key)
        if m and str(header[key]).strip().lower() != "lookup":
            record = {"CPDIS": "DP", "CQDIS": "DQ", "D2IMDIS": "D2IM"}[m.group(1)] + key[len(m.group(1)) :]
            raise DataError(
                f"{label}: {key} = {header[key]!r}: hpc_sr rescales SIP, TPV and lookup-table distortions "
                f"only; convert it to SIP, or delete the {key} and {record}.* cards to upscale without it"
            )


def rescale_wcs_header(header: Any, scale: int) -> Any:
    """A copy of ``header`` whose WCS describes the ``scale`` x upsampled image (see the module docstring)."""
    out = header.copy()
    s = float(scale)
    for axis in (1, 2):
        key = f"NAXIS{axis}"
        if key in out:
            out[key] = int(out[key]) * scale
    keys = list(out.keys())
    for alt in wcs_keys(out):
        _rescale_linear(out, keys, alt, s)
    for key in keys:
        m = _SIP.match(key)
        if m:
            _times(out, key, s ** (1 - int(m.group(2)) - int(m.group(3))))
        elif _TIMES_S.match(key):
            _times(out, key, s)
        elif key in _OVER_S:
            _times(out, key, 1 / s)
    if any(_IRAF.match(k) for k in keys):
        _rescale_iraf(out, s)
    return out


def _rescale_linear(out: Any, keys: list[str], alt: str, s: float) -> None:
    """CRPIX, CD and CDELT of WCS ``alt`` (see the module docstring)."""
    for axis in (1, 2):
        key = f"CRPIX{axis}{alt}"
        out[key] = output_pixel(float(out.get(key, 0.0)), s)
    cd_key = re.compile(rf"^CD\d+_[12]{alt}$")
    cd = [k for k in keys if cd_key.match(k) or (not alt and _OLD_CD.match(k))]
    for key in cd:
        out[key] = float(out[key]) / s
    for axis in (1, 2):
        key = f"CDELT{axis}{alt}"
        if key in out or not cd:
            out[key] = float(out.get(key, 1.0)) / s


def _rescale_iraf(out: Any, s: float) -> None:
    """IRAF's logical = LTM * physical + LTV for logical axes 1, 2 scaled by ``s`` (physical kept)."""
    for i in (1, 2):
        out[f"LTV{i}"] = output_pixel(float(out.get(f"LTV{i}", 0.0)), s)
        for j in (1, 2):
            key = f"LTM{i}_{j}"
            if key in out or i == j:
                out[key] = float(out.get(key, 1.0 if i == j else 0.0)) * s


def table_refs(header: Any) -> list[tuple[str, int]]:
    """(EXTNAME, EXTVER) of the HDUs the WCS of ``header`` reads: distortion lookup tables and -TAB tables."""
    refs: list[tuple[str, int]] = []
    for key in header:
        if _TABLE_REF.match(key):
            refs.append(("D2IMARR" if key.startswith("D2IM") else "WCSDVARR", int(header[key])))
        m = re.match(r"^PS(\d+)_0([A-Z]?)$", key)
        if m:
            refs.append((str(header[key]).strip(), int(header.get(f"PV{m.group(1)}_1{m.group(2)}", 1))))
    return list(dict.fromkeys(refs))


def rescale_wcs_table(hdu: Any, scale: int) -> Any:
    """A copy of a table HDU the WCS reads: a lookup table rescaled (see the module docstring), else as is."""
    out = hdu.copy()
    if hdu.name not in LOOKUP_TABLES:
        return out
    s = float(scale)
    for axis in range(1, int(out.header.get("NAXIS", 0)) + 1):
        out.header[f"CRVAL{axis}"] = output_pixel(float(out.header.get(f"CRVAL{axis}", 0.0)), s)
        out.header[f"CDELT{axis}"] = float(out.header.get(f"CDELT{axis}", 1.0)) * s
    out.data = (np.asarray(hdu.data) * s).astype(hdu.data.dtype)
    return out


def _world(wcs: Any, pixels: np.ndarray) -> np.ndarray:
    """(N, naxis) world coordinates of (N, 2) 0-based image pixels (further pixel axes at 0)."""
    n = wcs.pixel_n_dim
    full = np.zeros((len(pixels), n))
    full[:, : min(n, 2)] = pixels[:, : min(n, 2)]
    return np.asarray(wcs.all_pix2world(full, 0), dtype=np.float64)


def _difference(a: np.ndarray, b: np.ndarray, lng: int) -> np.ndarray:
    d = b - a
    if lng >= 0:
        d[:, lng] = (d[:, lng] + 180.0) % 360.0 - 180.0
    return d


def _offset_px(w_in: Any, w_out: Any, shape: tuple[int, int], s: int) -> float:
    """Largest world offset between input pixel centres and their output centres, in input pixels."""
    h, w = shape
    ys, xs = np.meshgrid(np.linspace(0, h - 1, min(h, 7)), np.linspace(0, w - 1, min(w, 7)), indexing="ij")
    pix = np.stack([xs.ravel(), ys.ravel()], axis=1)
    lng = w_in.wcs.lng if w_in.has_celestial else -1
    a = _world(w_in, pix)
    d = _difference(a, _world(w_out, s * pix + (s - 1) / 2), lng)
    step = np.fmax(  # world change over one input pixel, the yardstick of each world axis
        np.abs(_difference(a, _world(w_in, pix + [1.0, 0.0]), lng)),
        np.abs(_difference(a, _world(w_in, pix + [0.0, 1.0]), lng)),
    )
    floor = 1e-12 * np.fmax(np.abs(a), 1.0)
    both_blank = np.isnan(a) & np.isnan(d)
    err = np.abs(d) / np.fmax(np.nan_to_num(step), floor)
    err = np.where(both_blank, 0.0, np.where(np.isnan(err), np.inf, err))
    return float(err.max()) if err.size else 0.0


def check_rescaled_wcs(
    before: tuple[Any, Any], after: tuple[Any, Any], shape: tuple[int, int], scale: int, label: str
) -> list[str]:
    """Read every WCS of ``before`` and ``after`` ((header, HDU list holding its tables)) back with astropy.

    DataError when an output pixel centre lands more than TOLERANCE_PX input pixels away from its input
    pixel's world coordinates, or when astropy cannot read the output WCS; returns a note for each input WCS
    astropy cannot read (rescaled, but unchecked).
    """
    from astropy import log

    notes = []
    level = log.level
    log.setLevel("WARNING")  # astropy's INFO notes on odd input headers are not ours to repeat
    try:
        for alt in wcs_keys(before[0]):
            notes += _check_one(before, after, shape, scale, label, alt)
    finally:
        log.setLevel(level)
    return notes


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _check_one(
    before: tuple[Any, Any], after: tuple[Any, Any], shape: tuple[int, int], scale: int, label: str, alt: str
) -> list[str]:
    from astropy.wcs import WCS

    name = f"WCS {alt!r}" if alt else "WCS"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w_in = WCS(before[0], fobj=before[1], key=alt or " ")
        except Exception as exc:  # noqa: BLE001 - wcslib raises many kinds for a broken header
            return [f"astropy cannot read the input {name} ({_one_line(exc)}); rescaled unchecked"]
        try:
            w_out = WCS(after[0], fobj=after[1], key=alt or " ")
            offset = _offset_px(w_in, w_out, shape, scale)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"{label}: the rescaled {name} cannot be read back ({_one_line(exc)}); "
                f"remove its distortion cards or upscale without a WCS"
            ) from None
    if offset > TOLERANCE_PX:
        raise DataError(
            f"{label}: the rescaled {name} moves pixel centres by up to {offset:.3g} input pixels; "
            f"hpc_sr cannot rescale this WCS representation; simplify the WCS (or delete it) and retry"
        )
    return []
