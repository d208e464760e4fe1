"""Image operations every layer shares (plain torch, no state): Gaussian blur as scipy's, the projection onto
images whose ``scale x scale`` block means equal a given LR.

The simulator blurs with these kernels (its PSF), evaluation smooths HR with them (arc masks), and the LR-
consistency layer, the noise ceiling and the metrics project with :func:`lr_projection`: one definition each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

TRUNCATE = 5.0  # Gaussian kernels end at int(5 sigma + 0.5) pixels, as scipy's and lenstronomy's PSF


def gaussian_kernels(sigma_px: Tensor) -> Tensor:
    """(C, K) normalised 1-D Gaussian kernels, each cut at its own radius int(5 sigma + 0.5) as scipy."""
    radius = (TRUNCATE * sigma_px + 0.5).floor()
    r_max = int(radius.max().item())
    t = torch.arange(-r_max, r_max + 1, dtype=sigma_px.dtype, device=sigma_px.device)
    w = torch.exp(-0.5 * (t / sigma_px[:, None]) ** 2)
    w = torch.where(t.abs() <= radius[:, None], w, torch.zeros_like(w))
    return w / w.sum(dim=1, keepdim=True)


def blur_with_kernels(img: Tensor, k: Tensor) -> Tensor:
    """Separable blur of (C,1,H,W) images by per-image 1-D kernels k (C, K), replicate ('nearest') padding."""
    r = (k.shape[1] - 1) // 2
    return blur_valid(F.pad(img, (r, r, r, r), mode="replicate") if r else img, k)


def blur_valid(x: Tensor, k: Tensor) -> Tensor:
    """Separable blur of (C,1,H+2r,W+2r) images by kernels k (C, 2r+1), no padding: (C,1,H,W) out."""
    c = x.shape[0]
    r = (k.shape[1] - 1) // 2
    if r == 0:
        return x * k[:, :1].reshape(c, 1, 1, 1)
    h, w = x.shape[2] - 2 * r, x.shape[3] - 2 * r
    kk = k.reshape(c, 1, 1, 1, -1)
    rows = x[:, :, 0:h, :] * kk[..., 0]
    for j in range(1, 2 * r + 1):
        rows.addcmul_(x[:, :, j : j + h, :], kk[..., j])
    out = rows[..., 0:w] * kk[..., 0]
    for j in range(1, 2 * r + 1):
        out.addcmul_(rows[..., j : j + w], kk[..., j])
    return out


def gaussian_blur(img: Tensor, sigma_px: Tensor | float) -> Tensor:
    """Blur (C,1,H,W) images, each by its own sigma_px (or one for all): scipy gaussian_filter(mode='nearest',
    truncate=5)."""
    if not isinstance(sigma_px, Tensor):
        sigma_px = torch.full((img.shape[0],), float(sigma_px), dtype=img.dtype, device=img.device)
    return blur_with_kernels(img, gaussian_kernels(sigma_px.clamp_min(1e-6)))


def block_residual(x: Tensor, lr: Tensor, scale: int) -> Tensor:
    """``lr - avg_pool(x, scale)`` repeated over each ``scale x scale`` block (x's shape)."""
    return F.interpolate(lr - F.avg_pool2d(x, scale), scale_factor=scale, mode="nearest")


def lr_projection(x: Tensor, lr: Tensor, scale: int) -> Tensor:
    """The closest image (in L2) to ``x`` whose ``scale x scale`` block means equal ``lr`` exactly: each block
    gets its mean residual added, so the total flux equals ``scale**2 * sum(lr)``."""
    return x + block_residual(x, lr, scale)


# ------------------------------------------------------------------------------------------- LR-blur input
def with_lr_blur(lr: Tensor, lr_blur: Tensor | float) -> Tensor:
    """LR with its blur as one more channel: (N, C, h, w) and (N,) (or one value for all) -> (N, C + 1, h, w),
    the last channel constant per image, each image's ``lr_blur`` (the FWHM in LR pixels of the Gaussian that
    takes HR's PSF to LR's; 0 for a block mean). The input of a generator with ``lr_blur_input``."""
    blur = torch.as_tensor(lr_blur, dtype=lr.dtype, device=lr.device).reshape(-1)
    if blur.numel() == 1:
        blur = blur.expand(lr.shape[0])
    if blur.numel() != lr.shape[0]:
        raise ValueError(f"lr_blur: {blur.numel()} values for {lr.shape[0]} LR images")
    if not bool(torch.isfinite(blur).all()) or bool((blur < 0).any()):
        raise ValueError(f"lr_blur: expected finite FWHMs >= 0 (LR pixels), got {blur.tolist()[:8]}")
    return torch.cat([lr, blur.view(-1, 1, 1, 1).expand(-1, 1, *lr.shape[-2:])], dim=1)


def lr_image(lr: Tensor, channels: int) -> Tensor:
    """The image channels of an LR batch that may carry conditioning channels after them (with_lr_blur)."""
    return lr if lr.shape[1] == channels else lr[:, :channels]


# ----------------------------------------------------------------------------------------------- 2-D PSFs
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM / sigma of a Gaussian
MOFFAT_RADIUS_FWHM = 3.0  # Moffat kernels end at 3 FWHM (>= 98.5 % of the flux for beta >= 2.5); renormalised


def psf_radius(fwhm_px: Tensor, beta: Tensor, shift_px: Tensor | None = None) -> int:
    """One kernel radius (pixels) that holds every image's PSF: int(5 sigma + 0.5) for a Gaussian (beta == 0,
    as scipy), ceil(MOFFAT_RADIUS_FWHM * FWHM) for a Moffat, plus the largest |shift|."""
    sigma = fwhm_px / FWHM_PER_SIGMA
    r = torch.where(beta > 0, torch.ceil(MOFFAT_RADIUS_FWHM * fwhm_px), (TRUNCATE * sigma + 0.5).floor())
    extra = 0.0 if shift_px is None else float(shift_px.abs().max().ceil())
    return int(r.max().item() + extra)


def psf_kernels_2d(
    fwhm_px: Tensor, beta: Tensor, shift_px: Tensor | None = None, radius: int | None = None
) -> Tensor:
    """(C, 2R+1, 2R+1) normalised PSF kernels sampled at pixel centres, one per image.

    ``fwhm_px`` (C,) in pixels; ``beta`` (C,): 0 for a Gaussian, > 0 for a Moffat
    ``(1 + r^2/alpha^2)^-beta`` with alpha = FWHM / (2 sqrt(2^(1/beta) - 1)); ``shift_px`` (C, 2) moves each
    kernel's centre by (dy, dx) pixels (a sub-pixel shift of the image it blurs: content moves by +shift).
    Each kernel is cut at its own support around its shifted centre (a Gaussian per axis at int(5 sigma +
    0.5), as scipy, so an unshifted one equals ``gaussian_blur``'s; a Moffat at a circle of 3 FWHM) and
    renormalised to sum 1; ``radius`` defaults to the largest over the batch.
    """
    dt, dev = fwhm_px.dtype, fwhm_px.device
    if shift_px is None:
        shift_px = torch.zeros(fwhm_px.shape[0], 2, dtype=dt, device=dev)
    if radius is None:
        radius = psf_radius(fwhm_px, beta, shift_px)
    t = torch.arange(-radius, radius + 1, dtype=dt, device=dev)
    dy = t.reshape(1, -1, 1) - shift_px[:, 0].reshape(-1, 1, 1)
    dx = t.reshape(1, 1, -1) - shift_px[:, 1].reshape(-1, 1, 1)
    r2 = dy * dy + dx * dx
    b = beta.reshape(-1, 1, 1)
    sigma = (fwhm_px / FWHM_PER_SIGMA).clamp_min(1e-6).reshape(-1, 1, 1)
    gauss = torch.exp(-0.5 * r2 / sigma**2)
    safe_b = torch.where(b > 0, b, torch.ones_like(b))
    alpha = fwhm_px.reshape(-1, 1, 1) / (2.0 * torch.sqrt(torch.pow(2.0, 1.0 / safe_b) - 1.0))
    moffat = torch.pow(1.0 + r2 / alpha.clamp_min(1e-6) ** 2, -safe_b)
    own = torch.where(b > 0, MOFFAT_RADIUS_FWHM * fwhm_px.reshape(-1, 1, 1), TRUNCATE * sigma + 0.5)
    square = (dy.abs() <= own) & (dx.abs() <= own)  # scipy's Gaussian: cut per axis
    k = torch.where(b > 0, moffat * (r2.sqrt() <= own), gauss * square)
    return k / k.sum(dim=(1, 2), keepdim=True)


def fft_blur_valid(x: Tensor, k: Tensor) -> Tensor:
    """Blur (C,1,H+2R,W+2R) images by per-image 2-D kernels k (C, 2R+1, 2R+1) with FFTs, no padding: the
    (C,1,H,W) 'valid' part, equal to a direct convolution to rounding (the circular wrap stays outside it)."""
    r = (k.shape[-1] - 1) // 2
    hp, wp = x.shape[-2], x.shape[-1]
    kp = torch.zeros(k.shape[0], hp, wp, dtype=x.dtype, device=x.device)
    kp[:, : 2 * r + 1, : 2 * r + 1] = k
    kp = torch.roll(kp, shifts=(-r, -r), dims=(-2, -1))  # kernel centre at index 0: a circular convolution
    out = torch.fft.irfft2(torch.fft.rfft2(x[:, 0]) * torch.fft.rfft2(kp), s=(hp, wp))
    return out[:, None, r : hp - r, r : wp - r]


def fft_blur(img: Tensor, k: Tensor) -> Tensor:
    """Blur (C,1,H,W) images by per-image 2-D kernels k (C, K, K), replicate ('nearest') padding."""
    r = (k.shape[-1] - 1) // 2
    return fft_blur_valid(F.pad(img, (r, r, r, r), mode="replicate") if r else img, k)


def matching_kernels(psf_from: Tensor, psf_to: Tensor, eps: float = 1e-4) -> Tensor:
    """(C, K, K) kernels m with psf_from (x) m ~= psf_to (K: psf_to's side), by regularised division of
    their transfer functions: what turns an image at one PSF into the same image at a broader one (an SR
    image at the HR PSF into the LR instrument's view). Normalised to sum 1."""
    side = psf_to.shape[-1]
    if psf_from.shape[-1] > side:
        raise ValueError(f"psf_from side {psf_from.shape[-1]} exceeds psf_to side {side}")
    pad = (side - psf_from.shape[-1]) // 2
    a = F.pad(psf_from, (pad, pad, pad, pad))
    r = (side - 1) // 2
    fa = torch.fft.fft2(torch.roll(a, (-r, -r), (-2, -1)))
    fb = torch.fft.fft2(torch.roll(psf_to, (-r, -r), (-2, -1)))
    m = torch.fft.ifft2(fb * fa.conj() / (fa.abs().square() + eps)).real
    m = torch.roll(m, (r, r), (-2, -1))
    return m / m.sum(dim=(-2, -1), keepdim=True)


def instrument_view(img: Tensor, kernels: Tensor, scale: int) -> Tensor:
    """How an instrument whose PSF on the HR grid is ``kernels`` (C, K, K) (e.g. ``matching_kernels`` from
    an HR image's PSF) would see HR-grid images (C,1,H,W): blurred, then ``scale x scale`` block means."""
    return F.avg_pool2d(fft_blur(img, kernels), scale)
