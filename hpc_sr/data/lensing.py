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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.errors import DataError

__all__ = [
    "PARAM_NAMES",
    "PRESETS",
    "LensPreset",
    "LensingSimulator",
    "Prior",
    "SimBatch",
    "gaussian_blur",
    "simulate",
]

# Sampled parameters, in column order; the last column (hr_peak_flux) is derived, not sampled.
SAMPLED_NAMES: tuple[str, ...] = (
    "theta_E", "lens_e1", "lens_e2", "gamma1", "gamma2", "lens_x", "lens_y",
    "src_amp", "src_R", "src_n", "src_e1", "src_e2", "src_x", "src_y",
    "ll_amp", "ll_R", "ll_n", "ll_e1", "ll_e2",
    "psf_fwhm", "exposure_time", "background_rms",
)  # fmt: skip
PARAM_NAMES: tuple[str, ...] = (*SAMPLED_NAMES, "hr_peak_flux")
_IDX = {name: i for i, name in enumerate(PARAM_NAMES)}

_PSF_TRUNCATE = 5.0  # lenstronomy's PSF default truncation, in sigmas
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_CHUNK_ELEMENTS = 1 << 17  # supersampled pixels rendered at once: keeps the working set in cache


@dataclass(frozen=True)
class Prior:
    """A 1-D prior: ``uniform`` on [lo, hi] (lo == hi: fixed) or ``log10uniform`` (10**U(lo, hi))."""

    lo: float
    hi: float
    kind: str = "uniform"

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "log10uniform"):
            raise DataError(f"prior kind {self.kind!r} is not one of 'uniform', 'log10uniform'")
        if self.hi < self.lo:
            raise DataError(f"prior upper bound {self.hi} is below its lower bound {self.lo}")

    def transform(self, u: Tensor) -> Tensor:
        """Map uniform draws u in [0, 1) to this prior."""
        v = self.lo + (self.hi - self.lo) * u
        return torch.pow(10.0, v) if self.kind == "log10uniform" else v

    @property
    def support(self) -> tuple[float, float]:
        """The closed interval every draw lies in."""
        if self.kind == "log10uniform":
            return 10.0**self.lo, 10.0**self.hi
        return self.lo, self.hi


def _fixed(v: float) -> Prior:
    return Prior(v, v)


@dataclass(frozen=True)
class LensPreset:
    """Priors of every sampled parameter (a field per name in SAMPLED_NAMES), pixel scale and noise model."""

    name: str
    pixel_scale: float  # arcsec per HR pixel
    theta_E: Prior
    lens_e1: Prior
    lens_e2: Prior
    gamma1: Prior
    gamma2: Prior
    lens_x: Prior
    lens_y: Prior
    src_amp: Prior
    src_R: Prior
    src_n: Prior
    src_e1: Prior
    src_e2: Prior
    src_x: Prior
    src_y: Prior
    ll_amp: Prior
    ll_R: Prior
    ll_n: Prior
    ll_e1: Prior
    ll_e2: Prior
    psf_fwhm: Prior
    exposure_time: Prior
    background_rms: Prior
    poisson: str = "gaussian"  # "gaussian" (lenstronomy's approximation) or "exact" (torch.poisson counts)

    def __post_init__(self) -> None:
        if self.poisson not in ("gaussian", "exact"):
            raise DataError(f"preset {self.name!r}: poisson={self.poisson!r} is not 'gaussian' or 'exact'")
        if self.pixel_scale <= 0:
            raise DataError(f"preset {self.name!r}: pixel_scale={self.pixel_scale} must be > 0")

    def priors(self) -> tuple[Prior, ...]:
        """Priors in SAMPLED_NAMES order."""
        return tuple(getattr(self, n) for n in SAMPLED_NAMES)


_NO_LENS_LIGHT = {
    "ll_amp": _fixed(0.0), "ll_R": _fixed(1.0), "ll_n": _fixed(2.0),
    "ll_e1": _fixed(0.0), "ll_e2": _fixed(0.0),
}  # fmt: skip

_MODEL_I = LensPreset(
    name="model_i",
    pixel_scale=0.05,
    theta_E=_fixed(1.28), lens_e1=_fixed(0.1), lens_e2=_fixed(0.0),
    gamma1=_fixed(0.05), gamma2=_fixed(0.0), lens_x=_fixed(0.0), lens_y=_fixed(0.0),
    src_amp=_fixed(20.0), src_R=_fixed(0.25), src_n=_fixed(1.0),
    src_e1=Prior(-0.1, 0.1), src_e2=Prior(-0.1, 0.1), src_x=Prior(-0.35, 0.35), src_y=Prior(-0.35, 0.35),
    **_NO_LENS_LIGHT,
    psf_fwhm=_fixed(0.087),
    exposure_time=Prior(3.0, 3.5, "log10uniform"),
    background_rms=_fixed(1e-2),
    poisson="exact",
)  # fmt: skip

# Model I widened into priors; noise calibrated so that bicubic x2 of LR scores ~41.5 dB / SSIM ~0.975 vs HR.
_DEEPLENSE_SR = LensPreset(
    name="deeplense_sr",
    pixel_scale=0.05,
    theta_E=Prior(1.1, 1.5), lens_e1=Prior(-0.2, 0.2), lens_e2=Prior(-0.2, 0.2),
    gamma1=Prior(-0.08, 0.08), gamma2=Prior(-0.08, 0.08), lens_x=Prior(-0.1, 0.1), lens_y=Prior(-0.1, 0.1),
    src_amp=Prior(15.0, 25.0), src_R=Prior(0.18, 0.35), src_n=Prior(0.7, 1.5),
    src_e1=Prior(-0.2, 0.2), src_e2=Prior(-0.2, 0.2), src_x=Prior(-0.35, 0.35), src_y=Prior(-0.35, 0.35),
    **_NO_LENS_LIGHT,
    psf_fwhm=Prior(0.08, 0.095),
    exposure_time=Prior(3.0, 3.5, "log10uniform"),
    background_rms=Prior(1.125e-3, 1.875e-3),
)  # fmt: skip

_WIDE = LensPreset(
    name="wide",
    pixel_scale=0.05,
    theta_E=Prior(0.6, 2.0), lens_e1=Prior(-0.35, 0.35), lens_e2=Prior(-0.35, 0.35),
    gamma1=Prior(-0.12, 0.12), gamma2=Prior(-0.12, 0.12), lens_x=Prior(-0.3, 0.3), lens_y=Prior(-0.3, 0.3),
    src_amp=Prior(5.0, 50.0), src_R=Prior(0.1, 0.8), src_n=Prior(0.5, 3.0),
    src_e1=Prior(-0.35, 0.35), src_e2=Prior(-0.35, 0.35), src_x=Prior(-0.6, 0.6), src_y=Prior(-0.6, 0.6),
    ll_amp=Prior(1.0, 8.0), ll_R=Prior(0.3, 1.2), ll_n=Prior(1.0, 3.0), ll_e1=Prior(-0.3, 0.3),
    ll_e2=Prior(-0.3, 0.3),
    psf_fwhm=Prior(0.06, 0.15),
    exposure_time=Prior(3.0, 4.5, "log10uniform"),
    background_rms=Prior(1e-3, 2e-2),
)  # fmt: skip

PRESETS: dict[str, LensPreset] = {p.name: p for p in (_MODEL_I, _DEEPLENSE_SR, _WIDE)}


@dataclass(frozen=True)
class SimBatch:
    """A batch of pairs: hr (N,1,H,W) and lr (N,1,H/scale,W/scale) in [0, 1], params (N, len(PARAM_NAMES))."""

    hr: Tensor
    lr: Tensor
    params: Tensor


def _resolve_preset(preset: str | LensPreset) -> LensPreset:
    if isinstance(preset, LensPreset):
        return preset
    if preset not in PRESETS:
        raise DataError(f"unknown lensing preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


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


def _gauss_kernels(sigma_px: Tensor) -> Tensor:
    """(C, K) normalised 1-D Gaussian kernels, each cut at its own radius int(5 sigma + 0.5) as scipy."""
    radius = (_PSF_TRUNCATE * sigma_px + 0.5).floor()
    r_max = int(radius.max().item())
    t = torch.arange(-r_max, r_max + 1, dtype=sigma_px.dtype, device=sigma_px.device)
    w = torch.exp(-0.5 * (t / sigma_px[:, None]) ** 2)
    w = torch.where(t.abs() <= radius[:, None], w, torch.zeros_like(w))
    return w / w.sum(dim=1, keepdim=True)


def _blur_kernels(img: Tensor, k: Tensor) -> Tensor:
    """Separable blur of (C,1,H,W) images by per-image 1-D kernels k (C, K), replicate ('nearest') padding."""
    c, _, h, w = img.shape
    r = (k.shape[1] - 1) // 2
    if r == 0:
        return img * k[:, :1].reshape(c, 1, 1, 1)
    x = F.pad(img, (r, r, r, r), mode="replicate")
    kk = k.reshape(c, 1, 1, 1, -1)
    rows = x[:, :, 0:h, :] * kk[..., 0]
    for j in range(1, 2 * r + 1):
        rows.addcmul_(x[:, :, j : j + h, :], kk[..., j])
    out = rows[..., 0:w] * kk[..., 0]
    for j in range(1, 2 * r + 1):
        out.addcmul_(rows[..., j : j + w], kk[..., j])
    return out


def gaussian_blur(img: Tensor, sigma_px: Tensor) -> Tensor:
    """Blur (C,1,H,W) images, each by its own sigma_px: scipy gaussian_filter(mode='nearest', truncate=5)."""
    return _blur_kernels(img, _gauss_kernels(sigma_px.clamp_min(1e-6)))


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
        lr_mode: str = "mean",
    ) -> None:
        self.preset = _resolve_preset(preset)
        if scale < 1 or hr_size < scale or hr_size % scale:
            raise DataError(f"hr_size={hr_size} must be a positive multiple of scale={scale}")
        if supersample < 1:
            raise DataError(f"supersample={supersample} must be >= 1")
        if lr_mode not in ("mean", "independent"):
            raise DataError(f"lr_mode={lr_mode!r} is not one of 'mean', 'independent'")
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
        self._x = coords.reshape(1, 1, s, 1, hr_size).to(self.device, dtype)
        self._y = coords.reshape(1, s, 1, hr_size, 1).to(self.device, dtype)
        self._chunk = max(1, _CHUNK_ELEMENTS // (hr_size * hr_size * s * s))

    # --------------------------------------------------------------------------- sampling
    def sample_params(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, len(PARAM_NAMES)) parameters drawn from the preset (hr_peak_flux column NaN until rendered)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, len(SAMPLED_NAMES), generator=generator, dtype=torch.float64, device=gdev).cpu()
        cols = [p.transform(u[:, i]) for i, p in enumerate(self.preset.priors())]
        cols.append(torch.full((n,), math.nan, dtype=torch.float64))
        return torch.stack(cols, dim=1).to(self.device, self.dtype)

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
            noisy = self._add_noise(_blur_kernels(clean, c["psf"]), c, generator)
            peak = noisy.amax(dim=(1, 2, 3))
            params[s:e, _IDX["hr_peak_flux"]] = peak
            hr_c = torch.div(noisy, peak.reshape(-1, 1, 1, 1), out=hr[s:e]).clamp_(0.0, 1.0)
            if self.lr_mode == "mean":
                lr[s:e] = F.avg_pool2d(hr_c, self.scale)
            else:
                binned = F.avg_pool2d(clean, self.scale).mul_(self.scale**2)  # flux per coarse pixel
                lr_flux = self._add_noise(_blur_kernels(binned, c["psf_lr"]), c, generator)
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
            img = _blur_kernels(self._render_clean(c), c["psf"])
            out[s : s + self._chunk] = self._add_noise(img, c, generator) if noise else img
        return out

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
            "kc": k * cos, "ks": k * sin, "one_m_g1": 1 - g1, "one_p_g1": 1 + g1, "neg_g2": -g2,
            "src_x": col["src_x"], "src_y": col["src_y"],
            "t": col["exposure_time"], "bkg2": col["background_rms"] ** 2, "ll_on": (col["ll_amp"] != 0),
        }  # fmt: skip
        out = {k: _bc(v) for k, v in out.items()}
        out.update({f"src_{k}": _bc(v) for k, v in src.items()})
        out.update({f"ll_{k}": _bc(v) for k, v in ll.items()})
        out["psf"] = _gauss_kernels(sigma_px)
        if self.lr_mode == "independent":
            out["psf_lr"] = _gauss_kernels(sigma_px / self.scale)
        return out

    def _render_clean(self, c: dict[str, Tensor]) -> Tensor:
        """Unblurred flux image (C,1,H,W): supersampled sub-pixels summed (their flux includes 1/s^2)."""
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
        # source plane: beta = theta - R(-phi) alpha' - shear(theta), less the source centre
        bx = (x * c["one_m_g1"] - c["src_x"]) + y * c["neg_g2"]
        bx.addcmul_(ax, -c["kc"]).addcmul_(ay, c["ks"])
        by = (y * c["one_p_g1"] - c["src_y"]) + x * c["neg_g2"]
        by.addcmul_(ax, -c["ks"]).addcmul_(ay, -c["kc"])
        del ax, ay, den
        u = (bx * c["src_m11"]).addcmul_(by, c["src_m12"])
        v = bx.mul_(c["src_m12"]).addcmul_(by, c["src_m22"])
        img = _sersic(u, v, {k[4:]: t for k, t in c.items() if k.startswith("src_")})
        if bool(c["ll_on"].any()):
            u = (dx * c["ll_m11"]) + (dy * c["ll_m12"])
            v = (dx * c["ll_m12"]) + (dy * c["ll_m22"])
            img += _sersic(u, v, {k[3:]: t for k, t in c.items() if k.startswith("ll_")})
        return img.sum(dim=(1, 2)).unsqueeze(1) if self.supersample > 1 else img[:, 0]

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


def simulate(n: int, preset: str = "deeplense_sr", seed: int = 0, **kw) -> SimBatch:
    """``LensingSimulator(preset, **kw).sample(n, torch.Generator(device).manual_seed(seed))``."""
    sim = LensingSimulator(preset, **kw)
    gen = torch.Generator(device=sim.device).manual_seed(seed)
    return sim.sample(n, generator=gen)
