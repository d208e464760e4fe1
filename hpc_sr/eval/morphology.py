"""Where the lens's light is and how SR treats it: the arc region, LR consistency and the Einstein ring.

* the arc region: ``arc_mask`` (the noise-free image, or a Gaussian-smoothed HR, above ``ARC_K`` times the
  background noise rms, ``estimate_noise_rms`` when it is not known) and ``masked_psnr`` on it;
* ``lr_consistency_residual``: mean |avg_pool(SR, s) - LR|; ``lr_consistent_projection`` onto avg_pool = LR;
* the ring: ``ring_profile`` around the lens centre and ``ring_peak_radius`` (sub-bin, 3-point fit).

Batches (N, 1, H, W) on any device, computed in float64. Pixel (i, j) has centre x = (j - (W-1)/2) *
pixel_scale, y = (i - (H-1)/2) * pixel_scale (as the simulator); centres here are (row, column) = (i, j) in
pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.eval.images import TINY, check_images, per_image
from hpc_sr.eval.metrics import psnr_from_mse
from hpc_sr.imaging import gaussian_blur, lr_projection

__all__ = [
    "ARC_K",
    "ARC_SMOOTH",
    "RING_WINDOW",
    "arc_mask",
    "estimate_noise_rms",
    "gaussian_smooth",
    "image_centre",
    "lr_consistency_residual",
    "lr_consistent_projection",
    "masked_psnr",
    "ring_peak_radius",
    "ring_profile",
    "ring_radius",
]

ARC_K = 3.0  # arc region: signal above ARC_K x the background noise rms
ARC_SMOOTH = 1.0  # sigma (pixels) of the Gaussian that smooths HR when no noise-free image is known
RING_WINDOW = 3.0  # pixels: an SR or HR ring is looked for this close to the reference ring


def gaussian_smooth(img: Tensor, sigma: float) -> Tensor:
    """(N,1,H,W) images (float64) blurred by a Gaussian of ``sigma`` pixels as scipy's
    ``gaussian_filter(mode="nearest", truncate=5)``: the simulator's PSF blur (:mod:`hpc_sr.imaging`)."""
    check_images("gaussian_smooth", img)
    return gaussian_blur(img.detach().to(torch.float64), float(sigma))


# ----------------------------------------------------------------------------------------------- arcs
def estimate_noise_rms(img: Tensor) -> Tensor:
    """Robust per-image rms (N,) of a zero-level background, clipped at 0 or not.

    With z pixels <= 0 (the negative half of the background noise, or its zeros after clipping), the pixel
    of rank z + z/2 is about the median of the positive half, 0.6745 rms (pixels of the arcs are brighter
    and barely move it). Where fewer than 10% of the pixels are <= 0 (a background that is not at 0),
    1.4826 x the median absolute deviation instead. Needs a frame mostly of background (150-pixel
    deeplense_sr images: 0.86-1.00 of the simulated rms; a crop filled by the arc over-estimates it).
    """
    check_images("estimate_noise_rms", img)
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
    when known, else to HR smoothed with sigma ARC_SMOOTH (see ``physics.per_image_physics``).
    """
    check_images("arc_mask", img)
    x = img.detach().to(torch.float64)
    if smooth_sigma > 0:
        x = gaussian_smooth(x, float(smooth_sigma))
    return x > per_image(threshold, x.shape[0], x)


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
    check_images("lr_consistency_residual (sr)", sr)
    if lr.shape[:2] != sr.shape[:2] or tuple(lr.shape[-2:]) != (sr.shape[-2] // scale, sr.shape[-1] // scale):
        raise ValueError(f"lr {tuple(lr.shape)} is not sr {tuple(sr.shape)} downscaled by {scale}")
    pooled = F.avg_pool2d(sr.detach().to(torch.float64), scale)
    return (pooled - lr.detach().to(torch.float64)).abs().flatten(1).mean(1)


def lr_consistent_projection(x: Tensor, lr: Tensor, scale: int) -> Tensor:
    """The orthogonal projection of ``x`` onto {y : avg_pool(y, scale) = lr} (float64): each block gets its
    mean residual added."""
    return lr_projection(x.to(torch.float64), lr.to(torch.float64), scale)


# ----------------------------------------------------------------------------------------------- ring
def ring_profile(
    img: Tensor, centre: Tensor, n_bins: int, r_max: float | None = None
) -> tuple[Tensor, Tensor]:
    """(radii (B,), profile (N, B)): mean pixel value in annuli of width r_max / B around each centre.

    ``centre`` (N, 2) is (row, column) in pixels; r_max defaults to min(H, W) / 2; radii are the annuli's
    mid radii; an annulus with no pixel is NaN.
    """
    check_images("ring_profile", img)
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
    lm, l0, lp = (torch.where(logs, y.clamp_min(TINY).log(), y) for y in (ym, y0, yp))
    den = lm - 2 * l0 + lp
    ok = inner & torch.isfinite(den) & (den < 0)
    shift = torch.where(
        ok, 0.5 * (lm - lp) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den)
    )
    width = float(r[1] - r[0])
    return r[best] + shift.clamp(-0.5, 0.5) * width


def image_centre(n: int, h: int, w: int, device: torch.device) -> Tensor:
    """(N, 2) float64 (row, column) of the centre of H x W images."""
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
    check_images("ring_radius", img)
    n, _, h, w = img.shape
    if centre is None:
        centre = image_centre(n, h, w, img.device)
    radii, prof = ring_profile(img, centre, n_bins or max(min(h, w) // 2, 1), r_max)
    return ring_peak_radius(radii, prof, r_min, near, window)
