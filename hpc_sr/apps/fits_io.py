"""FITS and physical-unit helpers of ``hpc-sr upscale``: HDU choice, WCS rescaling, flux units, normalisation.

- :func:`read_fits_image` picks the image HDU: the first one holding a 2-D (or 1 x H x W) numeric image, or
  the one named by ``hdu`` (index or EXTNAME); none fits -> DataError naming the file and its HDUs.
- :func:`rescale_wcs_header` maps the WCS of an image to the WCS of its ``scale`` x upsampled version, so that
  input pixel (i, j) (0-based centre) and output position (s*i + (s-1)/2, s*j + (s-1)/2) have the same world
  coordinate.
- :func:`classify_bunit` / :func:`resolve_flux`: a per-pixel unit (counts, ADU, electrons, e-/s, ...) keeps
  the total flux (the output is divided by s**2), a surface brightness (.../arcsec2, MJy/sr, Jy/beam, ...)
  keeps the level; an unknown or missing BUNIT keeps the level, with a warning.
- :class:`Normalization`: the reversible affine map ``(x - offset) / scale`` into the [0, 1] range the model
  was trained on; :func:`choose_normalization` picks it (``auto``: none / max / percentile).

Every choice is written to the output header: HPCSRUPS (factor), HPCSRNRM, HPCSROFF, HPCSRSCL (normalisation),
HPCSRFLX (flux mode), plus HISTORY cards.
"""

from __future__ import annotations

import gzip
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.errors import DataError

FLUX_MODES = ("auto", "per-pixel", "surface-brightness")
NORMALIZE_MODES = ("auto", "none", "max", "percentile")
PERCENTILES = (0.5, 99.5)  # the range ``percentile`` maps onto [0, 1]
ALT_WCS = ("", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
STALE_CARDS = ("BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM")  # not copied to the (float) output
_SIP = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")
_SURFACE = re.compile(r"arcsec|arcmin|/sr\b|sr\^?-1|sr\*\*-1|steradian|beam|/deg|deg(\*\*|\^)?-?2")
_PER_PIXEL = {
    "count",
    "counts",
    "ct",
    "cts",
    "adu",
    "adus",
    "dn",
    "electron",
    "electrons",
    "e-",
    "e",
    "photon",
    "photons",
    "nanomaggy",
    "nanomaggies",
    "nmgy",
}


class UpscaleWarning(UserWarning):
    """Something the user should know about one file (units, values outside [0, 1], blank pixels)."""


def warn(message: str) -> None:
    warnings.warn(message, UpscaleWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------- HDUs
def _fits() -> Any:
    try:
        from astropy.io import fits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("reading FITS needs astropy: pip install 'hpc-sr[fits]'") from exc
    return fits


def parse_hdu(value: str | int | None) -> int | str | None:
    """``--hdu`` value: None, an index (``"1"`` -> 1) or an EXTNAME (``"SCI"``)."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    return int(text) if text.isdigit() else text


def _image_shape(h: Any) -> tuple[int, ...] | None:
    """Shape of an image HDU's data, or None for a table, a group HDU or an empty HDU."""
    fits = _fits()
    image_types = fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU
    if not isinstance(h, image_types) or isinstance(h, fits.GroupsHDU):
        return None
    shape = tuple(int(n) for n in h.shape)
    return shape or None


def _fits_image(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)) and min(shape) > 0


def hdu_summary(hdul: Any) -> str:
    """``0 PRIMARY (no data), 1 SCI ImageHDU (32, 32), ...`` for error messages."""
    parts = []
    for i, h in enumerate(hdul):
        shape = _image_shape(h)
        what = f"{type(h).__name__} {shape}" if shape else f"{type(h).__name__}, no image data"
        parts.append(f"{i} {h.name or '?'} ({what})")
    return ", ".join(parts)


def select_image_hdu(hdul: Any, path: str | Path, hdu: int | str | None = None) -> int:
    """Index of the image HDU to upscale: ``hdu`` (index or EXTNAME) or the first 2-D / 1xHxW image."""
    if hdu is None:
        for i, h in enumerate(hdul):
            if _fits_image(_image_shape(h)):
                return i
        raise DataError(f"{path}: no HDU holds a 2-D (or 1 x H x W) image; HDUs: {hdu_summary(hdul)}")
    if isinstance(hdu, int) and hdu < 0:
        raise DataError(f"{path}: HDU index {hdu} must be >= 0; HDUs: {hdu_summary(hdul)}")
    try:
        index = hdu if isinstance(hdu, int) else hdul.index_of(hdu)
        chosen = hdul[index]
    except (KeyError, IndexError):
        raise DataError(f"{path}: no HDU {hdu!r}; HDUs: {hdu_summary(hdul)}") from None
    if not _fits_image(_image_shape(chosen)):
        raise DataError(f"{path}: HDU {hdu!r} is not a 2-D (or 1 x H x W) image; HDUs: {hdu_summary(hdul)}")
    return int(index)


@dataclass
class FitsImage:
    """The image to upscale and the headers the output keeps."""

    path: Path
    data: np.ndarray  # as stored: (H, W) or (1, H, W), BSCALE/BZERO applied
    header: Any  # astropy Header of the image HDU (a copy)
    index: int  # HDU index; 0 = primary
    primary_header: Any | None  # the primary header when the image is an extension
    others: int  # HDUs of the input not copied to the output

    @property
    def label(self) -> str:
        return f"{self.path}[{self.index}]"


def read_fits_image(path: str | Path, hdu: int | str | None = None) -> FitsImage:
    """Read the image HDU of ``path`` (.fits/.fit/.fts, optionally gzipped); DataError names the file."""
    fits, path = _fits(), Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            index = select_image_hdu(hdul, path, hdu)
            chosen = hdul[index]
            data = np.array(chosen.data)
            header = chosen.header.copy()
            primary = hdul[0].header.copy() if index > 0 else None
            others = len(hdul) - (2 if index > 0 else 1)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for a damaged file
        raise DataError(f"{path}: cannot read FITS: {type(exc).__name__}: {exc}") from None
    return FitsImage(path, data, header, index, primary, others)


# ----------------------------------------------------------------------------------------------- WCS
def rescale_wcs_header(header: Any, scale: int) -> Any:
    """A copy of ``header`` whose WCS (primary and alternates A-Z) describes the ``scale`` x upsampled image.

    CRPIXi -> s * (CRPIXi - 0.5) + 0.5 and NAXIS1/2 -> s * NAXIS1/2 for the two image axes; CDi_j / s when
    a CD matrix is present, else CDELTi / s (PCi_j and CROTA kept; a missing CDELT counts as 1); SIP
    coefficients A/B/AP/BP_p_q * s**(1-p-q). Every other card (BUNIT, TPV PV cards, ...) is kept.
    """
    out = header.copy()
    s = float(scale)
    for axis in (1, 2):
        key = f"NAXIS{axis}"
        if key in out:
            out[key] = int(out[key]) * scale
    keys = list(out.keys())
    for alt in ALT_WCS:
        if not any(re.match(rf"^(CTYPE|CRPIX|CRVAL|CD|PC|CDELT)\d(_\d)?{alt}$", k) for k in keys):
            continue
        for axis in (1, 2):
            key = f"CRPIX{axis}{alt}"
            out[key] = s * (float(out.get(key, 0.0)) - 0.5) + 0.5
        cd = [k for k in keys if re.match(rf"^CD\d_[12]{alt}$", k)]
        if cd:
            for key in cd:
                out[key] = float(out[key]) / s
        else:
            for axis in (1, 2):
                key = f"CDELT{axis}{alt}"
                out[key] = float(out.get(key, 1.0)) / s
    for key in list(out):
        m = _SIP.match(key)
        if m:
            order = int(m.group(2)) + int(m.group(3))
            out[key] = float(out[key]) * s ** (1 - order)
    return out


# ----------------------------------------------------------------------------------------------- units
def classify_bunit(bunit: str | None) -> str | None:
    """``"per-pixel"``, ``"surface-brightness"`` or None (missing or unknown unit)."""
    if not bunit or not str(bunit).strip():
        return None
    s = re.sub(r"\s+", "", str(bunit).lower())
    if _SURFACE.search(s):
        return "surface-brightness"
    if re.search(r"/pix|pix(el)?s?-1|perpix|pix(el)?\*\*-1", s):
        return "per-pixel"
    head = re.split(r"[/.*^(]|s-1$", s)[0]
    return "per-pixel" if head in _PER_PIXEL else None


def resolve_flux(flux: str, bunit: str | None, label: str, warn_unknown: bool = True) -> str:
    """The flux mode of one image: ``flux``, or for ``auto`` the BUNIT's (unknown: surface brightness)."""
    if flux not in FLUX_MODES:
        raise DataError(f"flux={flux!r}: choose one of {', '.join(FLUX_MODES)}")
    if flux != "auto":
        return flux
    kind = classify_bunit(bunit)
    if kind is None:
        if warn_unknown:
            what = f"BUNIT {bunit!r} is not a known unit" if bunit else "no BUNIT"
            warn(
                f"{label}: {what}; keeping the level (surface brightness); pass --flux per-pixel to "
                f"conserve the total flux instead"
            )
        return "surface-brightness"
    return kind


# ------------------------------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class Normalization:
    """``model input = (x - offset) / scale``; :meth:`restore` maps model output back to input units."""

    method: str
    offset: float = 0.0
    scale: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - offset) / scale, in x's float type (float64 for other types)."""
        return (_float(x) - self.offset) / self.scale

    def restore(self, y: np.ndarray) -> np.ndarray:
        """y * scale + offset, in y's float type (float64 for other types)."""
        return _float(y) * self.scale + self.offset


def _float(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def choose_normalization(values: np.ndarray, method: str, label: str) -> Normalization:
    """Normalisation for the finite ``values`` of one image.

    ``none``; ``max`` (divide by the largest absolute value); ``percentile`` (the 0.5-99.5 % range onto
    [0, 1], the offset kept); ``auto``: none when the values lie in [0, 1], else max when none is negative,
    else percentile.
    """
    if method not in NORMALIZE_MODES:
        raise DataError(f"normalize={method!r}: choose one of {', '.join(NORMALIZE_MODES)}")
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise DataError(f"{label}: no finite pixel values")
    lo, hi = float(v.min()), float(v.max())
    if method == "auto":
        method = "none" if lo >= 0 and hi <= 1 else "max" if lo >= 0 else "percentile"
    if method == "none":
        return Normalization("none")
    if method == "max":
        peak = max(abs(lo), abs(hi))
        return Normalization("max", 0.0, peak if peak > 0 else 1.0)
    p_lo, p_hi = (float(p) for p in np.percentile(v, PERCENTILES))
    if p_hi <= p_lo:
        p_lo, p_hi = lo, hi
    return Normalization("percentile", p_lo, p_hi - p_lo if p_hi > p_lo else 1.0)


def warn_out_of_range(model_values: np.ndarray, label: str, norm: Normalization) -> float:
    """Warn (once, naming ``label``) when values the model sees lie outside [0, 1]; returns the fraction."""
    v = np.asarray(model_values)
    frac = float(np.count_nonzero((v < 0) | (v > 1))) / max(v.size, 1)
    if frac > 0:
        warn(
            f"{label}: {100 * frac:.3g}% of the pixels the model sees lie outside [0, 1] "
            f"(normalize={norm.method}); they are passed on as they are, not clipped"
        )
    return frac


# ----------------------------------------------------------------------------------------------- output
def provenance_cards(scale: int, norm: Normalization, flux: str) -> dict[str, tuple[Any, str]]:
    """The HPCSR* header cards of one output image."""
    return {
        "HPCSRUPS": (int(scale), "hpc_sr upscale factor"),
        "HPCSRNRM": (norm.method, "hpc_sr normalisation: model in = (x-OFF)/SCL"),
        "HPCSROFF": (float(norm.offset), "hpc_sr normalisation offset (input units)"),
        "HPCSRSCL": (float(norm.scale), "hpc_sr normalisation scale (input units)"),
        "HPCSRFLX": (flux, "per-pixel: total flux kept; else level kept"),
    }


def fits_output_bytes(
    image: FitsImage,
    data: np.ndarray,
    scale: int,
    cards: dict[str, tuple[Any, str]],
    history: list[str],
    compress: bool,
) -> bytes:
    """The output file: the SR image (same HDU position and EXTNAME) with its rescaled WCS header.

    An image read from an extension is written after a copy of the input's primary header; other HDUs of
    the input are not copied (a HISTORY card says how many).
    """
    fits = _fits()
    header = rescale_wcs_header(image.header, scale)
    for key in STALE_CARDS:
        header.remove(key, ignore_missing=True, remove_all=True)
    for key, (value, comment) in cards.items():
        header[key] = (value, comment)
    for line in history:
        header.add_history(line)
    if image.others:
        header.add_history(f"hpc_sr: {image.others} other HDU(s) of the input not copied")
    if image.index == 0:
        hdul = fits.HDUList([fits.PrimaryHDU(data, header=header)])
    else:
        primary = fits.PrimaryHDU(header=image.primary_header.copy())
        for key in STALE_CARDS:
            primary.header.remove(key, ignore_missing=True, remove_all=True)
        hdul = fits.HDUList([primary, fits.ImageHDU(data, header=header)])
    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw
