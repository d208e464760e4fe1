"""Power spectra of images: ``radial_power_spectrum`` and the band powers / ratios of the physics metrics.

``radial_power_spectrum``: mean-subtracted 2-D FFT power, no window by default, azimuthal means in
integer-radius bins of width 1/min(H, W) cycles/pixel up to Nyquist. ``band_power_ratios``: total power of SR
over that of a reference in frequency bands, half-open [lo, hi); a band ending at 0.5 keeps k = 0.5; the
corners k > 0.5 belong to no band. Batches (N, 1, H, W) on any device, computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hpc_sr.eval.images import TINY, check_images

__all__ = [
    "BAND_NAMES",
    "DEFAULT_BANDS",
    "NYQUIST",
    "band_power_ratios",
    "band_powers",
    "check_bands",
    "radial_power_spectrum",
]

DEFAULT_BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.125), (0.125, 0.25), (0.25, 0.5))
BAND_NAMES = ("low", "mid", "high")
NYQUIST = 0.5


def _power_2d(img: Tensor, window: str) -> Tensor:
    """|FFT(x - mean)|^2 normalised so that white noise of variance s^2 has power s^2: (N, H, W) float64."""
    check_images("power spectrum", img)
    x = img.detach().to(torch.float64)[:, 0]
    h, w = x.shape[-2:]
    if window == "none":
        x, norm = x - x.mean(dim=(-2, -1), keepdim=True), float(h * w)
    elif window == "hann":  # the window-weighted mean is subtracted: P(0) = 0 as without a window
        win = torch.outer(
            torch.hann_window(h, periodic=False, dtype=torch.float64, device=x.device),
            torch.hann_window(w, periodic=False, dtype=torch.float64, device=x.device),
        )
        mean = (x * win).sum(dim=(-2, -1), keepdim=True) / win.sum()
        x, norm = (x - mean) * win, float(win.pow(2).sum())
    else:
        raise ValueError(f"window={window!r} is not 'none' or 'hann'")
    f = torch.fft.fft2(x)
    return (f.real.square() + f.imag.square()) / norm


def _freq_radius(h: int, w: int, device: torch.device) -> Tensor:
    """|k| in cycles/pixel of every 2-D FFT coefficient (H, W)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=device)
    return torch.sqrt(fy[:, None].square() + fx[None, :].square())


def radial_power_spectrum(img: Tensor, window: str = "none") -> tuple[Tensor, Tensor]:
    """(k_centres (B,), P(k) (N, B)): azimuthal means of the 2-D power in bins of width 1/L, L = min(H, W).

    Bin b holds the coefficients with round(|k| L) = b, b = 0 .. L // 2 (k_centres = b / L cycles/pixel, up
    to Nyquist 0.5); P(0) = 0 (the mean is subtracted). ``window``: ``"none"`` (Parseval: P summed over all
    coefficients is H W times the variance) or ``"hann"`` (separable Hann, the window-weighted mean
    subtracted, power renormalised by sum(w^2)).
    """
    p2 = _power_2d(img, window)
    h, w = p2.shape[-2:]
    size = min(h, w)
    n_bins = size // 2 + 1
    idx = torch.round(_freq_radius(h, w, p2.device) * size).to(torch.int64).flatten()
    keep = idx < n_bins
    idx, flat = idx[keep], p2.flatten(1)[:, keep]
    sums = torch.zeros(p2.shape[0], n_bins, dtype=torch.float64, device=p2.device).index_add_(1, idx, flat)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    k = torch.arange(n_bins, dtype=torch.float64, device=p2.device) / size
    return k, sums / counts.clamp_min(1)


def check_bands(bands: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """``bands`` as (lo, hi) float pairs, a ValueError unless 0 <= lo < hi <= 0.5 for each (at least one)."""
    out = tuple((float(lo), float(hi)) for lo, hi in bands)
    for lo, hi in out:
        if not 0.0 <= lo < hi <= NYQUIST:
            raise ValueError(f"band ({lo}, {hi}) must satisfy 0 <= lo < hi <= {NYQUIST} (cycles/pixel)")
    if not out:
        raise ValueError("bands must hold at least one (lo, hi) pair")
    return out


def band_powers(
    img: Tensor, bands: Sequence[Sequence[float]] = DEFAULT_BANDS, window: str = "none"
) -> Tensor:
    """Total 2-D power (N, n_bands) of the coefficients with lo <= |k| < hi (hi = 0.5 keeps |k| = 0.5)."""
    bands = check_bands(bands)
    p2 = _power_2d(img, window).flatten(1)
    k = _freq_radius(*img.shape[-2:], p2.device).flatten()
    masks = [(k >= lo) & ((k <= hi) if hi >= NYQUIST else (k < hi)) for lo, hi in bands]
    return p2 @ torch.stack(masks, dim=1).to(torch.float64)


def band_power_ratios(
    sr: Tensor, ref: Tensor, bands: Sequence[Sequence[float]] = DEFAULT_BANDS, window: str = "none"
) -> Tensor:
    """Per image and band (N, n_bands): total power of ``sr`` over that of ``ref`` (1 = same power).

    Default bands (cycles/pixel): low [0, 1/8), mid [1/8, 1/4), high [1/4, 1/2]; 1/4 is the LR Nyquist
    frequency for x2. A reference band of zero power is floored at 1e-30.
    """
    if sr.shape != ref.shape:
        raise ValueError(f"band_power_ratios: sr {tuple(sr.shape)} and ref {tuple(ref.shape)} differ")
    return band_powers(sr, bands, window) / band_powers(ref, bands, window).clamp_min(TINY)
