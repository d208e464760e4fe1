"""Physics-aware metrics of super-resolved lensing images (docs/EVALUATION.md explains each one).

Everything takes batches (N, 1, H, W) on any device and computes in float64; per-image results are (N,).

* spectra: ``radial_power_spectrum`` (mean-subtracted 2-D FFT power, no window by default, azimuthal means
  in integer-radius bins of width 1/min(H, W) cycles/pixel up to Nyquist) and ``band_power_ratios`` (total
  power of SR over that of a reference in frequency bands, half-open [lo, hi); a band ending at 0.5 keeps
  k = 0.5; the corners k > 0.5 belong to no band);
* the arc region: ``arc_mask`` (the noise-free image, or a Gaussian-smoothed HR, above ``k`` times the
  background noise rms) and ``masked_psnr`` on it;
* ``lr_consistency_residual``: mean |avg_pool(SR, s) - LR|;
* the ring: ``ring_profile`` around the lens centre and ``ring_peak_radius`` (sub-bin, 3-point fit);
* ``PhysicsAccumulator``: float64 sums in one tensor for an exact all-reduce;
* simulated splits: ``clean_images`` (the noise-free HR re-rendered from the recorded parameters) and
  ``noise_ceiling_estimate`` (that image made consistent with LR: the noise-limited ceiling).

Pixel (i, j) has centre x = (j - (W-1)/2) * pixel_scale, y = (i - (H-1)/2) * pixel_scale (as the simulator);
centres here are (row, column) = (i, j) in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.data.lensing import PARAM_NAMES, PRESETS, LensPreset, gaussian_blur, noise_free_hr
from hpc_sr.errors import DataError
from hpc_sr.eval.metrics import SumAccumulator, psnr_from_mse

__all__ = [
    "ARC_K",
    "ARC_SMOOTH",
    "RING_WINDOW",
    "DEFAULT_BANDS",
    "BAND_NAMES",
    "PhysicsAccumulator",
    "SimTruth",
    "arc_mask",
    "band_power_ratios",
    "band_powers",
    "clean_images",
    "estimate_noise_rms",
    "lens_centre_pixels",
    "lr_consistency_residual",
    "lr_consistent_projection",
    "masked_psnr",
    "noise_ceiling_estimate",
    "noise_rms_from_params",
    "noise_variance",
    "per_image_physics",
    "radial_power_spectrum",
    "ring_peak_radius",
    "ring_profile",
    "ring_radius",
    "simulation_truth",
    "theta_e_pixels",
]

DEFAULT_BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.125), (0.125, 0.25), (0.25, 0.5))
BAND_NAMES = ("low", "mid", "high")
ARC_K = 3.0  # arc region: signal above ARC_K x the background noise rms
ARC_SMOOTH = 1.0  # sigma (pixels) of the Gaussian that smooths HR when no noise-free image is known
RING_WINDOW = 3.0  # pixels: an SR or HR ring is looked for this close to the reference ring
NYQUIST = 0.5
_TINY = 1e-30
_P = {name: i for i, name in enumerate(PARAM_NAMES)}


def _check_images(name: str, x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected (N, 1, H, W) images, got shape {tuple(x.shape)}")


def _per_image(value: float | Tensor, n: int, like: Tensor) -> Tensor:
    """A scalar or (N,) value as float64 (N, 1, 1, 1) on ``like``'s device."""
    t = torch.as_tensor(value, dtype=torch.float64, device=like.device).flatten()
    if t.numel() not in (1, n):
        raise ValueError(f"expected a scalar or {n} per-image values, got {t.numel()}")
    return t.expand(n).reshape(n, 1, 1, 1)


# ----------------------------------------------------------------------------------------------- spectra
def _power_2d(img: Tensor, window: str) -> Tensor:
    """|FFT(x - mean)|^2 normalised so that white noise of variance s^2 has power s^2: (N, H, W) float64."""
    _check_images("power spectrum", img)
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


def _check_bands(bands: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
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
    bands = _check_bands(bands)
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
    return band_powers(sr, bands, window) / band_powers(ref, bands, window).clamp_min(_TINY)


# ----------------------------------------------------------------------------------------------- arcs
def estimate_noise_rms(img: Tensor) -> Tensor:
    """Robust per-image rms (N,) of a zero-level background, clipped at 0 or not.

    With z pixels <= 0 (the negative half of the background noise, or its zeros after clipping), the pixel
    of rank z + z/2 is about the median of the positive half, 0.6745 rms (pixels of the arcs are brighter
    and barely move it). Where fewer than 10% of the pixels are <= 0 (a background that is not at 0),
    1.4826 x the median absolute deviation instead. Needs a frame mostly of background (150-pixel
    deeplense_sr images: 0.86-1.00 of the simulated rms; a crop filled by the arc over-estimates it).
    """
    _check_images("estimate_noise_rms", img)
    flat = img.detach().to(torch.float64).flatten(1)
    n = flat.shape[1]
    srt = flat.sort(dim=1).values
    z = (flat <= 0).sum(dim=1)
    rank = (z + z // 2).clamp_max(n - 1)
    from_zeros = srt.gather(1, rank[:, None])[:, 0] / 0.6745
    med = flat.median(dim=1, keepdim=True).values
    mad = 1.4826 * (flat - med).abs().median(dim=1).values
    return torch.where(z >= 0.1 * n, from_zeros, mad)


def arc_mask(img: Tensor, threshold: float | Tensor, smooth_sigma: float = 0.0) -> Tensor:
    """(N,1,H,W) bool: pixels of ``img`` (Gaussian-smoothed by ``smooth_sigma`` pixels first if > 0) above
    ``threshold`` (a scalar or one value per image, in the image's units).

    The rule of this package: threshold = ARC_K x the background noise rms, applied to the noise-free image
    when known, else to HR smoothed with sigma ARC_SMOOTH (see ``per_image_physics``).
    """
    _check_images("arc_mask", img)
    x = img.detach().to(torch.float64)
    if smooth_sigma > 0:
        x = gaussian_blur(x, torch.full((x.shape[0],), float(smooth_sigma), dtype=x.dtype, device=x.device))
    return x > _per_image(threshold, x.shape[0], x)


def masked_psnr(sr: Tensor, hr: Tensor, mask: Tensor) -> Tensor:
    """PSNR (N,) over the pixels of ``mask`` (data_range 1, SR clamped to [0, 1], capped at 100 dB);
    NaN for an image whose mask is empty."""
    if sr.shape != hr.shape or mask.shape != hr.shape:
        raise ValueError(
            f"masked_psnr: sr {tuple(sr.shape)}, hr {tuple(hr.shape)}, mask {tuple(mask.shape)} must be equal"
        )
    m = mask.to(torch.float64).flatten(1)
    err = (sr.detach().to(torch.float64).clamp(0, 1) - hr.detach().to(torch.float64)).square().flatten(1)
    count = m.sum(1)
    psnr = psnr_from_mse((err * m).sum(1) / count.clamp_min(1))
    return torch.where(count > 0, psnr, torch.full_like(psnr, math.nan))


# ----------------------------------------------------------------------------------------------- LR
def lr_consistency_residual(sr: Tensor, lr: Tensor, scale: int) -> Tensor:
    """Mean |avg_pool(SR, scale) - LR| per image (N,): 0 for an SR whose scale x scale means are LR."""
    _check_images("lr_consistency_residual (sr)", sr)
    if lr.shape[:2] != sr.shape[:2] or tuple(lr.shape[-2:]) != (sr.shape[-2] // scale, sr.shape[-1] // scale):
        raise ValueError(f"lr {tuple(lr.shape)} is not sr {tuple(sr.shape)} downscaled by {scale}")
    pooled = F.avg_pool2d(sr.detach().to(torch.float64), scale)
    return (pooled - lr.detach().to(torch.float64)).abs().flatten(1).mean(1)


def lr_consistent_projection(x: Tensor, lr: Tensor, scale: int) -> Tensor:
    """The orthogonal projection of ``x`` onto {y : avg_pool(y, scale) = lr} (float64): each block gets its
    mean residual added."""
    x64, lr64 = x.to(torch.float64), lr.to(torch.float64)
    return x64 + F.interpolate(lr64 - F.avg_pool2d(x64, scale), scale_factor=scale, mode="nearest")


# ----------------------------------------------------------------------------------------------- ring
def ring_profile(
    img: Tensor, centre: Tensor, n_bins: int, r_max: float | None = None
) -> tuple[Tensor, Tensor]:
    """(radii (B,), profile (N, B)): mean pixel value in annuli of width r_max / B around each centre.

    ``centre`` (N, 2) is (row, column) in pixels; r_max defaults to min(H, W) / 2; radii are the annuli's
    mid radii; an annulus with no pixel is NaN.
    """
    _check_images("ring_profile", img)
    n, _, h, w = img.shape
    if centre.shape != (n, 2):
        raise ValueError(f"ring_profile: centre must have shape ({n}, 2), got {tuple(centre.shape)}")
    if n_bins < 1:
        raise ValueError(f"ring_profile: n_bins={n_bins} must be >= 1")
    r_max = float(min(h, w) / 2 if r_max is None else r_max)
    if r_max <= 0:
        raise ValueError(f"ring_profile: r_max={r_max} must be > 0")
    dev = img.device
    c = centre.detach().to(dev, torch.float64)
    rows = torch.arange(h, dtype=torch.float64, device=dev)
    cols = torch.arange(w, dtype=torch.float64, device=dev)
    r = torch.sqrt(
        (rows[None, :, None] - c[:, 0, None, None]).square()
        + (cols[None, None, :] - c[:, 1, None, None]).square()
    )
    width = r_max / n_bins
    idx = torch.floor(r / width).to(torch.int64).clamp_max(n_bins).flatten(1)  # n_bins: beyond r_max
    vals = img.detach().to(torch.float64).flatten(1)
    sums = torch.zeros(n, n_bins + 1, dtype=torch.float64, device=dev).scatter_add_(1, idx, vals)
    counts = torch.zeros_like(sums).scatter_add_(1, idx, torch.ones_like(vals))
    prof = sums[:, :n_bins] / counts[:, :n_bins]
    radii = (torch.arange(n_bins, dtype=torch.float64, device=dev) + 0.5) * width
    return radii, prof


def ring_peak_radius(
    radii: Tensor,
    profile: Tensor,
    r_min: float = 0.0,
    near: Tensor | None = None,
    window: float = RING_WINDOW,
) -> Tensor:
    """Sub-bin radius (N,) of the ring, in the units of ``radii``.

    The peak bin is the brightest interior local maximum of the profile among the bins at radius >= r_min
    (and, with ``near`` (N,), within ``window`` of near[i]: the same ring as a reference's, not a rival arc
    of similar brightness); failing one, the brightest allowed bin (the global maximum if none is allowed).
    It is refined by a 3-point fit: Gaussian (a parabola through the logs) when the three values are > 0,
    else a parabola; the shift is clamped to half a bin and not applied at the first or last bin.
    """
    n, b = profile.shape
    p = torch.nan_to_num(profile.to(torch.float64), nan=-math.inf)
    r = radii.to(p.device, torch.float64)
    allowed = (r >= r_min).expand(n, b)
    if near is not None:
        allowed = allowed & ((r[None, :] - near.to(p.device, torch.float64).reshape(n, 1)).abs() <= window)
    neg = torch.full_like(p, -math.inf)
    pa = torch.where(allowed, p, neg)
    best = torch.where(torch.isfinite(pa).any(dim=1), pa.argmax(dim=1), p.argmax(dim=1))
    if b < 3:
        return r[best]
    mid = p[:, 1:-1]
    local = (mid >= p[:, :-2]) & (mid >= p[:, 2:]) & allowed[:, 1:-1] & torch.isfinite(mid)
    best = torch.where(local.any(dim=1), torch.where(local, mid, neg[:, 1:-1]).argmax(dim=1) + 1, best)
    inner = (best > 0) & (best < b - 1)
    i = best.clamp(1, b - 2)
    rows = torch.arange(n, device=p.device)
    y0, ym, yp = p[rows, i], p[rows, i - 1], p[rows, i + 1]
    logs = (y0 > 0) & (ym > 0) & (yp > 0)
    lm, l0, lp = (torch.where(logs, y.clamp_min(_TINY).log(), y) for y in (ym, y0, yp))
    den = lm - 2 * l0 + lp
    ok = inner & torch.isfinite(den) & (den < 0)
    shift = torch.where(
        ok, 0.5 * (lm - lp) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den)
    )
    width = float(r[1] - r[0])
    return r[best] + shift.clamp(-0.5, 0.5) * width


def _image_centre(n: int, h: int, w: int, device: torch.device) -> Tensor:
    return torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64, device=device).expand(n, 2)


def ring_radius(
    img: Tensor,
    centre: Tensor | None = None,
    n_bins: int | None = None,
    r_max: float | None = None,
    r_min: float = 0.0,
    near: Tensor | None = None,
    window: float = RING_WINDOW,
) -> Tensor:
    """``ring_peak_radius(*ring_profile(...), r_min, near, window)`` in pixels (N,); centre defaults to the
    image centre and n_bins to min(H, W) // 2 (1-pixel annuli up to r_max = min(H, W) / 2)."""
    _check_images("ring_radius", img)
    n, _, h, w = img.shape
    if centre is None:
        centre = _image_centre(n, h, w, img.device)
    radii, prof = ring_profile(img, centre, n_bins or max(min(h, w) // 2, 1), r_max)
    return ring_peak_radius(radii, prof, r_min, near, window)


# ----------------------------------------------------------------------------------------------- params
def _resolve_preset(preset: str | LensPreset) -> LensPreset:
    if isinstance(preset, LensPreset):
        return preset
    if preset not in PRESETS:
        raise DataError(f"unknown lensing preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def _check_params(params: Tensor, param_names: Sequence[str] | None = None) -> Tensor:
    if param_names is not None and list(param_names) != list(PARAM_NAMES):
        raise DataError(
            f"param_names {list(param_names)} are not this simulator's {list(PARAM_NAMES)}: the shards were "
            "made by another version; their noise-free images cannot be re-rendered"
        )
    if params.ndim != 2 or params.shape[1] != len(PARAM_NAMES):
        raise DataError(f"params has shape {tuple(params.shape)}; expected (N, {len(PARAM_NAMES)})")
    p = params.detach().to(torch.float64)
    peak = p[:, _P["hr_peak_flux"]]
    bad = ~(torch.isfinite(peak) & (peak > 0))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise DataError(f"params[{row}] has hr_peak_flux={float(peak[row])}; expected a finite value > 0")
    return p


def lens_centre_pixels(params: Tensor, preset: str | LensPreset, hr_size: int) -> Tensor:
    """(N, 2) float64 (row, column) of the lens centre: lens_y, lens_x (arcsec) / pixel_scale + (H-1)/2."""
    ps = _resolve_preset(preset).pixel_scale
    p = _check_params(params)
    half = (hr_size - 1) / 2
    return torch.stack((p[:, _P["lens_y"]] / ps + half, p[:, _P["lens_x"]] / ps + half), dim=1)


def theta_e_pixels(params: Tensor, preset: str | LensPreset) -> Tensor:
    """Einstein radius theta_E in HR pixels (N,) float64."""
    return _check_params(params)[:, _P["theta_E"]] / _resolve_preset(preset).pixel_scale


def noise_rms_from_params(params: Tensor) -> Tensor:
    """Background noise rms in HR units (N,) float64: background_rms / hr_peak_flux."""
    p = _check_params(params)
    return p[:, _P["background_rms"]] / p[:, _P["hr_peak_flux"]]


def clean_images(
    params: Tensor,
    preset: str | LensPreset,
    hr_size: int,
    param_names: Sequence[str] | None = None,
) -> Tensor:
    """The noise-free HR (N,1,H,W) float64 on params' device: render(params, noise=False) / hr_peak_flux,
    clipped to [0, 1] as HR is (``param_names``, e.g. a manifest's, is checked if given)."""
    return noise_free_hr(_check_params(params, param_names), preset, hr_size)


def noise_variance(params: Tensor, clean: Tensor) -> Tensor:
    """Per-pixel noise variance of HR (N,1,H,W) in HR units (flux / hr_peak_flux) from the simulator's noise
    model: clean / (hr_peak_flux * exposure_time) + (background_rms / hr_peak_flux)^2."""
    p = _check_params(params).to(clean.device)
    peak = p[:, _P["hr_peak_flux"]].reshape(-1, 1, 1, 1)
    t = p[:, _P["exposure_time"]].reshape(-1, 1, 1, 1)
    bkg = p[:, _P["background_rms"]].reshape(-1, 1, 1, 1) / peak
    return clean.to(torch.float64).clamp_min(0) / (peak * t) + bkg.square()


def noise_ceiling_estimate(
    lr: Tensor,
    params: Tensor,
    preset: str | LensPreset,
    scale: int,
    param_names: Sequence[str] | None = None,
    weighting: str = "equal",
) -> Tensor:
    """The noise-limited ceiling (N,1,H,W) float64: the noise-free HR made consistent with LR.

    ``weighting="equal"`` (tools/noise_ceiling.py, the reference): every pixel of a block gets the block's
    mean residual (the orthogonal projection). ``"variance"``: pixel p gets s^2 r v_p / sum_block(v), v the
    noise variance (``noise_variance``): the conditional mean of Gaussian noise given its block mean, a
    slightly higher ceiling. Valid when LR is the scale x scale mean of HR (the simulator's
    ``lr_mode="mean"``, what ``simulate_to_shards`` writes): the error is then only the HR noise that LR
    does not reveal.
    """
    _check_images("noise_ceiling_estimate (lr)", lr)
    if weighting not in ("equal", "variance"):
        raise ValueError(f"weighting={weighting!r} is not 'equal' or 'variance'")
    clean = clean_images(params.to(lr.device), preset, lr.shape[-1] * scale, param_names)
    if clean.shape[-2] != lr.shape[-2] * scale:
        raise DataError(f"lr {tuple(lr.shape)} is not square; the simulator renders square images")
    if weighting == "equal":
        return lr_consistent_projection(clean, lr, scale)
    v = noise_variance(params, clean)
    w = v / F.interpolate(F.avg_pool2d(v, scale), scale_factor=scale, mode="nearest")
    residual = lr.to(torch.float64) - F.avg_pool2d(clean, scale)
    return clean + w * F.interpolate(residual, scale_factor=scale, mode="nearest")


@dataclass(frozen=True)
class SimTruth:
    """What a simulated split knows beyond HR: noise-free image, lens centre (row, col) and theta_E in
    pixels, background noise rms in HR units."""

    clean: Tensor
    centre: Tensor
    theta_e: Tensor
    noise_rms: Tensor

    def as_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments of ``PhysicsAccumulator.update`` / ``per_image_physics``."""
        return {
            "clean": self.clean,
            "centre": self.centre,
            "theta_e": self.theta_e,
            "noise_rms": self.noise_rms,
        }


def simulation_truth(
    params: Tensor, preset: str | LensPreset, hr_size: int, param_names: Sequence[str] | None = None
) -> SimTruth:
    """``SimTruth`` of simulated images from their recorded params (N, len(PARAM_NAMES))."""
    return SimTruth(
        clean=clean_images(params, preset, hr_size, param_names),
        centre=lens_centre_pixels(params, preset, hr_size),
        theta_e=theta_e_pixels(params, preset),
        noise_rms=noise_rms_from_params(params),
    )


# ----------------------------------------------------------------------------------------------- per image
def _flux_err(x: Tensor, ref: Tensor) -> Tensor:
    s, r = x.flatten(1).sum(1), ref.flatten(1).sum(1)
    return (s - r).abs() / r.abs().clamp_min(1e-12)


def per_image_physics(
    sr: Tensor,
    hr: Tensor,
    lr: Tensor,
    scale: int,
    clean: Tensor | None = None,
    centre: Tensor | None = None,
    theta_e: Tensor | None = None,
    noise_rms: Tensor | None = None,
    bands: Sequence[Sequence[float]] = DEFAULT_BANDS,
    window: str = "none",
    arc_k: float = ARC_K,
    arc_smooth: float = ARC_SMOOTH,
    ring_r_min: float = 0.0,
    ring_window: float = RING_WINDOW,
) -> dict[str, Tensor]:
    """Every physics metric per image, float64 (N,) (band ratios (N, n_bands)); SR clamped to [0, 1].

    Keys: ``band_vs_hr``, ``lr_residual``, ``flux_err``, ``arc_psnr`` (NaN: empty mask), ``arc_fraction``,
    ``ring_sr``, ``ring_hr`` (pixels); with ``clean``: ``band_vs_clean``, ``flux_err_vs_clean``,
    ``ring_clean``; with ``theta_e`` (pixels): ``theta_e``. The arc mask is ``clean`` (else HR smoothed by
    ``arc_smooth`` pixels) above ``arc_k`` x ``noise_rms`` (else ``estimate_noise_rms(hr)``). Rings: the
    reference ring is the peak of ``clean``'s profile (else HR's); SR's and HR's are the peaks within
    ``ring_window`` pixels of it. The ring centre (row, col) defaults to the image centre.
    """
    for name, x in (("sr", sr), ("hr", hr)):
        _check_images(name, x)
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ")
    dev = sr.device
    n, _, h, w = hr.shape
    s = sr.detach().to(torch.float64).clamp(0.0, 1.0)
    t = hr.detach().to(dev, torch.float64)
    out: dict[str, Tensor] = {
        "band_vs_hr": band_power_ratios(s, t, bands, window),
        "lr_residual": lr_consistency_residual(s, lr.to(dev), scale),
        "flux_err": _flux_err(s, t),
    }
    c = None if clean is None else clean.detach().to(dev, torch.float64)
    if c is not None and c.shape != hr.shape:
        raise ValueError(f"clean {tuple(c.shape)} and hr {tuple(hr.shape)} differ")
    rms = estimate_noise_rms(t) if noise_rms is None else _per_image(noise_rms, n, t).flatten()
    mask = arc_mask(t, arc_k * rms, arc_smooth) if c is None else arc_mask(c, arc_k * rms)
    out["arc_psnr"] = masked_psnr(s, t, mask)
    out["arc_fraction"] = mask.to(torch.float64).flatten(1).mean(1)
    ctr = _image_centre(n, h, w, dev) if centre is None else centre.detach().to(dev, torch.float64)
    anchor = ring_radius(t if c is None else c, ctr, r_min=ring_r_min)  # the reference ring
    out["ring_sr"] = ring_radius(s, ctr, r_min=ring_r_min, near=anchor, window=ring_window)
    out["ring_hr"] = (
        anchor if c is None else ring_radius(t, ctr, r_min=ring_r_min, near=anchor, window=ring_window)
    )
    if c is not None:
        out["band_vs_clean"] = band_power_ratios(s, c, bands, window)
        out["flux_err_vs_clean"] = _flux_err(s, c)
        out["ring_clean"] = anchor
    if theta_e is not None:
        out["theta_e"] = _per_image(theta_e, n, t).flatten()
    return out


# ----------------------------------------------------------------------------------------------- sums
class PhysicsAccumulator(SumAccumulator):
    """Running float64 sums of the physics metrics (one tensor: ``state()``), exact over ranks::

        t = acc.state().to(device); dist.all_reduce(t); acc.load_state(t); acc.compute()

    Counts: ``n`` (all images), ``n_clean`` (with a noise-free image), ``n_theta`` (with theta_E),
    ``arc_n`` (non-empty arc mask). Band ratios are summed as natural logs (``compute()`` reports their
    geometric means); everything else as values. ``compute()`` gives means over the images that have each
    quantity.
    """

    def __init__(
        self,
        scale: int,
        bands: Sequence[Sequence[float]] = DEFAULT_BANDS,
        band_names: Sequence[str] | None = None,
        window: str = "none",
        arc_k: float = ARC_K,
        arc_smooth: float = ARC_SMOOTH,
        ring_r_min: float = 0.0,
        ring_window: float = RING_WINDOW,
    ) -> None:
        self.scale = int(scale)
        self.bands = _check_bands(bands)
        if band_names is None:
            band_names = BAND_NAMES if len(self.bands) == 3 else [f"b{i}" for i in range(len(self.bands))]
        if len(band_names) != len(self.bands):
            raise ValueError(f"band_names {list(band_names)} do not name the {len(self.bands)} bands")
        self.band_names = tuple(band_names)
        if window not in ("none", "hann"):
            raise ValueError(f"window={window!r} is not 'none' or 'hann'")
        self.window, self.arc_k, self.arc_smooth = window, arc_k, arc_smooth
        self.ring_r_min, self.ring_window = ring_r_min, ring_window
        self.fields: tuple[str, ...] = (
            "n", "n_clean", "n_theta", "arc_n",
            *(f"band_{b}_vs_hr" for b in self.band_names), *(f"band_{b}_vs_clean" for b in self.band_names),
            "arc_psnr", "arc_fraction", "lr_residual", "flux_err", "flux_err_vs_clean",
            "ring_err_vs_hr", "ring_bias_vs_hr", "ring_err_vs_clean", "ring_err_hr_vs_clean",
            "ring_err_vs_theta_e", "ring_err_hr_vs_theta_e",
        )  # fmt: skip
        self._i = {f: i for i, f in enumerate(self.fields)}
        self._sums = torch.zeros(len(self.fields), dtype=torch.float64)

    def update(
        self,
        sr: Tensor,
        hr: Tensor,
        lr: Tensor,
        clean: Tensor | None = None,
        centre: Tensor | None = None,
        theta_e: Tensor | None = None,
        noise_rms: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Add a batch (see ``per_image_physics`` for the arguments); returns its per-image values on CPU."""
        per = per_image_physics(
            sr, hr, lr, self.scale, clean=clean, centre=centre, theta_e=theta_e, noise_rms=noise_rms,
            bands=self.bands, window=self.window, arc_k=self.arc_k, arc_smooth=self.arc_smooth,
            ring_r_min=self.ring_r_min, ring_window=self.ring_window,
        )  # fmt: skip
        per = {k: v.cpu() for k, v in per.items()}
        b = torch.zeros_like(self._sums)
        n = per["lr_residual"].shape[0]
        b[self._i["n"]] = n
        b[self._band_slice("hr")] = per["band_vs_hr"].clamp_min(_TINY).log().sum(0)
        arc = per["arc_psnr"]
        finite = torch.isfinite(arc)
        b[self._i["arc_n"]] = finite.sum()
        b[self._i["arc_psnr"]] = arc[finite].sum()
        for key in ("arc_fraction", "lr_residual", "flux_err"):
            b[self._i[key]] = per[key].sum()
        d = per["ring_sr"] - per["ring_hr"]
        b[self._i["ring_err_vs_hr"]], b[self._i["ring_bias_vs_hr"]] = d.abs().sum(), d.sum()
        if "band_vs_clean" in per:
            b[self._i["n_clean"]] = n
            b[self._band_slice("clean")] = per["band_vs_clean"].clamp_min(_TINY).log().sum(0)
            b[self._i["flux_err_vs_clean"]] = per["flux_err_vs_clean"].sum()
            b[self._i["ring_err_vs_clean"]] = (per["ring_sr"] - per["ring_clean"]).abs().sum()
            b[self._i["ring_err_hr_vs_clean"]] = (per["ring_hr"] - per["ring_clean"]).abs().sum()
        if "theta_e" in per:
            b[self._i["n_theta"]] = n
            b[self._i["ring_err_vs_theta_e"]] = (per["ring_sr"] - per["theta_e"]).abs().sum()
            b[self._i["ring_err_hr_vs_theta_e"]] = (per["ring_hr"] - per["theta_e"]).abs().sum()
        self._sums += b
        return per

    def _band_slice(self, ref: str) -> slice:
        start = self._i[f"band_{self.band_names[0]}_vs_{ref}"]
        return slice(start, start + len(self.bands))

    def merge(self, other: SumAccumulator) -> SumAccumulator:
        """Add another accumulator's sums into this one (returns self); both must have the same fields."""
        if not isinstance(other, PhysicsAccumulator) or other.fields != self.fields:
            raise ValueError("PhysicsAccumulator.merge: the accumulators have different bands/fields")
        return super().merge(other)

    @property
    def n(self) -> int:
        return int(self._sums[0].item())

    def compute(self) -> dict[str, float]:
        """Means: ``band_ratio_<band>_vs_hr`` / ``_vs_clean`` (geometric mean of the per-image ratios),
        ``arc_psnr`` (dB, mean over images with a non-empty mask), ``arc_fraction``, ``lr_residual``,
        ``flux_err``, ``flux_err_vs_clean``, ``ring_err_vs_hr`` (mean |r_SR - r_HR|, pixels),
        ``ring_bias_vs_hr`` (mean r_SR - r_HR), ``ring_err_vs_clean``, ``ring_err_hr_vs_clean``,
        ``ring_err_vs_theta_e``, ``ring_err_hr_vs_theta_e``; and the counts ``n``, ``n_clean``, ``n_theta``,
        ``arc_n``. A mean over no images is NaN."""
        s = {f: float(self._sums[i].item()) for f, i in self._i.items()}
        counts = {k: int(s[k]) for k in ("n", "n_clean", "n_theta", "arc_n")}

        def mean(key: str, count: str) -> float:
            return s[key] / counts[count] if counts[count] else math.nan

        out: dict[str, float] = {k: v for k, v in counts.items()}
        for b in self.band_names:
            out[f"band_ratio_{b}_vs_hr"] = math.exp(mean(f"band_{b}_vs_hr", "n"))
            out[f"band_ratio_{b}_vs_clean"] = math.exp(mean(f"band_{b}_vs_clean", "n_clean"))
        out["arc_psnr"] = mean("arc_psnr", "arc_n")
        for key in ("arc_fraction", "lr_residual", "flux_err", "ring_err_vs_hr", "ring_bias_vs_hr"):
            out[key] = mean(key, "n")
        for key in ("flux_err_vs_clean", "ring_err_vs_clean", "ring_err_hr_vs_clean"):
            out[key] = mean(key, "n_clean")
        for key in ("ring_err_vs_theta_e", "ring_err_hr_vs_theta_e"):
            out[key] = mean(key, "n_theta")
        return out
