"""One image into model units and its SR back into the input's units.

    prep = prepare(image, label, flux, "auto", trained)   # normalised (H, W) float32, blanks filled
    sr = restore(model_out, prep, scale)                   # input units, flux rule applied, blanks back

The normalisation is chosen per image (:func:`hpc_sr.apps.fits_io.choose_normalization`: the model's training
convention when its ``data_values`` record says, else a guess from the image). Blank pixels (NaN/inf) are
filled with the image's median for the model and come back blank, each as a scale x scale block; an image
with no finite pixel at all comes back all blank without running the model. Values are never clipped;
per-pixel flux is divided by scale**2 (the total kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpc_sr.apps import fits_io
from hpc_sr.apps.fits_io import Normalization


@dataclass
class Prepared:
    """An image ready for the model: ``x`` (None for an all-blank image) and what restores its output."""

    x: np.ndarray | None
    norm: Normalization | None
    blank: np.ndarray | None  # where the input was blank (None: nowhere)
    flux: str
    label: str

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.blank.shape[0]), int(self.blank.shape[1])) if self.x is None else self.x.shape


def prepare(
    image: np.ndarray, label: str, flux: str, normalize: str, trained: dict[str, Any] | None
) -> Prepared:
    """Normalise one raw (H, W) image (see the module docstring). An image without blank pixels (the
    common case) takes no masked copies, and ``none`` no arithmetic: the same values, fewer passes."""
    if image.size and np.isfinite(image.min()) and np.isfinite(image.max()):  # min/max propagate NaN
        norm = fits_io.choose_normalization(image, normalize, label, trained)
        x = image if norm.method == "none" else norm.apply(image)
        x = np.ascontiguousarray(x, dtype=np.float32)
        fits_io.warn_out_of_range(x, label, norm)
        return Prepared(x, norm, None, flux, label)
    blank = ~np.isfinite(image)
    if blank.all():
        fits_io.warn(f"{label}: every pixel is blank (NaN/inf); the output is blank")
        return Prepared(None, None, blank, flux, label)
    good = image[~blank]
    norm = fits_io.choose_normalization(good, normalize, label, trained)
    fits_io.warn(
        f"{label}: {int(blank.sum())} blank (NaN/inf) pixel(s) filled with the median for the "
        f"model; they stay blank in the output"
    )
    image = np.where(blank, np.float32(np.median(good)), image)
    x = np.ascontiguousarray(norm.apply(image), dtype=np.float32)
    fits_io.warn_out_of_range(x[~blank], label, norm)
    return Prepared(x, norm, blank, flux, label)


def _flux_divisor(prep: Prepared, scale: int) -> int:
    return scale**2 if prep.flux == "per-pixel" else 1


def _blank_back(out: np.ndarray, prep: Prepared, scale: int) -> np.ndarray:
    if prep.blank is not None:
        out[np.repeat(np.repeat(prep.blank, scale, axis=0), scale, axis=1)] = np.nan
    return out


def restore(sr: np.ndarray | None, prep: Prepared, scale: int) -> np.ndarray:
    """The model's (sH, sW) output in the input's units (an all-blank image: all NaN)."""
    if prep.x is None or prep.norm is None:
        h, w = prep.shape
        return np.full((scale * h, scale * w), np.nan, np.float32)
    assert sr is not None
    out = prep.norm.restore(sr)
    if prep.flux == "per-pixel":
        out = out / _flux_divisor(prep, scale)
    return _blank_back(out, prep, scale)


def restore_sigma(sigma: np.ndarray | None, prep: Prepared, scale: int) -> np.ndarray:
    """A per-pixel standard deviation from model units into the input's (scaled, not shifted)."""
    if prep.x is None or prep.norm is None:
        h, w = prep.shape
        return np.full((scale * h, scale * w), np.nan, np.float32)
    assert sigma is not None
    out = sigma * prep.norm.scale / _flux_divisor(prep, scale)
    return _blank_back(out, prep, scale)


def note(prep: Prepared, scale: int) -> dict[str, Any]:
    """What was done to one image (Results.notes): normalize, offset, scale, flux, divisor, blank pixels."""
    norm = prep.norm or Normalization("none")
    return {
        "normalize": norm.method,
        "offset": float(norm.offset),
        "scale": float(norm.scale),
        "flux": prep.flux,
        "flux_divisor": _flux_divisor(prep, scale),
        "blank": int(prep.blank.sum()) if prep.blank is not None else 0,
    }


def normalization_note(normalize: str, model_values: dict[str, Any] | None) -> str:
    """What ``normalize`` means for this model, in one line (printed, and kept in FITS HISTORY)."""
    if normalize != "auto":
        return f"{normalize} for every image"
    if model_values is None:
        return "the model records no training value range; chosen per image (HPCSRNRM card of each output)"
    lr = model_values.get("lr") or {}
    span = f", training LR in [{lr['min']:.4g}, {lr['max']:.4g}]" if "min" in lr and "max" in lr else ""
    return f"{model_values.get('normalize', 'none')} (the model's training convention: raw values{span})"
