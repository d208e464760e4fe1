"""Image operations every layer shares (plain torch, no state): Gaussian blur as scipy's, the projection onto
images whose ``scale x scale`` block means equal a given LR.

The simulator blurs with these kernels (its PSF), evaluation smooths HR with them (arc masks), and the LR-
consistency layer, the noise ceiling and the metrics project with :func:`lr_projection`: one definition each.
"""

from __future__ import annotations

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
