"""Batched, seedable strong-lensing image simulator in torch (HR/LR pairs for x2 super-resolution).

Physics follows lenstronomy's conventions so that noise-free images agree with lenstronomy's ``ImageModel``
(see tools/make_lenstronomy_refs.py and tests/data/test_lensing.py):

- lens: SIE (lenstronomy ``SIE``/``NIE`` with s_scale 1e-10) plus external shear (``SHEAR``, centred on the
  origin); ellipticity phi = atan2(e2, e1)/2, q = (1-|e|)/(1+|e|); theta_E is the product-average radius and
  the deflection uses b = theta_E*sqrt(q); |e| is clamped below (q = 1 is singular) at 1e-6 in float32 and
  5e-9 in float64 (1e-6 keeps float32 within 4e-6 of float64 for any |e|; 1e-4 would cost 1e-4 of the peak).
- source and optional lens light: elliptical Sersic (``SERSIC_ELLIPSE``: amplitude at R_sersic,
  product-average radius, b_n = 1.9992 n - 0.3271); the lens light shares the lens centre.
- images are flux per pixel (surface brightness x pixel area), rendered on a grid supersampled ``supersample``
  times and averaged down, then blurred by a Gaussian PSF as lenstronomy's ``GAUSSIAN`` PSF does
  (scipy ``gaussian_filter(mode="nearest", truncate=5)`` at pixel scale: a separable conv, replicate padding).
- noise: Poisson noise at the exposure time in lenstronomy's Gaussian approximation (sigma^2 = |flux|/t; or
  exact Poisson counts when the preset says ``poisson="exact"``) plus Gaussian background (background_rms).

Pixel (i, j) of an image has centre x = (j - (W-1)/2) * pixel_scale, y = (i - (H-1)/2) * pixel_scale.

The HR image is the noisy image divided by its own maximum and clipped to [0, 1]; its maximum (in flux) is
recorded as the last parameter, ``hr_peak_flux``. LR, by default (``lr_mode="mean"``), is the ``scale`` x
``scale`` mean of HR (``F.avg_pool2d``), the relation seen in the real DeepLense SR set. With
``lr_mode="independent"`` LR is instead observed on its own: the clean unblurred image is summed over
``scale`` x ``scale`` blocks (flux per coarse pixel), blurred by the same PSF at the coarse pixel scale, given
its own Poisson and background noise, then divided by ``scale**2 * hr_peak_flux`` (the HR scaling, never a
separate one) and clipped to [0, 1].

LR instruments (``lr_mode="instrument"``, the default of a preset with an ``lr_instrument``: ``ground_space``,
``randomized``): LR is observed by a camera of its own, as a ground-based survey sees what a space telescope
images as HR. The clean unblurred HR image (the sky, flux per HR pixel) is blurred by the instrument's PSF
sampled on the HR grid (a Gaussian or a Moffat of per-pair FWHM and index, ``imaging.psf_kernels_2d``) whose
centre carries the pair's misalignment (``lr_shift_x``/``lr_shift_y`` LR pixels: LR's content moves by
+shift), with FFTs (``imaging.fft_blur``, replicate padding); summed over ``scale`` x ``scale`` blocks (flux
per LR pixel), given Poisson noise at the LR exposure and the LR background, then divided by
``scale**2 * hr_peak_flux`` (HR's scaling) and clipped to [0, 1]. The instrument's draws come after every
lens and HR draw, so a preset's lenses do not depend on whether it has one, and its per-pair parameters
(``INSTRUMENT_NAMES``) follow ``hr_peak_flux`` in the recorded params (``param_names_of``). Pairs that an
instrument with ``mean_fraction`` leaves as block means (recorded ``lr_psf_fwhm`` 0) get LR = the mean of HR.
``render_lr`` gives the noise-free (or noisy) LR flux of given params; windows render the same LR from the
window's clean region plus the LR PSF's reach (equal to the whole image's crop to rounding).

Windows (``LensingSimulator.sample_windows(n, window)``, for training on patches): each sample draws its own
parameters and its own window position, an HR offset that is a multiple of ``scale`` (so the LR window is
the aligned LR crop), and only that window is rendered: the window plus the PSF kernel's half-width,
supersampled at the same sub-pixel coordinates as the full render, pixels beyond the image border taking the
border pixel's value (the full render's replicate padding). Noise-free, a window equals the crop of the full
render to rounding (measured: 0 in float32 on CPU, ~1e-14 of the peak in float64); noise is the same model,
drawn on the window's flux before normalisation. LR is the mean of HR (``lr_mode="mean"``) or, in
``lr_mode="independent"``, binned, blurred and noised as above from the same rendered pixels.

The full render normalises by the whole image's noisy maximum, which a window does not see. Windows are
normalised by the maximum of the same noisy image over the window and a few peak patches: 12 x 12 pixels,
rendered exactly as the window (supersampled, PSF, the same noise model; each pixel counted once with one
noise draw, the window's where they overlap), centred on the 3 brightest local maxima of a coarse image (the
unblurred model at every 3rd pixel centre, smoothed by a Gaussian of 3 pixels, which ranks extended images
by their blurred brightness) and, with lens light, on its centre (a cuspy lens light peaks there). That is
the full render's normalisation whenever the full image's noisy maximum lies in those pixels, and slightly
below it otherwise (``peak_mask`` gives the pixels). Measured with ``tools/bench_simulate.py`` (150 px images,
48 px windows, 1024 images, the full image's noisy maximum against the maximum of the same noisy image over
those pixels): equal in 97.2 % / 97.8 % / 98.3 % of images (deeplense_sr / wide / model_i), mean deficit
0.06 % / 0.08 % / 0.05 %, 99th percentile 2.1 % / 2.4 % / 2.0 %, worst 6.9 % / 14 % / 11 %; for scale, the
noisy maximum lies 5.0 % / 2.7 % / 8.9 % above the clean peak on average, and the windows' normalising peak
5.0 % / 2.6 % / 8.6 % (drawn independently). Cheaper alternatives measured worse: a whole image rendered
unsupersampled misses the supersampled peak by 1.6-3.6 % on average (up to 14-56 %: cusps), and one patch
at the coarse maximum misses the clean peak in 13-17 % of images (lensing conserves surface brightness, so
the point-sampled maxima of the lensed images are alike; the blurred peak is on the most magnified one).

Cost per 150 px image at window 48: the window with margin 56^2 x 4 sub-pixels, the coarse image 50^2 and
the patches 3 x 20^2 x 4, i.e. 22 % of the full render's 150^2 x 4. With one thread (2 loaded cores), batch
16 (64), window pairs come 3.2-3.8x (3.9-4.3x) faster than whole images cropped; the peak costs ~40 % of
that time (the window alone: 6.4x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.data.presets import (
    INSTRUMENT_NAMES,
    PRESETS,
    SAMPLED_NAMES,
    Instrument,
    LensPreset,
    resolve_preset,
)
from hpc_sr.errors import DataError
from hpc_sr.imaging import (
    FWHM_PER_SIGMA,
    blur_valid,
    blur_with_kernels,
    fft_blur,
    fft_blur_valid,
    gaussian_kernels,
    psf_kernels_2d,
)

__all__ = [
    "PARAM_NAMES",
    "LensingSimulator",
    "lr_kernels",
    "mean_lr_pairs",
    "lr_blur_pairs",
    "param_names_of",
    "SimBatch",
    "WindowBatch",
    "hr_kernels",
    "is_simulator_layout",
    "simulate",
]

# Recorded parameters, in column order: the sampled ones (hpc_sr.data.presets), then the derived hr_peak_flux.
PARAM_NAMES: tuple[str, ...] = (*SAMPLED_NAMES, "hr_peak_flux")
_IDX = {name: i for i, name in enumerate((*PARAM_NAMES, *INSTRUMENT_NAMES))}


def param_names_of(preset: str | LensPreset) -> tuple[str, ...]:
    """The recorded parameter columns of a preset's pairs: PARAM_NAMES, then INSTRUMENT_NAMES when its LR
    comes from an instrument of its own."""
    return PARAM_NAMES if resolve_preset(preset).lr_instrument is None else (*PARAM_NAMES, *INSTRUMENT_NAMES)


def is_simulator_layout(param_names: object) -> bool:
    """Whether recorded param_names are this simulator's columns (with or without an LR instrument's)."""
    names = list(param_names) if isinstance(param_names, list | tuple) else None
    return names in (list(PARAM_NAMES), [*PARAM_NAMES, *INSTRUMENT_NAMES])


def mean_lr_pairs(params: Tensor) -> Tensor:
    """(N,) bool: whether each pair's LR is the block mean of its HR: every pair of params without the
    INSTRUMENT_NAMES columns; with them, the pairs an instrument left as means (lr_psf_fwhm 0)."""
    if params.shape[1] < len(PARAM_NAMES) + len(INSTRUMENT_NAMES):
        return torch.ones(params.shape[0], dtype=torch.bool, device=params.device)
    return params[:, _IDX["lr_psf_fwhm"]] <= 0


MIN_INSTRUMENT_BLUR = 0.01  # LR pixels: the LR blur of an instrument pair whose PSF is no wider than HR's


def lr_blur_pairs(params: Tensor, pixel_scale: float, scale: int) -> Tensor:
    """(N,) float32: how much blurrier each pair's LR is than its HR, the FWHM of the Gaussian that takes HR's
    PSF to LR's, ``sqrt(max(lr_psf_fwhm^2 - psf_fwhm^2, 0))``, in LR pixels (``scale * pixel_scale``
    arcsec); 0 where LR is the block mean of HR (:func:`mean_lr_pairs`), and at least ``MIN_INSTRUMENT_BLUR``
    where an instrument of its own made LR (however sharp its PSF, that LR is no block mean: misaligned,
    noisier). A generator's LR-blur input."""
    mean = mean_lr_pairs(params)
    if bool(mean.all()):
        return torch.zeros(params.shape[0], dtype=torch.float32, device=params.device)
    lr_fwhm = params[:, _IDX["lr_psf_fwhm"]].double()
    hr_fwhm = params[:, _IDX["psf_fwhm"]].double()
    blur = (lr_fwhm.square() - hr_fwhm.square()).clamp_min(0).sqrt() / (pixel_scale * scale)
    return blur.clamp_min(MIN_INSTRUMENT_BLUR).masked_fill(mean, 0.0).float()


def hr_kernels(params: Tensor, pixel_scale: float) -> Tensor:
    """(N, K, K) HR PSFs on the HR grid from recorded params: Gaussians of FWHM psf_fwhm / pixel_scale."""
    fwhm = params[:, _IDX["psf_fwhm"]] / pixel_scale
    return psf_kernels_2d(fwhm, torch.zeros_like(fwhm))


def lr_kernels(params: Tensor, pixel_scale: float, scale: int, radius: int | None = None) -> Tensor:
    """(N, K, K) LR-instrument PSFs on the HR grid from recorded params (columns as ``param_names_of``):
    FWHM lr_psf_fwhm / pixel_scale HR pixels, Moffat index lr_psf_beta (0: Gaussian), centred at the LR
    misalignment (lr_shift_y, lr_shift_x) * scale HR pixels. A pair whose LR is the mean of HR (FWHM 0)
    gets a delta."""
    if params.ndim != 2 or params.shape[1] < len(PARAM_NAMES) + len(INSTRUMENT_NAMES):
        raise DataError(
            f"params has shape {tuple(params.shape)}; an LR instrument needs the columns "
            f"{list(INSTRUMENT_NAMES)} after {PARAM_NAMES[-1]!r}"
        )
    fwhm = params[:, _IDX["lr_psf_fwhm"]] / pixel_scale
    shift = torch.stack((params[:, _IDX["lr_shift_y"]], params[:, _IDX["lr_shift_x"]]), dim=1) * scale
    shift = shift.masked_fill(mean_lr_pairs(params)[:, None], 0.0)
    return psf_kernels_2d(fwhm.clamp_min(1e-3), params[:, _IDX["lr_psf_beta"]], shift, radius)


_FWHM_TO_SIGMA = 1.0 / FWHM_PER_SIGMA
_CHUNK_ELEMENTS = 1 << 17  # supersampled pixels rendered at once: keeps the working set in cache
# Peak locator of the window path (LensingSimulator._peak_corners); figures in the module docstring.
_PEAK_STRIDE = 3  # HR pixels between the points of the coarse (unblurred, point-sampled) image
_PEAK_SMOOTH = 3.0  # sigma (HR pixels) of the Gaussian that smooths the coarse image before its maxima
_PEAK_CANDIDATES = 3  # brightest local maxima of the smoothed coarse image, each given a patch
_PEAK_PATCH = 12  # side (HR pixels) of the patch rendered around each candidate (and the lens-light centre)


@dataclass(frozen=True)
class SimBatch:
    """A batch of pairs: hr (N,1,H,W) and lr (N,1,H/scale,W/scale) in [0, 1], params (N, len(PARAM_NAMES))."""

    hr: Tensor
    lr: Tensor
    params: Tensor


@dataclass(frozen=True)
class WindowBatch:
    """Windows of simulated pairs (see LensingSimulator.sample_windows).

    hr (N,1,w,w) and lr (N,1,w/scale,w/scale) in [0, 1]; params (N, len(PARAM_NAMES)), whose last column
    (hr_peak_flux) holds the flux each window was divided by; offsets (N,2) int64, the HR (row, col) of each
    window's top-left pixel in its image (multiples of scale: LR offsets are offsets // scale).
    """

    hr: Tensor
    lr: Tensor
    params: Tensor
    offsets: Tensor
    clean: Tensor | None = None  # (N,1,w,w): the noise-free HR window, same peak and clamp (keep_clean=True)


def _bc(t: Tensor) -> Tensor:
    """(C,) -> (C,1,1,1,1): broadcasts over supersampled images laid out as (C, s, s, H, W)."""
    return t.reshape(-1, 1, 1, 1, 1)


def _ellipse(e1: Tensor, e2: Tensor, e_min: float) -> tuple[Tensor, Tensor, Tensor]:
    """cos(phi), sin(phi), q of lenstronomy's ellipticity (|e| clamped to [e_min, 0.9999])."""
    phi = torch.atan2(e2, e1) / 2
    e = torch.sqrt(e1 * e1 + e2 * e2).clamp(e_min, 0.9999)
    return torch.cos(phi), torch.sin(phi), (1 - e) / (1 + e)


def _sersic_coeffs(
    amp: Tensor, r_s: Tensor, n: Tensor, e1: Tensor, e2: Tensor, area: float
) -> dict[str, Tensor]:
    """Per-image constants of lenstronomy's SERSIC_ELLIPSE (product-average radius, R >= 1e-4) times ``area``.

    With (u, v) = M d for M = [[1-e1, -e2], [-e2, 1+e1]] / (sqrt(|1-e^2|) R_s), (R/R_s)^2 = u^2 + v^2 and
    flux = exp(log(amp*area) + b_n - b_n * exp(log((R/R_s)^2) / (2n))).
    """
    r_s = r_s.clamp_min(1e-4)
    scale = 1 / ((1 - e1 * e1 - e2 * e2).abs().clamp_min(1e-6).sqrt() * r_s)
    bn = (1.9992 * n - 0.3271).clamp_min(1e-5)
    return {
        "m11": (1 - e1) * scale, "m12": -e2 * scale, "m22": (1 + e1) * scale,
        "r2_min": (1e-4 / r_s) ** 2, "inv_2n": 0.5 / n, "neg_bn": -bn,
        "c0": torch.log(amp * area) + bn,
    }  # fmt: skip


def _sersic(u: Tensor, v: Tensor, c: dict[str, Tensor]) -> Tensor:
    """Sersic flux at (u, v) = offsets (x, y) from its centre, already multiplied by M (see _sersic_coeffs).

    Works in place: u becomes the result.
    """
    w = u.mul_(u).addcmul_(v, v)  # (R / R_s)^2
    w = torch.maximum(w, c["r2_min"], out=w).log_().mul_(c["inv_2n"]).exp_()
    return w.mul_(c["neg_bn"]).add_(c["c0"]).exp_()


def _blur_mm(x: Tensor, k: Tensor) -> Tensor:
    """_blur_valid as two matrix products by banded matrices (fewer, faster kernels; equal to rounding).

    x (C,R,H+2r,W+2r): R regions of each image, all blurred by that image's kernel k[c] (C, 2r+1). Where
    float32 matmuls may run as TF32 (CUDA, float32 matmul precision below "highest"), _blur_valid instead.
    """
    if x.is_cuda and x.dtype == torch.float32 and _tf32_matmuls():
        return blur_valid(x, k)  # TF32 would cost ~1e-3 of the flux
    c, taps = k.shape
    h, w = x.shape[-2] - taps + 1, x.shape[-1] - taps + 1
    rows = _band(k, h, x.shape[-2]).unsqueeze(1)  # (C,1,h,H+2r)
    cols = rows if w == h else _band(k, w, x.shape[-1]).unsqueeze(1)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(-1, -2))


def _tf32_matmuls() -> bool:
    return torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"


def _band(k: Tensor, n_out: int, n_in: int) -> Tensor:
    """(C, n_out, n_in) matrices, row i holding kernel k[c] at columns i..i+2r (a valid 1-D convolution)."""
    c, taps = k.shape
    idx = (torch.arange(n_out, device=k.device)[:, None] + torch.arange(taps, device=k.device)).expand(
        c, -1, -1
    )
    band = torch.zeros(c, n_out, n_in, dtype=k.dtype, device=k.device)
    return band.scatter_(2, idx, k[:, None, :].expand(c, n_out, taps))


def _max3x3(img: Tensor) -> Tensor:
    """3x3 running maximum of (C,1,H,W) images, edges replicated (F.max_pool2d is slow on CPU)."""
    x = F.pad(img, (1, 1, 1, 1), mode="replicate")
    rows = torch.maximum(torch.maximum(x[..., :-2, :], x[..., 1:-1, :]), x[..., 2:, :])
    return torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


class LensingSimulator:
    """Renders lensed images from a preset's priors; see the module docstring for the physics and LR modes."""

    def __init__(
        self,
        preset: str | LensPreset = "deeplense_sr",
        hr_size: int = 150,
        scale: int = 2,
        supersample: int = 2,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        lr_mode: str | None = None,
    ) -> None:
        self.preset = resolve_preset(preset)
        if scale < 1 or hr_size < scale or hr_size % scale:
            raise DataError(f"hr_size={hr_size} must be a positive multiple of scale={scale}")
        if supersample < 1:
            raise DataError(f"supersample={supersample} must be >= 1")
        if lr_mode is None:
            lr_mode = "mean" if self.preset.lr_instrument is None else "instrument"
        if lr_mode not in ("mean", "independent", "instrument"):
            raise DataError(f"lr_mode={lr_mode!r} is not one of 'mean', 'independent', 'instrument'")
        if lr_mode == "instrument" and self.preset.lr_instrument is None:
            raise DataError(
                f"lr_mode='instrument' needs a preset with an LR instrument (lr_instrument); preset "
                f"{self.preset.name!r} has none (presets with one: "
                f"{', '.join(n for n, p in PRESETS.items() if p.lr_instrument is not None)})"
            )
        if dtype not in (torch.float32, torch.float64):
            raise DataError(f"dtype={dtype} is not torch.float32 or torch.float64")
        self.hr_size, self.scale, self.supersample = hr_size, scale, supersample
        self.device, self.dtype, self.lr_mode = torch.device(device), dtype, lr_mode
        self._e_min = 1e-6 if dtype == torch.float32 else 5e-9
        # Supersampled pixel centres as lenstronomy's make_subgrid (offsets ((k + 0.5)/s - 0.5) pixel), laid
        # out (sub-row, sub-col, row, col) so that averaging the sub-pixels is a sum of contiguous blocks.
        s, dp = supersample, self.preset.pixel_scale
        sub = (torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5
        pix = torch.arange(hr_size, dtype=torch.float64) - (hr_size - 1) / 2
        coords = (sub[:, None] + pix[None, :]) * dp  # (s, H)
        self._sub = coords.to(self.device, dtype)  # (s, H): windows gather their rows and columns here
        self._x = self._sub.reshape(1, 1, s, 1, hr_size)
        self._y = self._sub.reshape(1, s, 1, hr_size, 1)
        self._chunk = max(1, _CHUNK_ELEMENTS // (hr_size * hr_size * s * s))
        # Peak locator of the window path (see _peak_corners): the coarse grid (every _PEAK_STRIDE-th pixel
        # centre) and the kernel that smooths the coarse image.
        stride = min(_PEAK_STRIDE, hr_size)
        self._coarse_idx = torch.arange(stride // 2, hr_size, stride, device=self.device)
        self._coarse_xy = (pix * dp).to(self.device, dtype)[self._coarse_idx]
        g = self._coarse_idx.numel()
        t = torch.arange(-3, 4)  # +-3 coarse points: a rough Gaussian smoothing, replicated at the border
        w = torch.exp(-0.5 * (t * stride / _PEAK_SMOOTH).double() ** 2)
        cols = (torch.arange(g)[:, None] + t).clamp_(0, g - 1)
        smooth = torch.zeros(g, g, dtype=torch.float64).scatter_add_(1, cols, (w / w.sum()).expand(g, -1))
        self._coarse_smooth = smooth.to(self.device, dtype)  # coarse image -> S @ image @ S^T
        self._peak_patch = min(_PEAK_PATCH, hr_size)

    # --------------------------------------------------------------------------- sampling
    @property
    def param_names(self) -> tuple[str, ...]:
        """The columns of this simulator's params: ``param_names_of(preset)``."""
        return param_names_of(self.preset)

    @property
    def instrument(self) -> Instrument | None:
        """The LR instrument this simulator observes LR with (lr_mode "instrument"), else None."""
        return self.preset.lr_instrument if self.lr_mode == "instrument" else None

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, len(param_names)) parameters drawn from the preset (hr_peak_flux column NaN until rendered).

        The lens and HR draws come first, as for a preset without an LR instrument; the instrument's after."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, len(SAMPLED_NAMES), generator=generator, dtype=torch.float64, device=gdev).cpu()
        cols = [p.transform(u[:, i]) for i, p in enumerate(self.preset.priors())]
        cols.append(torch.full((n,), math.nan, dtype=torch.float64))
        params = torch.stack(cols, dim=1)
        inst = self.preset.lr_instrument
        if inst is not None:
            u = torch.rand(n, inst.DRAWS, generator=generator, dtype=torch.float64, device=gdev).cpu()
            params = torch.cat((params, inst.draw(u)), dim=1)
        return params.to(self.device, self.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> SimBatch:
        """Draw n parameter sets and render their (hr, lr) pairs; params[:, -1] holds each HR's peak flux."""
        if n < 1:
            raise DataError(f"number of images n={n} must be >= 1")
        params = self.sample_params(n, generator)
        hr = torch.empty(n, 1, self.hr_size, self.hr_size, dtype=self.dtype, device=self.device)
        lr_size = self.hr_size // self.scale
        lr = torch.empty(n, 1, lr_size, lr_size, dtype=self.dtype, device=self.device)
        coeffs = self._coeffs(params)
        for s in range(0, n, self._chunk):
            e = min(n, s + self._chunk)
            c = {k: v[s:e] for k, v in coeffs.items()}
            clean = self._render_clean(c)
            noisy = self._add_noise(blur_with_kernels(clean, c["psf"]), c, generator)
            peak = noisy.amax(dim=(1, 2, 3))
            params[s:e, _IDX["hr_peak_flux"]] = peak
            hr_c = torch.div(noisy, peak.reshape(-1, 1, 1, 1), out=hr[s:e]).clamp_(0.0, 1.0)
            if self.lr_mode == "mean":
                lr[s:e] = F.avg_pool2d(hr_c, self.scale)
            elif self.lr_mode == "instrument":
                lr_flux = self._add_lr_noise(fft_blur(clean, c["psf_lr2d"]), c, generator)
                lr[s:e] = self._instrument_lr(lr_flux, peak, c, hr_c)
            else:
                binned = F.avg_pool2d(clean, self.scale).mul_(self.scale**2)  # flux per coarse pixel
                lr_flux = self._add_noise(blur_with_kernels(binned, c["psf_lr"]), c, generator)
                torch.div(lr_flux, peak.reshape(-1, 1, 1, 1) * self.scale**2, out=lr[s:e]).clamp_(0.0, 1.0)
        return SimBatch(hr=hr, lr=lr, params=params)

    # --------------------------------------------------------------------------- rendering
    def render(self, params: Tensor, noise: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Flux images (N,1,H,W) at HR for params (N,P) (columns as PARAM_NAMES; hr_peak_flux is ignored).

        Noise-free (``noise=False``) output matches lenstronomy's ImageModel with the same parameters.
        """
        if params.ndim != 2 or params.shape[1] < len(SAMPLED_NAMES):
            raise DataError(f"params has shape {tuple(params.shape)}; expected (N, {len(PARAM_NAMES)})")
        params = params.to(self.device, self.dtype)
        coeffs = self._coeffs(params)
        size = (params.shape[0], 1, self.hr_size, self.hr_size)
        out = torch.empty(size, dtype=self.dtype, device=self.device)
        for s in range(0, params.shape[0], self._chunk):
            c = {k: v[s : s + self._chunk] for k, v in coeffs.items()}
            img = blur_with_kernels(self._render_clean(c), c["psf"])
            out[s : s + self._chunk] = self._add_noise(img, c, generator) if noise else img
        return out

    def render_lr(
        self, params: Tensor, noise: bool = True, generator: torch.Generator | None = None
    ) -> Tensor:
        """LR flux images (N,1,H/scale,W/scale) of an LR instrument (lr_mode "instrument") for params (N,P)
        (columns as ``param_names``), in HR flux units (flux per LR pixel / scale^2): the sky blurred by the
        LR PSF on the HR grid, block-averaged; with ``noise``, the LR Poisson and background noise. Pairs
        whose LR is the mean of HR (lr_psf_fwhm 0) get the mean of the HR PSF's image (noise-free) here."""
        if self.lr_mode != "instrument":
            raise DataError(f"render_lr needs lr_mode='instrument'; this simulator's is {self.lr_mode!r}")
        if params.ndim != 2 or params.shape[1] < len(self.param_names):
            raise DataError(f"params has shape {tuple(params.shape)}; expected (N, {len(self.param_names)})")
        params = params.to(self.device, self.dtype)
        coeffs = self._coeffs(params)
        lr_size = self.hr_size // self.scale
        out = torch.empty(params.shape[0], 1, lr_size, lr_size, dtype=self.dtype, device=self.device)
        for s in range(0, params.shape[0], self._chunk):
            c = {k: v[s : s + self._chunk] for k, v in coeffs.items()}
            clean = self._render_clean(c)
            if noise:
                flux = self._add_lr_noise(fft_blur(clean, c["psf_lr2d"]), c, generator)
            else:
                flux = F.avg_pool2d(fft_blur(clean, c["psf_lr2d"]), self.scale).mul_(self.scale**2)
            mean_pairs = c["lr_mean"].reshape(-1)
            if bool(mean_pairs.any()):
                hr = blur_with_kernels(clean[mean_pairs], c["psf"][mean_pairs])
                flux[mean_pairs] = F.avg_pool2d(hr, self.scale).mul_(self.scale**2)
            out[s : s + self._chunk] = flux.div_(self.scale**2)
        return out

    # --------------------------------------------------------------------------- windows
    def sample_offsets(self, n: int, window: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, 2) int64 HR (row, col) top-left corners of window x window crops, one per sample, uniform
        over the positions that are multiples of ``scale`` and keep the window inside the image."""
        self._check_window(window)
        gdev = generator.device if generator is not None else torch.device("cpu")
        positions = (self.hr_size - window) // self.scale + 1
        off = torch.randint(0, positions, (n, 2), generator=generator, device=gdev)
        return off.to(self.device).mul_(self.scale)

    def sample_windows(
        self, n: int, window: int, generator: torch.Generator | None = None, keep_clean: bool = False
    ) -> WindowBatch:
        """n (hr, lr) windows, each of its own parameters and at its own random aligned place in its image.

        ``window`` is the HR side, a multiple of ``scale`` (LR windows are window // scale). Only the windows
        (plus the PSF margin) and the small peak patches are rendered: see "Windows" in the module docstring.
        Draws from ``generator``: the parameters (as sample_params), the offsets, then the noise.
        ``keep_clean``: also return each window before its noise (``WindowBatch.clean``), same draws.
        """
        if n < 1:
            raise DataError(f"number of windows n={n} must be >= 1")
        params = self.sample_params(n, generator)
        offsets = self.sample_offsets(n, window, generator)
        return self._window_pairs(params, offsets, window, True, generator, keep_clean)

    def window_pairs(
        self,
        params: Tensor,
        offsets: Tensor,
        window: int,
        noise: bool = True,
        generator: torch.Generator | None = None,
    ) -> WindowBatch:
        """The (hr, lr) windows of given params (N,P) at given HR offsets (N,2), multiples of ``scale``."""
        params, offsets = self._window_inputs(params, offsets, window, aligned=True)
        return self._window_pairs(params.clone(), offsets, window, noise, generator)

    def render_windows(
        self,
        params: Tensor,
        offsets: Tensor,
        window: int,
        noise: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Flux windows (N,1,w,w) at HR: ``render(params)[i, :, y:y+w, x:x+w]`` for offsets[i] = (y, x).

        Noise-free, equal to the crop of the full render (the same sub-pixel coordinates and PSF, replicate
        padding only where the window meets the image border); with noise, the same noise model.
        """
        params, offsets = self._window_inputs(params, offsets, window, aligned=False)
        coeffs = self._coeffs(params)
        out = torch.empty(params.shape[0], 1, window, window, dtype=self.dtype, device=self.device)
        chunk = self._window_chunk(window)
        for s in range(0, params.shape[0], chunk):
            c = {k: v[s : s + chunk] for k, v in coeffs.items()}
            r = (c["psf"].shape[1] - 1) // 2
            img = _blur_mm(self._region_clean(c, offsets[s : s + chunk] - r, window + 2 * r), c["psf"])
            out[s : s + chunk] = self._add_noise(img, c, generator) if noise else img
        return out

    def peak_mask(self, params: Tensor, offsets: Tensor, window: int) -> Tensor:
        """(N,1,H,W) bool: the pixels of each image whose maximum is a window's normalising peak flux.

        The window itself and the peak patches (see "Windows" in the module docstring); for measuring how
        close that peak is to the full image's maximum.
        """
        params, offsets = self._window_inputs(params, offsets, window, aligned=False)
        squares = [(offsets, window)]
        if window < self.hr_size:
            corners = self._peak_corners(self._coeffs(params))
            squares += [(corners[:, j], self._peak_patch) for j in range(corners.shape[1])]
        ar = torch.arange(self.hr_size, device=self.device)
        mask = torch.zeros(params.shape[0], self.hr_size, self.hr_size, dtype=torch.bool, device=self.device)
        for top_left, side in squares:
            inside = (ar >= top_left.unsqueeze(-1)) & (ar < top_left.unsqueeze(-1) + side)  # (N, 2, H)
            mask |= inside[:, 0, :, None] & inside[:, 1, None, :]
        return mask.unsqueeze(1)

    def _check_window(self, window: int) -> None:
        ok = isinstance(window, int) and not isinstance(window, bool)
        if not ok or window < self.scale or window > self.hr_size or window % self.scale:
            raise DataError(
                f"window={window!r} must be a multiple of scale={self.scale} from {self.scale} to "
                f"hr_size={self.hr_size}"
            )

    def _window_inputs(
        self, params: Tensor, offsets: Tensor, window: int, aligned: bool
    ) -> tuple[Tensor, Tensor]:
        """params (N,P) and offsets (N,2) int64 on this device, checked (DataError naming the bad one)."""
        self._check_window(window)
        if params.ndim != 2 or params.shape[1] < len(SAMPLED_NAMES):
            raise DataError(f"params has shape {tuple(params.shape)}; expected (N, {len(PARAM_NAMES)})")
        integer = not (
            offsets.dtype.is_floating_point or offsets.dtype.is_complex or offsets.dtype == torch.bool
        )
        if offsets.shape != (params.shape[0], 2) or not integer:
            raise DataError(
                f"offsets has shape {tuple(offsets.shape)} and dtype {offsets.dtype}; expected integers of "
                f"shape ({params.shape[0]}, 2)"
            )
        offsets = offsets.to(self.device, torch.int64)
        bad = (offsets < 0) | (offsets > self.hr_size - window)
        if aligned:
            bad |= offsets % self.scale != 0
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0, 0])
            what = f"multiples of scale={self.scale} in" if aligned else "in"
            raise DataError(
                f"offsets[{row}]={offsets[row].tolist()}: window offsets must be {what} "
                f"[0, hr_size - window] = [0, {self.hr_size - window}]"
            )
        return params.to(self.device, self.dtype), offsets

    def _chunk_budget(self) -> int:
        """Sub-pixels rendered at once: cache-sized on CPU, far more on a GPU (fewer, larger kernels)."""
        return _CHUNK_ELEMENTS if self.device.type == "cpu" else _CHUNK_ELEMENTS * 64

    def _window_chunk(self, window: int) -> int:
        side = window + 8  # with a typical PSF margin
        return max(1, self._chunk_budget() // (side * side * self.supersample**2))

    def _window_pairs(
        self,
        params: Tensor,
        offsets: Tensor,
        window: int,
        noise: bool,
        generator: torch.Generator | None,
        keep_clean: bool = False,
    ) -> WindowBatch:
        n, sc = params.shape[0], self.scale
        flux = torch.empty(n, 1, window, window, dtype=self.dtype, device=self.device)
        clean_flux = torch.empty_like(flux) if keep_clean else None
        lr_flux = torch.empty(n, 1, window // sc, window // sc, dtype=self.dtype, device=self.device)
        coeffs = self._coeffs(params)
        chunk = self._window_chunk(window)
        for s in range(0, n, chunk):
            c = coeffs if n <= chunk else {k: v[s : s + chunk] for k, v in coeffs.items()}
            off = offsets[s : s + chunk]
            r = (c["psf"].shape[1] - 1) // 2
            m = r
            if self.lr_mode == "independent":  # LR needs whole scale x scale blocks of the clean image
                m = sc * -(-max(r, sc * ((c["psf_lr"].shape[1] - 1) // 2)) // sc)
            elif self.lr_mode == "instrument":  # the LR PSF's reach on the HR grid
                rl = (c["psf_lr2d"].shape[-1] - 1) // 2
                m = max(r, rl)
            clean = self._region_clean(c, off - m, window + 2 * m)
            img = _blur_mm(clean[..., m - r : m + window + r, m - r : m + window + r], c["psf"])
            if clean_flux is not None:
                clean_flux[s : s + chunk] = img
            flux[s : s + chunk] = self._add_noise(img, c, generator) if noise else img
            if self.lr_mode == "independent":
                img = self._window_lr(c, off, window, clean, m)
                lr_flux[s : s + chunk] = self._add_noise(img, c, generator) if noise else img
            elif self.lr_mode == "instrument":
                blurred = fft_blur_valid(clean[..., m - rl : m + window + rl, m - rl : m + window + rl],
                                         c["psf_lr2d"])  # fmt: skip
                if noise:
                    lr_flux[s : s + chunk] = self._add_lr_noise(blurred, c, generator)
                else:
                    lr_flux[s : s + chunk] = F.avg_pool2d(blurred, sc).mul_(sc**2)
        chunk = max(1, 4 * self._chunk_budget() // self._peak_elements())
        for s in range(0, n, chunk):
            c = coeffs if n <= chunk else {k: v[s : s + chunk] for k, v in coeffs.items()}
            params[s : s + chunk, _IDX["hr_peak_flux"]] = self._window_peak(
                c, offsets[s : s + chunk], window, flux[s : s + chunk], noise, generator
            )
        peak = params[:, _IDX["hr_peak_flux"]].reshape(-1, 1, 1, 1)
        hr = flux.div_(peak).clamp_(0.0, 1.0)
        if self.lr_mode == "mean":
            lr = F.avg_pool2d(hr, sc)
        elif self.lr_mode == "instrument":
            lr = self._instrument_lr(lr_flux, peak, coeffs, hr)
        else:
            lr = lr_flux.div_(peak * sc**2).clamp_(0.0, 1.0)
        clean_hr = None if clean_flux is None else clean_flux.div_(peak).clamp_(0.0, 1.0)
        return WindowBatch(hr=hr, lr=lr, params=params, offsets=offsets, clean=clean_hr)

    def _region_clean(self, c: dict[str, Tensor], top_left: Tensor, side: int) -> Tensor:
        """Unblurred flux (C,1,side,side) of the pixels from top_left (C,2) on, indices clamped to the image
        (pixels beyond the border repeat the border pixel: replicate padding). With top_left (C,K,2) and c
        viewed for K regions (see _render_clean): (C,K,side,side)."""
        ar = torch.arange(side, device=self.device)
        rows = (top_left[..., :1] + ar).clamp_(0, self.hr_size - 1)  # (C, [K,] side)
        cols = (top_left[..., 1:] + ar).clamp_(0, self.hr_size - 1)
        lead, s = rows.shape[:-1], self.supersample
        x = self._sub[:, cols].movedim(0, -2).reshape(*lead, 1, s, 1, side)  # the sub-pixels of _x, _y
        y = self._sub[:, rows].movedim(0, -2).reshape(*lead, s, 1, side, 1)
        return self._render_clean(c, x, y)

    def _window_lr(self, c: dict[str, Tensor], off: Tensor, window: int, clean: Tensor, m: int) -> Tensor:
        """Independent-mode LR flux windows from the clean region (margin m, a multiple of scale)."""
        sc, lr_size = self.scale, self.hr_size // self.scale
        rl = (c["psf_lr"].shape[1] - 1) // 2
        binned = F.avg_pool2d(clean, sc).mul_(sc**2)  # flux per coarse pixel; block 0 is LR (off - m) / sc
        ar = torch.arange(window // sc + 2 * rl, device=self.device)
        need = (torch.div(off, sc, rounding_mode="floor") - rl).unsqueeze(-1) + ar  # (C, 2, L + 2 rl)
        base = torch.div(off - m, sc, rounding_mode="floor").unsqueeze(-1)
        need = need.clamp_(0, lr_size - 1).sub_(base)  # LR replicate padding at the image border
        idx = torch.arange(clean.shape[0], device=self.device).reshape(-1, 1, 1)
        return _blur_mm(binned[idx, 0, need[:, 0, :, None], need[:, 1, None, :]].unsqueeze(1), c["psf_lr"])

    def _peak_elements(self) -> int:
        """Sub-pixels one window's peak costs (coarse image and patches with a typical PSF margin)."""
        side = self._peak_patch + 8
        return self._coarse_xy.numel() ** 2 + (_PEAK_CANDIDATES + 1) * side * side * self.supersample**2

    def _window_peak(
        self,
        c: dict[str, Tensor],
        off: Tensor,
        window: int,
        flux: Tensor,
        noise: bool,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The normalising peak flux (C,): the maximum of the window's and the peak patches' pixels.

        Each pixel counts once, with one noise draw: patch pixels inside the window or an earlier patch are
        left out (the window's or that patch's value stands for them).
        """
        peak = flux.amax(dim=(1, 2, 3))
        if window == self.hr_size:
            return peak
        p = self._peak_patch
        corners = self._peak_corners(c)  # (C, k, 2)
        per_region = {key: v.unsqueeze(1) if v.ndim == 5 else v for key, v in c.items()}
        r = (c["psf"].shape[1] - 1) // 2
        img = _blur_mm(self._region_clean(per_region, corners - r, p + 2 * r), c["psf"])  # (C,k,p,p)
        if noise:
            img = self._add_noise(img, c, generator)
        pos = corners.unsqueeze(-1) + torch.arange(p, device=self.device)  # (C, k, 2, p): rows and cols
        squares = [(off, window)] + [(corners[:, j], p) for j in range(corners.shape[1] - 1)]
        for j, (top_left, side) in enumerate(squares):  # square j may overlap patches j.. (the window: all)
            start = top_left.reshape(-1, 1, 2, 1)
            inside = (pos[:, j:] >= start) & (pos[:, j:] < start + side)
            img[:, j:].masked_fill_(inside[:, :, 0, :, None] & inside[:, :, 1, None, :], -math.inf)
        return torch.maximum(peak, img.amax(dim=(1, 2, 3)))

    def _peak_corners(self, c: dict[str, Tensor]) -> Tensor:
        """Top-left corners (C, k, 2) of the peak patches, inside the image: one centred on each of the
        _PEAK_CANDIDATES brightest local maxima of the smoothed coarse image, one on the lens-light centre."""
        xy, idx, p = self._coarse_xy, self._coarse_idx, self._peak_patch
        g = xy.numel()
        coarse = self._render_clean(c, xy.reshape(1, 1, 1, 1, g), xy.reshape(1, 1, 1, g, 1))  # (C,1,g,g)
        coarse = torch.matmul(torch.matmul(self._coarse_smooth, coarse), self._coarse_smooth.t())
        coarse = coarse.masked_fill(coarse < _max3x3(coarse), -math.inf)  # local maxima only
        top = coarse.flatten(1).topk(min(_PEAK_CANDIDATES, g * g), dim=1).indices  # (C, k)
        centres = torch.stack((idx[top // g], idx[top % g]), dim=-1)
        if bool(c["ll_on"].any()):  # a cuspy lens light peaks at its centre, which the coarse grid misses
            lens = torch.stack((c["lens_y"].flatten(), c["lens_x"].flatten()), dim=-1)
            lens = lens.div(self.preset.pixel_scale).add_((self.hr_size - 1) / 2).round_()
            centres = torch.cat((centres, lens.clamp_(0, self.hr_size - 1).to(torch.int64).unsqueeze(1)), 1)
        return centres.sub_(p // 2).clamp_(0, self.hr_size - p)

    def _coeffs(self, p: Tensor) -> dict[str, Tensor]:
        """Per-image constants of the whole batch, computed once (chunks slice them)."""
        col = {name: p[:, i] for i, name in enumerate(SAMPLED_NAMES)}
        cos, sin, q = _ellipse(col["lens_e1"], col["lens_e2"], self._e_min)
        sq = torch.sqrt(1 - q * q)
        core = 1e-10 / torch.sqrt(q)  # lenstronomy's SIE s_scale, in the major-axis frame
        k = col["theta_E"] * torch.sqrt(q) / sq  # b / sqrt(1 - q^2)
        g1, g2 = col["gamma1"], col["gamma2"]
        area = self.preset.pixel_scale**2 / self.supersample**2  # flux of a sub-pixel, averaged by summing
        src = _sersic_coeffs(*(col[n] for n in ("src_amp", "src_R", "src_n", "src_e1", "src_e2")), area)
        ll = _sersic_coeffs(*(col[n] for n in ("ll_amp", "ll_R", "ll_n", "ll_e1", "ll_e2")), area)
        sigma_px = (col["psf_fwhm"] * _FWHM_TO_SIGMA / self.preset.pixel_scale).clamp_min(1e-6)
        out = {
            "lens_x": col["lens_x"], "lens_y": col["lens_y"], "q": q, "cos": cos, "sin": sin,
            "inv_sq": 1 / sq, "core_x": core / sq, "core_dy": -sq * core,
            "t": col["exposure_time"], "bkg2": col["background_rms"] ** 2, "ll_on": (col["ll_amp"] != 0),
        }  # fmt: skip
        # the source-plane coordinates folded with the source's ellipse matrix M (see _render_clean):
        # u = (M (beta - src))_x = u_x x + u_y y + u_0 + u_ax ax + u_ay ay, likewise v
        m11, m12, m22 = src["m11"], src["m12"], src["m22"]
        kc, ks = k * cos, k * sin
        out.update(
            u_x=m11 * (1 - g1) - m12 * g2, u_y=m12 * (1 + g1) - m11 * g2,
            u_0=-(m11 * col["src_x"] + m12 * col["src_y"]),
            u_ax=-(m11 * kc + m12 * ks), u_ay=m11 * ks - m12 * kc,
            v_x=m12 * (1 - g1) - m22 * g2, v_y=m22 * (1 + g1) - m12 * g2,
            v_0=-(m12 * col["src_x"] + m22 * col["src_y"]),
            v_ax=-(m12 * kc + m22 * ks), v_ay=m12 * ks - m22 * kc,
        )  # fmt: skip
        out = {k: _bc(v) for k, v in out.items()}
        out.update({f"src_{k}": _bc(v) for k, v in src.items()})
        out.update({f"ll_{k}": _bc(v) for k, v in ll.items()})
        out["psf"] = gaussian_kernels(sigma_px)
        if self.lr_mode == "independent":
            out["psf_lr"] = gaussian_kernels(sigma_px / self.scale)
        elif self.lr_mode == "instrument":
            out["psf_lr2d"] = lr_kernels(p, self.preset.pixel_scale, self.scale)
            out.update(lr_t=_bc(p[:, _IDX["lr_exposure_time"]]),
                       lr_bkg2=_bc(p[:, _IDX["lr_background_rms"]] ** 2),
                       lr_mean=_bc(mean_lr_pairs(p)))  # fmt: skip
        return out

    def _render_clean(self, c: dict[str, Tensor], x: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """Unblurred flux image (C,1,H,W): supersampled sub-pixels summed (their flux includes 1/s^2).

        x (1 or C,1,s,1,W) and y (1 or C,s,1,H,1) are the sub-pixel centres; the whole image's by default.
        With x (C,K,1,s,1,W), y (C,K,s,1,H,1) and c's per-image tensors viewed as (C,1,1,1,1,1), K regions
        per image: (C,K,H,W) out.
        """
        if x is None or y is None:
            x, y = self._x, self._y
        dx, dy = x - c["lens_x"], y - c["lens_y"]  # (C,1,s,1,W), (C,s,1,H,1)
        # SIE (NIE with lenstronomy's tiny core s) in its major-axis frame (Keeton & Kochanek 1998):
        # alpha_x' = b/sq atan(sq x' / (psi + s)), alpha_y' = b/sq atanh(sq y' / (psi + q^2 s)),
        # sq = sqrt(1-q^2), psi = sqrt(q^2 x'^2 + y'^2)
        xr = (dx * c["cos"]).add(dy * c["sin"])
        yr = (dy * c["cos"]).sub(dx * c["sin"])
        psi = xr * c["q"]
        psi.mul_(psi).addcmul_(yr, yr).sqrt_()
        den = psi.mul_(c["inv_sq"]).add_(c["core_x"])  # (psi + s) / sq
        ax = xr.div_(den).atan_()  # alpha_x' * sq / b
        ay = yr.div_(den.add_(c["core_dy"])).atanh_()  # alpha_y' * sq / b; den is now (psi + q^2 s) / sq
        # source plane: beta = theta - R(-phi) alpha' - shear(theta), less the source centre, times the
        # source's ellipse matrix M: linear in (x, y, ax, ay), its coefficients folded in _coeffs
        u = (x * c["u_x"] + c["u_0"]) + y * c["u_y"]
        u.addcmul_(ax, c["u_ax"]).addcmul_(ay, c["u_ay"])
        v = (x * c["v_x"] + c["v_0"]) + y * c["v_y"]
        v.addcmul_(ax, c["v_ax"]).addcmul_(ay, c["v_ay"])
        del ax, ay, den
        img = _sersic(u, v, {k[4:]: t for k, t in c.items() if k.startswith("src_")})
        if bool(c["ll_on"].any()):
            u = (dx * c["ll_m11"]) + (dy * c["ll_m12"])
            v = (dx * c["ll_m12"]) + (dy * c["ll_m22"])
            img += _sersic(u, v, {k[3:]: t for k, t in c.items() if k.startswith("ll_")})
        out = img.sum(dim=(-4, -3)) if img.shape[-4] * img.shape[-3] > 1 else img[..., 0, 0, :, :]
        return out.unsqueeze(1) if img.ndim == 5 else out

    def _add_noise(self, img: Tensor, c: dict[str, Tensor], generator: torch.Generator | None) -> Tensor:
        """Poisson (Gaussian approximation, or exact counts) at exposure t plus Gaussian background."""
        t, bkg2 = c["t"][:, 0], c["bkg2"][:, 0]  # (C,1,1,1)
        gdev = generator.device if generator is not None else self.device
        if self.preset.poisson == "exact":
            counts = torch.poisson((img.clamp_min(0) * t).to(gdev), generator=generator).to(self.device)
            img, var = counts.div_(t), bkg2
        else:
            var = img.abs().div_(t).add_(bkg2)  # independent Gaussians: variances add
        z = torch.randn(img.shape, generator=generator, dtype=self.dtype, device=gdev).to(self.device)
        return z.mul_(var.sqrt()).add_(img)

    def _add_lr_noise(
        self, blurred: Tensor, c: dict[str, Tensor], generator: torch.Generator | None
    ) -> Tensor:
        """LR flux per LR pixel from the sky blurred by the LR PSF on the HR grid (C,1,H',W'): the scale x
        scale block sums, with Poisson noise at the LR exposure and the LR background (Gaussian)."""
        flux = F.avg_pool2d(blurred, self.scale).mul_(self.scale**2)
        var = flux.abs().div(c["lr_t"][:, 0]).add_(c["lr_bkg2"][:, 0])
        gdev = generator.device if generator is not None else self.device
        z = torch.randn(flux.shape, generator=generator, dtype=self.dtype, device=gdev).to(self.device)
        return z.mul_(var.sqrt()).add_(flux)

    def _instrument_lr(self, lr_flux: Tensor, peak: Tensor, c: dict[str, Tensor], hr: Tensor) -> Tensor:
        """LR in HR units (flux per LR pixel / (scale^2 * hr_peak_flux)) clipped to [0, 1]; pairs whose LR
        is the mean of HR (lr_psf_fwhm 0) take the mean of ``hr`` (already scaled and clipped) instead."""
        lr = lr_flux.div_(peak.reshape(-1, 1, 1, 1) * self.scale**2).clamp_(0.0, 1.0)
        mean_pairs = c["lr_mean"].reshape(-1)
        if bool(mean_pairs.any()):
            lr[mean_pairs] = F.avg_pool2d(hr[mean_pairs], self.scale)
        return lr


def noise_free_hr(params: Tensor, preset: str | LensPreset, hr_size: int) -> Tensor:
    """The noise-free HR (N,1,H,W) of recorded params (N, len(PARAM_NAMES)), float64 on params' device:
    ``render(params, noise=False) / hr_peak_flux`` clipped to [0, 1], the scaling HR had."""
    p = params.detach().to(torch.float64)
    sim = LensingSimulator(
        preset, hr_size=hr_size, scale=1, device=p.device, dtype=torch.float64, lr_mode="mean"
    )
    return sim.render(p, noise=False).div_(p[:, _IDX["hr_peak_flux"]].reshape(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def simulate(n: int, preset: str = "deeplense_sr", seed: int = 0, **kw) -> SimBatch:
    """``LensingSimulator(preset, **kw).sample(n, torch.Generator(device).manual_seed(seed))``."""
    sim = LensingSimulator(preset, **kw)
    gen = torch.Generator(device=sim.device).manual_seed(seed)
    return sim.sample(n, generator=gen)
