"""The classical baseline for two-instrument super-resolution: deconvolution with the known PSFs, no learning.

Forward model (the simulator's, HR-pixel flux units; ``scale`` HR pixels per LR pixel):

* ``HR = blur(S, psf_hr) + noise`` and ``LR = avg_pool(blur(S, psf_lr), scale) + noise``, ``S`` the sky on
  the HR grid, ``blur`` = :func:`hpc_sr.imaging.fft_blur`, per-image kernels (N, K, K) sampled on the HR grid
  (``psf_lr`` carries LR's sub-pixel misalignment in its centre).

Both baselines estimate ``blur(S, psf_hr)`` (LR's PSF deconvolved *to* HR's, not to a delta), in [0, 1]:

* :func:`richardson_lucy`: RL on the HR grid with the exact forward operator (:func:`lr_forward`) and its
  adjoint (:func:`lr_adjoint`), Snyder's offset for Poisson + Gaussian noise, and the field-edge handling of
  Bertero & Boccacci (2005): the sky is estimated on the image extended by the LR kernel's radius, the
  forward blur keeps only its 'valid' part and each update is divided by ``A^T 1``, so no padding convention
  enters the model.
* :func:`wiener`: one Fourier-space filter applied to the bicubic upsampling of LR, whose transfer is LR's
  PSF x the ``scale x scale`` box x bicubic's own response (their phase-averaged impulse response), the image
  padded and tapered to its border mean against wrap-around.

Everything runs in float64 and is deterministic; outputs have LR's dtype. Defaults were measured on a
ground-to-space look-alike (``tools/bench_deconvolution.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.config import did_you_mean
from hpc_sr.eval.metrics import bicubic_upscale
from hpc_sr.imaging import fft_blur

# Measured on 32 ground-to-space look-alike pairs (tools/bench_deconvolution.py: seeing 9-15 HR px, LR noise
# 5x HR's): RL best at 25-30 iterations (flat within 0.1 dB over 20-30, 0.4 dB over 15-50; 500 costs 6 dB),
# Wiener best at k = 20-28 x the noise variance in PSNR (56: -0.4 dB, +0.017 SSIM). Less noise wants more RL
# iterations (LR noise = HR's: ~100): tune on validation pairs (richardson_lucy_path).
RL_ITERATIONS = 25
RL_BACKGROUND = 0.0  # offset added to RL's numerator and denominator besides the noise variance (Snyder)
RL_EPS = 1e-6  # the initial estimate's floor (RL's updates are multiplicative: a zero stays zero)
WIENER_K_PER_NOISE_VAR = 28.0  # Wiener's k = this x the image's mean LR noise variance
_EDGE_REL = 1e-8  # pixels of the extended field whose A^T 1 is below this x its maximum are not updated


# ---------------------------------------------------------------------------------------------- checks
def _check_inputs(lr: Tensor, psf_lr: Tensor, psf_hr: Tensor | None, scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if not isinstance(lr, Tensor) or lr.ndim != 4 or lr.shape[1] != 1 or lr.shape[0] < 1:
        shape = tuple(lr.shape) if isinstance(lr, Tensor) else type(lr).__name__
        raise ValueError(f"lr must be an (N, 1, h, w) tensor, got {shape}")
    for name, k in (("psf_lr", psf_lr), ("psf_hr", psf_hr)):
        if k is None and name == "psf_hr":
            continue
        if not isinstance(k, Tensor) or k.ndim != 3 or k.shape[1] != k.shape[2] or k.shape[1] % 2 == 0:
            shape = tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__
            raise ValueError(f"{name} must be an (N, K, K) tensor of kernels with K odd, got {shape}")
        if k.shape[0] != lr.shape[0]:
            raise ValueError(f"{name} holds {k.shape[0]} kernels for {lr.shape[0]} images in lr")


def _per_pixel(value: float | Tensor | None, lr: Tensor, name: str) -> Tensor:
    """A float, an (N,) tensor or an (N, 1, h, w) map as an (N, 1, h, w) float64 tensor (0 for None)."""
    n = lr.shape[0]
    if value is None:
        return torch.zeros_like(lr)
    t = torch.as_tensor(value, dtype=lr.dtype, device=lr.device)
    if t.ndim == 0:
        return t.expand_as(lr)
    if t.shape == (n,):
        return t.reshape(n, 1, 1, 1).expand_as(lr)
    if t.shape == lr.shape:
        return t
    raise ValueError(
        f"{name} must be a float, an ({n},) tensor or a {tuple(lr.shape)} map, got {tuple(t.shape)}"
    )


def estimate_noise_var(lr: Tensor) -> Tensor:
    """(N,) each image's mean noise variance per pixel, from (N, 1, h, w) images: the mean square of
    ``x - mean(4 neighbours)`` / 1.25 (that residual's variance for white noise), over the inner pixels.

    Seeing-blurred signal barely enters the residual; an LR sharp at its own pixel scale inflates the
    estimate, and pixels clipped at 0 lower it.
    """
    x = lr.detach().to(torch.float64)[:, 0]
    r = x[:, 1:-1, 1:-1] - 0.25 * (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:])
    return r.pow(2).flatten(1).mean(1) / 1.25


# ----------------------------------------------------------------------------------------- Fourier tools
def _fast_len(n: int) -> int:
    """The smallest 5-smooth integer >= n (a quick FFT length)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _otf(k: Tensor, size: tuple[int, int]) -> Tensor:
    """rfft2 of (N, K, K) kernels on a ``size`` grid with each kernel's centre at index (0, 0)."""
    r = (k.shape[-1] - 1) // 2
    kp = torch.zeros(k.shape[0], *size, dtype=k.dtype, device=k.device)
    kp[:, : k.shape[-1], : k.shape[-1]] = k
    return torch.fft.rfft2(torch.roll(kp, shifts=(-r, -r), dims=(-2, -1)))


class _LrOperator:
    """A = avg_pool(valid_blur(x, psf_lr), scale) from the extended field (H+2R, W+2R) to LR, and A^T.

    The blur is a circular convolution on an FFT grid >= the extended field, of which only the 'valid' (H, W)
    part is kept, where no wrap reaches: A is the linear convolution exactly and A^T its exact adjoint.
    """

    def __init__(self, psf_lr: Tensor, scale: int, hw: tuple[int, int]) -> None:
        self.scale, self.r = scale, (psf_lr.shape[-1] - 1) // 2
        self.hw = hw
        self.ext = (hw[0] + 2 * self.r, hw[1] + 2 * self.r)
        self.grid = (_fast_len(self.ext[0]), _fast_len(self.ext[1]))
        self.otf = _otf(psf_lr, self.grid)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H+2R, W+2R) -> (N, 1, h, w)."""
        (h, w), r = self.hw, self.r
        y = torch.fft.irfft2(torch.fft.rfft2(x[:, 0], s=self.grid) * self.otf, s=self.grid)
        return F.avg_pool2d(y[:, None, r : r + h, r : r + w], self.scale)

    def adjoint(self, y: Tensor) -> Tensor:
        """(N, 1, h, w) -> (N, 1, H+2R, W+2R): nearest upsampling / scale^2, then the flipped kernel."""
        (h, w), r, s = self.hw, self.r, self.scale
        up = F.interpolate(y, scale_factor=s, mode="nearest")[:, 0] / (s * s)
        pad = torch.zeros(y.shape[0], *self.grid, dtype=y.dtype, device=y.device)
        pad[:, r : r + h, r : r + w] = up
        x = torch.fft.irfft2(torch.fft.rfft2(pad) * self.otf.conj(), s=self.grid)
        return x[:, None, : self.ext[0], : self.ext[1]]


def lr_forward(x: Tensor, psf_lr: Tensor, scale: int) -> Tensor:
    """RL's forward operator: (N, 1, H+2R, W+2R) sky on the extended field -> (N, 1, H/scale, W/scale) LR,
    R the radius of psf_lr (N, 2R+1, 2R+1): ``avg_pool(blur(x, psf_lr), scale)``, the blur's 'valid' part."""
    r = (psf_lr.shape[-1] - 1) // 2
    hw = (x.shape[-2] - 2 * r, x.shape[-1] - 2 * r)
    return _LrOperator(psf_lr, scale, hw).forward(x)


def lr_adjoint(y: Tensor, psf_lr: Tensor, scale: int) -> Tensor:
    """The exact adjoint of :func:`lr_forward`: (N, 1, h, w) -> (N, 1, scale*h + 2R, scale*w + 2R)."""
    hw = (y.shape[-2] * scale, y.shape[-1] * scale)
    return _LrOperator(psf_lr, scale, hw).adjoint(y)


# ----------------------------------------------------------------------------------------- Richardson-Lucy
def richardson_lucy(
    lr: Tensor,
    psf_lr: Tensor,
    psf_hr: Tensor | None,
    scale: int = 2,
    iterations: int = RL_ITERATIONS,
    background: float | Tensor = RL_BACKGROUND,
    noise_var: float | Tensor | None = None,
) -> Tensor:
    """Richardson-Lucy estimate of ``blur(S, psf_hr)`` from LR, (N, 1, scale*h, scale*w) clamped to [0, 1].

    ``lr`` (N, 1, h, w); ``psf_lr`` (N, K, K) LR's PSF on the HR grid, shift included; ``psf_hr`` (N, K', K')
    the target PSF (None: return the sky estimate S itself, clamped >= 0). ``background`` and ``noise_var``
    (the Gaussian noise variance in image units: a float, (N,) or (N, 1, h, w)) are added to the numerator
    and denominator of each update (Snyder's approximation of Poisson + Gaussian noise); ``iterations`` = 0
    returns the initial estimate, bicubic(LR) floored at RL_EPS, re-blurred by psf_hr. The best iteration
    count falls as LR's noise grows: tune it on validation pairs with :func:`richardson_lucy_path`.
    """
    return richardson_lucy_path(lr, psf_lr, psf_hr, (iterations,), scale, background, noise_var)[0]


def richardson_lucy_path(
    lr: Tensor,
    psf_lr: Tensor,
    psf_hr: Tensor | None,
    checkpoints: Sequence[int],
    scale: int = 2,
    background: float | Tensor = RL_BACKGROUND,
    noise_var: float | Tensor | None = None,
) -> list[Tensor]:
    """:func:`richardson_lucy`'s outputs after each number of iterations in ``checkpoints``, in that order,
    from one run (to choose the iteration count on validation pairs)."""
    _check_inputs(lr, psf_lr, psf_hr, scale)
    if not checkpoints or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in checkpoints):
        raise ValueError(f"iterations must be ints >= 0, got {list(checkpoints)!r}")
    y = lr.detach().to(torch.float64)
    offset = _per_pixel(background, y, "background") + _per_pixel(noise_var, y, "noise_var")
    if bool((offset < 0).any()):
        raise ValueError("background + noise_var must be >= 0")
    r, hw = (psf_lr.shape[-1] - 1) // 2, (y.shape[-2] * scale, y.shape[-1] * scale)
    found: dict[int, Tensor] = {}
    for i, x in _rl_iterates(y, psf_lr.detach().to(torch.float64), scale, offset):
        if i in checkpoints:
            found[i] = _finish(x, r, hw, psf_hr, lr.dtype)
        if i >= max(checkpoints):
            break
    return [found[i] for i in checkpoints]


def _rl_iterates(y: Tensor, psf_lr: Tensor, scale: int, offset: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(i, estimate on the extended field after i RL updates) for i = 0, 1, ... (float64 inputs)."""
    h, w = y.shape[-2] * scale, y.shape[-1] * scale
    op = _LrOperator(psf_lr, scale, (h, w))
    r = op.r
    x0 = bicubic_upscale(y, scale).clamp_min(RL_EPS)
    x = F.pad(x0, (r, r, r, r), mode="replicate") if r else x0
    norm = op.adjoint(torch.ones_like(y))
    live = norm > _EDGE_REL * norm.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    inv_norm = torch.where(live, 1.0 / norm.clamp_min(1e-300), torch.zeros_like(norm))
    data = (y + offset).clamp_min(0.0)
    i = 0
    while True:
        yield i, x
        ratio = data / (op.forward(x) + offset).clamp_min(1e-12)
        x = torch.where(live, x * op.adjoint(ratio) * inv_norm, x)
        i += 1


def _finish(x_ext: Tensor, r: int, hw: tuple[int, int], psf_hr: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Blur the extended-field estimate by psf_hr (or not), crop the image, clamp."""
    h, w = hw
    if psf_hr is None:
        return x_ext[..., r : r + h, r : r + w].clamp_min(0.0).to(dtype)
    out = fft_blur(x_ext, psf_hr.detach().to(torch.float64))[..., r : r + h, r : r + w]
    return out.clamp(0.0, 1.0).to(dtype)


# ------------------------------------------------------------------------------------------------ Wiener
def _bicubic_response(scale: int, size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """rfft2 (1, size) of ``bicubic(avg_pool(z, scale), scale)``'s impulse response averaged over the scale^2
    phases of the impulse (the shift-invariant part of the operator: the box x the interpolator), centred."""
    m = 16 * scale
    c = m // 2
    z = torch.zeros(scale * scale, 1, m, m, dtype=dtype, device=device)
    for i in range(scale * scale):
        z[i, 0, c + i // scale, c + i % scale] = 1.0
    u = F.interpolate(F.avg_pool2d(z, scale), scale_factor=scale, mode="bicubic", align_corners=False)
    resp = torch.stack([torch.roll(u[i, 0], (-(i // scale), -(i % scale)), (0, 1)) for i in range(len(u))])
    resp = resp.mean(0)
    r = 3 * scale + 1  # bicubic reaches 2 LR pixels, the box one more
    return _otf(resp[None, c - r : c + r + 1, c - r : c + r + 1], size)


def _taper_pad(x: Tensor, p: int, grid: tuple[int, int]) -> Tensor:
    """(N, 1, H, W) -> (N, 1, *grid): replicate-padded by p, blended by a raised cosine over the pad into each
    image's border mean, then filled with that mean (a continuous periodic extension)."""
    h, w = x.shape[-2:]
    edge = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    mean = edge.mean(-1, keepdim=True)[..., None]  # (N, 1, 1, 1)
    xp = F.pad(x, (p, p, p, p), mode="replicate")

    def ramp(n: int) -> Tensor:
        d = torch.arange(n + 2 * p, dtype=x.dtype, device=x.device)
        dist = torch.clamp(torch.maximum(p - d, d - (n + p - 1)), min=0.0)
        return 0.5 * (1.0 + torch.cos(math.pi * dist / (p + 1)))

    wgt = ramp(h)[:, None] * ramp(w)[None, :]
    xp = mean + (xp - mean) * wgt
    out = mean.expand(x.shape[0], 1, *grid).clone()
    out[..., : h + 2 * p, : w + 2 * p] = xp
    return out


def wiener(
    lr: Tensor,
    psf_lr: Tensor,
    psf_hr: Tensor | None,
    scale: int = 2,
    k: float | Tensor | None = None,
    noise_var: float | Tensor | None = None,
) -> Tensor:
    """Wiener estimate of ``blur(S, psf_hr)`` from bicubic(LR), (N, 1, scale*h, scale*w) clamped to [0, 1].

    Filter ``T conj(H) / (|H|^2 + k)``, scaled to a DC gain of 1, with H = OTF(psf_lr) x the box-and-bicubic
    response and T = OTF(psf_hr) (None: 1, plain deconvolution). ``k`` (float or (N,)) defaults to
    WIENER_K_PER_NOISE_VAR x each image's mean LR noise variance: ``noise_var`` (float, (N,) or
    (N, 1, h, w)) or, when None, :func:`estimate_noise_var`.
    """
    _check_inputs(lr, psf_lr, psf_hr, scale)
    y = lr.detach().to(torch.float64)
    n = y.shape[0]
    if k is None:
        var = estimate_noise_var(y) if noise_var is None else _per_pixel(noise_var, y, "noise_var")
        kk = WIENER_K_PER_NOISE_VAR * (var if var.ndim == 1 else var.flatten(1).mean(1))
    else:
        kk = torch.as_tensor(k, dtype=torch.float64, device=y.device).flatten()
        if kk.numel() not in (1, n):
            raise ValueError(f"k must be a float or an ({n},) tensor, got {kk.numel()} values")
    if bool((kk <= 0).any()):
        raise ValueError("k must be > 0 (a zero k divides by the PSF's zeros)")
    kk = kk.expand(n).reshape(n, 1, 1)
    u = bicubic_upscale(y, scale)
    h, w = u.shape[-2:]
    k_lr = psf_lr.detach().to(torch.float64)
    p = 2 * max((k_lr.shape[-1] - 1) // 2, 3 * scale + 1)
    grid = (_fast_len(h + 2 * p), _fast_len(w + 2 * p))
    big = max(k_lr.shape[-1], 0 if psf_hr is None else psf_hr.shape[-1])
    if big > min(grid):
        raise ValueError(f"kernels of {big} pixels do not fit the {grid} Fourier grid of these images")
    h_fwd = _otf(k_lr, grid) * _bicubic_response(scale, grid, y.dtype, y.device)
    target = 1.0 if psf_hr is None else _otf(psf_hr.detach().to(torch.float64), grid)
    filt = target * h_fwd.conj() / (h_fwd.abs() ** 2 + kk)
    filt = filt / filt[:, :1, :1].real  # a DC gain of 1: flux kept (k alone would take k / (1 + k) of it)
    xs = torch.fft.irfft2(torch.fft.rfft2(_taper_pad(u, p, grid)[:, 0]) * filt, s=grid)
    return xs[:, None, p : p + h, p : p + w].clamp(0.0, 1.0).to(lr.dtype)


# ------------------------------------------------------------------------------------------------ by name
BASELINES = ("bicubic", "richardson_lucy", "wiener")


def deconvolution_baseline(
    name: str, lr: Tensor, psf_lr: Tensor, psf_hr: Tensor | None, scale: int = 2, **options: Any
) -> Tensor:
    """The baseline ``name`` (one of BASELINES) on (lr, psf_lr, psf_hr); ``options`` go to its function.
    ``bicubic`` ignores the PSFs and returns bicubic(LR) clamped to [0, 1]."""
    if name == "richardson_lucy":
        return richardson_lucy(lr, psf_lr, psf_hr, scale, **options)
    if name == "wiener":
        return wiener(lr, psf_lr, psf_hr, scale, **options)
    if name == "bicubic":
        _check_inputs(lr, psf_lr, psf_hr, scale)
        if options:
            raise ValueError(f"bicubic takes no options, got {sorted(options)}")
        return bicubic_upscale(lr, scale).clamp(0.0, 1.0)
    hint = did_you_mean(name, BASELINES)
    raise ValueError(f"unknown deconvolution baseline {name!r}{hint}; choose from {', '.join(BASELINES)}")
