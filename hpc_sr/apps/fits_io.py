"""FITS helpers of ``hpc-sr upscale``: HDU names, flux mode, normalisation, the SR image's header and HDU.

The files themselves are read and written by :mod:`hpc_sr.apps.inference.format_fits` (every image HDU, MEF,
fpack, cubes, error extensions); it uses these pieces:

- :func:`parse_hdu` (an ``--hdu`` value), :func:`compression_of` (how a tile-compressed image is compressed).
- WCS: :mod:`hpc_sr.apps.fits_wcs` (:func:`rescale_wcs_header` is re-exported here); units:
  :mod:`hpc_sr.apps.fits_units`; :func:`resolve_flux` turns BUNIT into a flux mode (per-pixel: the total flux
  is kept, the output divided by s**2; surface-brightness: the level is kept), warning when it cannot tell.
- :class:`Normalization`: the reversible affine map ``(x - offset) / scale`` into the [0, 1] range the model
  was trained on; :func:`choose_normalization` picks it (``auto``: none / max / percentile).
- :func:`sr_header` (the input header with its WCS rescaled, stale cards dropped, :func:`provenance_cards`
  set), :func:`choice_note` (the HISTORY line), :func:`image_hdu` (an output image compressed the same way as
  its input).

Every choice is written to the output header: HPCSRUPS (factor), HPCSRNRM, HPCSROFF, HPCSRSCL (normalisation),
HPCSRFLX (flux mode), plus HISTORY cards.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpc_sr.apps.fits_units import PER_PIXEL, SURFACE_BRIGHTNESS, describe_bunit
from hpc_sr.apps.fits_units import classify_bunit as classify_bunit  # re-exported (moved)
from hpc_sr.apps.fits_wcs import rescale_wcs_header
from hpc_sr.errors import DataError

FITS_SUFFIXES = tuple(e + z for z in ("", ".gz") for e in (".fits", ".fit", ".fts", ".fits.fz", ".fz"))
FLUX_MODES = ("auto", PER_PIXEL, SURFACE_BRIGHTNESS)
NORMALIZE_MODES = ("auto", "none", "max", "percentile")
PERCENTILES = (0.5, 99.5)  # the range ``percentile`` maps onto [0, 1]
NOISE_TOLERANCE = 0.1  # negatives down to -10 % of the range count as sky noise around 0 (auto, no record)
STALE_CARDS = ("BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM")  # not copied to the (float) output


class UpscaleWarning(UserWarning):
    """Something the user should know about one file (units, values outside [0, 1], blank pixels)."""


_collecting = threading.local()


def warn(message: str) -> None:
    """An UpscaleWarning, or a note kept for later while this thread collects them (collect_warnings)."""
    notes = getattr(_collecting, "notes", None)
    if notes is not None:
        notes.append(message)
        return
    warnings.warn(message, UpscaleWarning, stacklevel=3)


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Keep this thread's :func:`warn` messages in a list instead of warning: the warnings module is one state
    for all threads, and astropy's own ``catch_warnings`` in another thread swallows warnings meanwhile, so
    the inference engine's threads hand their notes to the main thread instead."""
    outer = getattr(_collecting, "notes", None)
    _collecting.notes = notes = []
    try:
        yield notes
    finally:
        _collecting.notes = outer


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


def compression_of(h: Any) -> dict[str, Any] | None:
    """The CompImageHDU arguments that compress an image like ``h``; None when ``h`` is not compressed."""
    if not isinstance(h, _fits().CompImageHDU):
        return None
    return {
        "compression_type": str(h.compression_type),
        "tile_shape": tuple(int(t) for t in h.tile_shape),
        "quantize_level": float(h.quantize_level),
        "quantize_method": int(h.quantize_method),
        "dither_seed": int(h.dither_seed),
        "hcomp_scale": float(h.hcomp_scale),
        "hcomp_smooth": int(h.hcomp_smooth),
    }


# ----------------------------------------------------------------------------------------------- units
_describe_bunit = functools.lru_cache(maxsize=1024)(describe_bunit)  # astropy parses a unit in ~0.3 ms


def resolve_flux(flux: str, bunit: str | None, label: str, warn_unknown: bool = True) -> str:
    """The flux mode of one image: ``flux``, or for ``auto`` the BUNIT's (undecided: the level is kept)."""
    if flux not in FLUX_MODES:
        raise DataError(f"flux={flux!r}: choose one of {', '.join(FLUX_MODES)}")
    if flux != "auto":
        return flux
    unit = _describe_bunit(None if bunit is None else str(bunit))
    if unit.kind is None:
        if warn_unknown:
            what = f"BUNIT {bunit!r} is {unit.why}" if unit.why != "no BUNIT" else "no BUNIT"
            warn(
                f"{label}: {what}; keeping the level (surface brightness); pass --flux per-pixel to "
                f"conserve the total flux instead"
            )
        return SURFACE_BRIGHTNESS
    return unit.kind


# ------------------------------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class Normalization:
    """``model input = (x - offset) / scale``; :meth:`restore` maps model output back to input units."""

    method: str
    offset: float = 0.0
    scale: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - offset) / scale, in x's float type (float64 for other types)."""
        if self.scale == 1.0:  # the same values: x / 1.0 is x
            return _float(x) - self.offset
        return (_float(x) - self.offset) / self.scale

    def restore(self, y: np.ndarray) -> np.ndarray:
        """y * scale + offset, in y's float type (float64 for other types)."""
        if self.scale == 1.0:  # the same values: y * 1.0 is y
            return _float(y) + self.offset
        return _float(y) * self.scale + self.offset


def _float(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def choose_normalization(
    values: np.ndarray, method: str, label: str, trained: dict[str, Any] | None = None
) -> Normalization:
    """Normalisation for the finite ``values`` of one image.

    ``none``; ``max`` (divide by the largest absolute value); ``percentile`` (the 0.5-99.5 % range onto
    [0, 1], the offset kept); ``auto``: the convention the model was trained with when it records one
    (``trained``, the ``data_values`` of its checkpoint: raw values), else a guess from this image: none when
    the values lie in [0, 1] give or take the negative noise of a sky-subtracted image (the 0.5 % quantile
    above -NOISE_TOLERANCE of the range), max when the peak exceeds 1 and the negatives are that noise, else
    percentile.
    """
    if method not in NORMALIZE_MODES:
        raise DataError(f"normalize={method!r}: choose one of {', '.join(NORMALIZE_MODES)}")
    v = np.asarray(values)
    if v.size == 0:
        raise DataError(f"{label}: no finite pixel values")
    lo, hi = float(v.min()), float(v.max())  # exact in the values' own type: no float64 copy for these
    if method == "auto" and trained is not None:
        method = str(trained.get("normalize", "none"))
        warn_outside_training_range(lo, hi, label, trained)
    elif method == "auto":
        method = guess_normalization(v, lo, hi)
    if method == "none":
        return Normalization("none")
    if method == "max":
        peak = max(abs(lo), abs(hi))
        return Normalization("max", 0.0, peak if peak > 0 else 1.0)
    v = np.asarray(v, dtype=np.float64).ravel()
    p_lo, p_hi = (float(p) for p in np.percentile(v, PERCENTILES))
    if p_hi <= p_lo:
        p_lo, p_hi = lo, hi
    return Normalization("percentile", p_lo, p_hi - p_lo if p_hi > p_lo else 1.0)


def guess_normalization(v: np.ndarray, lo: float, hi: float) -> str:
    """``auto`` for a model without a record: keep values that already look like [0, 1] data (negative
    sky noise allowed), divide by the peak when only the scale is off, stretch the percentiles otherwise."""
    if lo >= 0 and hi <= 1:
        return "none"
    floor = float(np.percentile(np.asarray(v, dtype=np.float64).ravel(), PERCENTILES[0])) if lo < 0 else 0.0
    if hi <= 1 and floor >= -NOISE_TOLERANCE:
        return "none"
    if hi > 0 and floor >= -NOISE_TOLERANCE * hi:
        return "max"
    return "percentile"


def warn_outside_training_range(lo: float, hi: float, label: str, trained: dict[str, Any]) -> None:
    """Warn when an image's values lie far outside the LR range the model was trained on."""
    lr = trained.get("lr") or {}
    t_lo, t_hi = lr.get("min"), lr.get("max")
    if t_lo is None or t_hi is None:
        return
    span = max(float(t_hi) - float(t_lo), 1e-12)
    if lo < float(t_lo) - span or hi > float(t_hi) + span:
        warn(
            f"{label}: values span [{lo:.4g}, {hi:.4g}], far outside the LR range the model was trained on "
            f"[{float(t_lo):.4g}, {float(t_hi):.4g}]; pass --normalize max or percentile to rescale them"
        )


def warn_out_of_range(model_values: np.ndarray, label: str, norm: Normalization) -> float:
    """Warn (once, naming ``label``) when values the model sees lie outside [0, 1]; returns the fraction."""
    v = np.asarray(model_values)
    if v.size == 0 or (v.min() >= 0 and v.max() <= 1):  # two reductions instead of three masks
        return 0.0
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


def sr_header(
    header: Any,
    scale: int,
    cards: dict[str, tuple[Any, str]],
    label: str,
    rescale: Callable[[Any, int], Any] = rescale_wcs_header,
) -> Any:
    """A copy of an input image's header for its SR image: WCS rescaled (by ``rescale``: the same edits,
    memoised for instance), stale scaling / checksum cards removed, ``cards`` set. Any header with astropy's
    keys / [] / get / copy / remove API will do."""
    try:
        out = rescale(header, scale)
    except (TypeError, ValueError) as exc:  # a WCS card that is not a number
        raise DataError(f"{label}: cannot rescale the WCS: {exc}") from None
    for key in STALE_CARDS:
        out.remove(key, ignore_missing=True, remove_all=True)
    for key, (value, comment) in cards.items():
        out[key] = (value, comment)
    return out


def choice_note(norm: Normalization, flux: str, bunit: str | None, scale: int) -> str:
    """The HISTORY line of one output image: its normalisation and flux mode (and the BUNIT it came from)."""
    divided = f": output divided by {scale**2}" if flux == PER_PIXEL else ""
    return (
        f"hpc_sr normalize={norm.method} offset={norm.offset:.6g} scale={norm.scale:.6g}; flux {flux} "
        f"(BUNIT {bunit!r}){divided}"
    )


def output_dtype(data: np.ndarray) -> type:
    """The type an SR image is written in: float64 stays float64; every other input type gives float32."""
    return np.float64 if data.dtype.kind == "f" and data.dtype.itemsize == 8 else np.float32


def image_hdu(
    data: np.ndarray, header: Any, *, primary: bool, compression: dict[str, Any] | None, in_width: int
) -> tuple[Any, list[str]]:
    """An output image HDU (compressed like its input where it was: ``compression`` of :func:`compression_of`,
    ``in_width`` the input's row length) and HISTORY notes on the compression."""
    fits = _fits()
    if compression is None:
        return (fits.PrimaryHDU if primary else fits.ImageHDU)(data, header=header), []
    kw = dict(compression)
    notes = []
    tile = list(kw["tile_shape"])
    if tile and tile[-1] == in_width:
        tile[-1] = data.shape[-1]  # whole rows stay whole rows
    kw["tile_shape"] = tuple(min(t, n) for t, n in zip(tile, data.shape, strict=False))
    if kw["dither_seed"] <= 0:
        kw["dither_seed"] = -1  # from the data's checksum: the same input gives the same file
    if kw["compression_type"] == "PLIO_1":  # integer masks only; the SR image is float
        kw["compression_type"] = "RICE_1"
        notes.append("hpc_sr: PLIO_1 input compression written as RICE_1 (PLIO holds integers only)")
    return fits.CompImageHDU(data, header=header, **kw), notes
