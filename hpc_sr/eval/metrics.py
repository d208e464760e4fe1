"""Image-quality metrics and the bicubic baseline (pure functions; nothing here loads checkpoints).

Conventions (docs/EVALUATION.md):

* per image, ``data_range = 1``, on SR outputs clamped to [0, 1] (HR is taken as it is);
* computed in float64 whatever the input dtype;
* PSNR = 10 log10(1 / MSE) per image; an exact match (MSE < 1e-10) is capped at 100 dB so that means stay
  finite;
* SSIM: gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, averaged over the image without a 5-pixel border
  (as skimage ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)``; computed with torchmetrics' full SSIM map, cropped); images need H, W >= 11;
* flux_err = |sum(SR) - sum(HR)| / |sum(HR)| per image.

``MetricAccumulator`` keeps float64 sums so ranks can ``all_reduce(SUM)`` its ``state()`` exactly; it reports
the mean of per-image PSNRs (``psnr``) and the PSNR of the pooled MSE (``psnr_pooled``, what torchmetrics'
batch PSNR gives). They differ whenever the per-image MSEs differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

MSE_FLOOR = 1e-10  # PSNR cap: 10 log10(1 / 1e-10) = 100 dB
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_BORDER = (SSIM_WINDOW - 1) // 2
METRIC_KEYS = ("psnr", "mse", "ssim", "flux_err")


def bicubic_upscale(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling by ``scale`` (``align_corners=False``), not clamped: the baseline for SR."""
    if lr.ndim != 4:
        raise ValueError(f"bicubic_upscale: expected an (N, C, h, w) tensor, got shape {tuple(lr.shape)}")
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def psnr_from_mse(mse: Tensor | float) -> Tensor:
    """10 log10(1 / mse) with ``mse`` floored at MSE_FLOOR (data_range 1)."""
    mse_t = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(1.0 / mse_t.clamp_min(MSE_FLOOR))


SSIM_CHUNK = 8  # images per SSIM call: CPU conv2d im2col takes 5 x 121 x H x W x 8 bytes per image


def ssim_per_image(sr: Tensor, hr: Tensor) -> Tensor:
    """SSIM per image (N,), skimage-compatible (see the module docstring); no clamping here."""
    h, w = hr.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    if sr.shape[0] > SSIM_CHUNK:
        return torch.cat(
            [
                ssim_per_image(sr[i : i + SSIM_CHUNK], hr[i : i + SSIM_CHUNK])
                for i in range(0, sr.shape[0], SSIM_CHUNK)
            ]
        )
    _, full = structural_similarity_index_measure(
        sr,
        hr,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        reduction="none",
        data_range=1.0,
        k1=0.01,
        k2=0.03,
        return_full_image=True,
    )
    return full[..., _BORDER:-_BORDER, _BORDER:-_BORDER].flatten(1).mean(1)


def per_image_metrics(sr: Tensor, hr: Tensor) -> dict[str, Tensor]:
    """``psnr``, ``mse``, ``ssim``, ``flux_err`` per image, each float64 of shape (N,)."""
    if sr.shape != hr.shape or sr.ndim != 4:
        raise ValueError(
            f"per_image_metrics: sr {tuple(sr.shape)} and hr {tuple(hr.shape)} "
            "must be equal (N, C, H, W) shapes"
        )
    with torch.no_grad():
        sr64 = sr.detach().to(torch.float64).clamp(0.0, 1.0)
        hr64 = hr.detach().to(torch.float64)
        mse = (sr64 - hr64).pow(2).flatten(1).mean(1)
        sum_sr, sum_hr = sr64.flatten(1).sum(1), hr64.flatten(1).sum(1)
        flux_err = (sum_sr - sum_hr).abs() / sum_hr.abs().clamp_min(1e-12)
        return {
            "psnr": psnr_from_mse(mse),
            "mse": mse,
            "ssim": ssim_per_image(sr64, hr64),
            "flux_err": flux_err,
        }


class SumAccumulator:
    """Running float64 sums in one tensor, exact over ranks and shards: merge, state / load_state, reset.

    Across ranks: ``t = acc.state().to(device); dist.all_reduce(t); acc.load_state(t); acc.compute()``.
    """

    _sums: Tensor

    def merge(self, other: SumAccumulator) -> SumAccumulator:
        """Add another accumulator's sums into this one (returns self)."""
        if other._sums.shape != self._sums.shape:
            raise ValueError(f"{type(self).__name__}.merge: the accumulators hold different fields")
        self._sums += other._sums
        return self

    def state(self) -> Tensor:
        """A copy of the sums (float64, CPU)."""
        return self._sums.clone()

    def load_state(self, t: Tensor) -> None:
        """Replace the sums (e.g. with an all-reduced ``state()``)."""
        if t.shape != self._sums.shape:
            raise ValueError(
                f"{type(self).__name__}.load_state: expected shape {tuple(self._sums.shape)}, "
                f"got {tuple(t.shape)}"
            )
        self._sums = t.detach().to("cpu", torch.float64).clone()

    def reset(self) -> None:
        self._sums.zero_()


class MetricAccumulator(SumAccumulator):
    """Running float64 sums ``[n, sum_psnr, sum_mse, sum_ssim, sum_flux_err]`` over evaluated images."""

    def __init__(self) -> None:
        self._sums = torch.zeros(1 + len(METRIC_KEYS), dtype=torch.float64)

    def update(self, sr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        """Add a batch; returns its per-image metrics (on CPU)."""
        per = {k: v.cpu() for k, v in per_image_metrics(sr, hr).items()}
        batch = torch.stack(
            [torch.tensor(float(sr.shape[0]), dtype=torch.float64)] + [per[k].sum() for k in METRIC_KEYS]
        )
        self._sums += batch
        return per

    @property
    def n(self) -> int:
        return int(self._sums[0].item())

    def compute(self) -> dict[str, float]:
        """``n``, ``psnr`` (mean per image), ``psnr_pooled`` (of the mean MSE), ``ssim``, ``mse``,
        ``flux_err``.

        With no images every value but ``n`` is NaN.
        """
        n = self.n
        if n == 0:
            nan = math.nan
            return {"n": 0, "psnr": nan, "psnr_pooled": nan, "ssim": nan, "mse": nan, "flux_err": nan}
        means = {k: float(self._sums[i + 1].item()) / n for i, k in enumerate(METRIC_KEYS)}
        return {
            "n": n,
            "psnr": means["psnr"],
            "psnr_pooled": float(psnr_from_mse(means["mse"])),
            "ssim": means["ssim"],
            "mse": means["mse"],
            "flux_err": means["flux_err"],
        }


def evaluate_pairs(lr: Tensor, hr: Tensor, sr: Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics of ``sr`` and of bicubic(``lr``) against ``hr`` on the same images: (model, bicubic)."""
    scale = hr.shape[-1] // lr.shape[-1]
    if lr.ndim != 4 or hr.shape[-2:] != (scale * lr.shape[-2], scale * lr.shape[-1]):
        raise ValueError(
            f"evaluate_pairs: hr {tuple(hr.shape)} is not an integer upscale of lr {tuple(lr.shape)}"
        )
    model, bicubic = MetricAccumulator(), MetricAccumulator()
    model.update(sr, hr)
    bicubic.update(bicubic_upscale(lr, scale).to(hr.dtype), hr)
    return model.compute(), bicubic.compute()
