"""The perception-distortion plane of x2 SR on simulated splits: sharpness (high-band power) against error.

A sharper output is not a better one when the detail above the LR Nyquist frequency is mostly noise (the
deeplense_sr sets: docs/RESULTS.md). The trivial way to gain high-band power is to add noise, so a GAN is
judged against that baseline: the PSNR model plus Gaussian noise of the simulator's per-pixel rms times a
scale 0..1.

* ``noise_baseline``: SR + scale x sigma x N(0, 1), optionally with each LR block's noise mean removed (keeps
  an LR-consistent SR consistent: what a sample of HR given LR would add to the ceiling);
* ``high_band_ratio``: power of SR over that of HR in [1/(2 s), 1/2] cycles/pixel (above the LR Nyquist);
* ``high_pass`` / ``hf_correlation``: correlation of SR's high-pass with the noise-free image's (structure,
  not noise);
* ``pd_metrics``: every per-image quantity of the plane; ``summarize`` their means;
* ``BaselineCurve`` / ``judge``: the baseline interpolated at a GAN's ratio and the verdict (``Verdict``).

Everything computes in float64 on SR clamped to [0, 1] (the noise baseline's output is clamped by the
metrics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.eval.metrics import per_image_metrics, psnr_from_mse
from hpc_sr.eval.physics import ARC_K, arc_mask, band_power_ratios, masked_psnr

__all__ = [
    "PD_KEYS",
    "BaselineCurve",
    "Verdict",
    "hf_correlation",
    "high_band_ratio",
    "high_pass",
    "judge",
    "noise_baseline",
    "pd_metrics",
    "summarize",
]

PD_KEYS = ("psnr", "mse", "ssim", "flux_err", "high_band_ratio", "arc_psnr", "hf_corr")
_BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)


def _check(name: str, x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected (N, 1, H, W) images, got shape {tuple(x.shape)}")


def noise_baseline(
    sr: Tensor,
    sigma: float | Tensor,
    scale: float,
    generator: torch.Generator | None = None,
    lr_scale: int | None = None,
) -> Tensor:
    """``sr + scale * sigma * N(0, 1)`` in float64 (not clamped).

    ``sigma``: a scalar, one value per image (N,) or per pixel (N, 1, H, W) (e.g. the square root of
    ``physics.noise_variance``). With ``lr_scale`` the noise of every lr_scale x lr_scale block has its mean
    removed, so ``avg_pool(out, lr_scale) == avg_pool(sr, lr_scale)`` (an LR-consistent SR stays so); the
    noise variance is then (1 - 1/lr_scale^2) of sigma^2 per pixel.
    """
    _check("noise_baseline", sr)
    if not scale >= 0:
        raise ValueError(f"noise_baseline: scale={scale} must be >= 0")
    x = sr.detach().to(torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if s.ndim == 1:
        if s.numel() not in (1, x.shape[0]):
            raise ValueError(f"noise_baseline: sigma has {s.numel()} values for {x.shape[0]} images")
        s = s.reshape(-1, 1, 1, 1)
    elif s.ndim not in (0, 4):
        raise ValueError(
            f"noise_baseline: sigma of shape {tuple(s.shape)} is not a scalar, (N,) or (N, 1, H, W)"
        )
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64, device="cpu").to(x.device) * s
    if lr_scale is not None and lr_scale > 1:
        mean = F.avg_pool2d(noise, lr_scale)
        noise = noise - F.interpolate(mean, scale_factor=lr_scale, mode="nearest")
    return x + float(scale) * noise


def high_band_ratio(sr: Tensor, hr: Tensor, lr_scale: int = 2) -> Tensor:
    """Per image (N,): total power of SR (clamped to [0, 1]) over that of HR in [1/(2 lr_scale), 1/2]
    cycles/pixel, the band above the LR Nyquist frequency (``physics.band_power_ratios``)."""
    _check("high_band_ratio", sr)
    if lr_scale < 2:
        raise ValueError(f"high_band_ratio: lr_scale={lr_scale} must be >= 2")
    s = sr.detach().to(torch.float64).clamp(0.0, 1.0)
    return band_power_ratios(s, hr.detach().to(torch.float64), ((0.5 / lr_scale, 0.5),))[:, 0]


def high_pass(img: Tensor) -> Tensor:
    """``img - blur(img)`` (float64), blur the separable 5x5 binomial [1 4 6 4 1]/16 with reflected edges."""
    _check("high_pass", img)
    x = img.detach().to(torch.float64)
    k1 = torch.tensor(_BINOMIAL5, dtype=torch.float64, device=x.device) / 16.0
    k = torch.outer(k1, k1).reshape(1, 1, 5, 5)
    return x - F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k)


def hf_correlation(sr: Tensor, clean: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pearson correlation (N,) of ``high_pass(SR clamped)`` with ``high_pass(clean)`` over the pixels of
    ``mask`` (all if None); NaN where fewer than 2 pixels or either side is constant there."""
    if sr.shape != clean.shape:
        raise ValueError(f"hf_correlation: sr {tuple(sr.shape)} and clean {tuple(clean.shape)} differ")
    a = high_pass(sr.detach().to(torch.float64).clamp(0.0, 1.0)).flatten(1)
    b = high_pass(clean).flatten(1)
    m = torch.ones_like(a) if mask is None else mask.reshape(a.shape).to(torch.float64)
    count = m.sum(1)
    c = count.clamp_min(1)[:, None]
    da = a - (a * m).sum(1, keepdim=True) / c
    db = b - (b * m).sum(1, keepdim=True) / c
    cov = (da * db * m).sum(1)
    var = (da.square() * m).sum(1) * (db.square() * m).sum(1)
    ok = (count >= 2) & (var > 0)
    return torch.where(ok, cov / var.clamp_min(1e-300).sqrt(), torch.full_like(cov, math.nan))


def pd_metrics(
    sr: Tensor,
    hr: Tensor,
    clean: Tensor,
    noise_rms: Tensor | float,
    lr_scale: int = 2,
    arc_k: float = ARC_K,
) -> dict[str, Tensor]:
    """Per-image (N,) float64 ``PD_KEYS``: psnr, mse, ssim, flux_err (vs HR, ``metrics.per_image_metrics``),
    high_band_ratio (SR/HR), arc_psnr and hf_corr on the arc region (``clean`` above arc_k x noise_rms)."""
    if sr.shape != hr.shape or clean.shape != hr.shape:
        shapes = f"sr {tuple(sr.shape)}, hr {tuple(hr.shape)}, clean {tuple(clean.shape)}"
        raise ValueError(f"pd_metrics: {shapes} must be equal")
    rms = torch.as_tensor(noise_rms, dtype=torch.float64, device=clean.device)
    mask = arc_mask(clean, arc_k * rms)
    out = {k: v.to(torch.float64) for k, v in per_image_metrics(sr, hr).items()}
    out["high_band_ratio"] = high_band_ratio(sr, hr, lr_scale)
    out["arc_psnr"] = masked_psnr(sr, hr, mask)
    out["hf_corr"] = hf_correlation(sr, clean, mask)
    return out


def summarize(per_image: Mapping[str, Tensor]) -> dict[str, float]:
    """Means of ``pd_metrics`` values (concatenated over batches): ``psnr`` (per image), ``psnr_pooled`` (of
    the mean MSE), ``ssim``, ``mse``, ``flux_err``, ``high_band_ratio`` (geometric mean), ``arc_psnr`` and
    ``hf_corr`` (over the images where they are finite), ``n``."""
    missing = [k for k in PD_KEYS if k not in per_image]
    if missing:
        raise ValueError(f"summarize: per-image values lack {missing}")
    v = {k: per_image[k].detach().to("cpu", torch.float64).flatten() for k in PD_KEYS}

    def finite_mean(t: Tensor) -> float:
        t = t[torch.isfinite(t)]
        return float(t.mean()) if t.numel() else math.nan

    return {
        "n": int(v["psnr"].numel()),
        "psnr": float(v["psnr"].mean()),
        "psnr_pooled": float(psnr_from_mse(v["mse"].mean())),
        "ssim": float(v["ssim"].mean()),
        "mse": float(v["mse"].mean()),
        "flux_err": float(v["flux_err"].mean()),
        "high_band_ratio": math.exp(float(v["high_band_ratio"].clamp_min(1e-30).log().mean())),
        "arc_psnr": finite_mean(v["arc_psnr"]),
        "hf_corr": finite_mean(v["hf_corr"]),
    }


# ----------------------------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class BaselineCurve:
    """The noise baseline: at each noise ``scale``, its high-band ratio, PSNR and arc-region PSNR."""

    scales: tuple[float, ...]
    ratio: tuple[float, ...]
    psnr: tuple[float, ...]
    arc_psnr: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.scales)
        if n < 2 or not len(self.ratio) == len(self.psnr) == len(self.arc_psnr) == n:
            raise ValueError(
                f"BaselineCurve: needs >= 2 points and equal lengths (scales {n}, ratio {len(self.ratio)}, "
                f"psnr {len(self.psnr)}, arc_psnr {len(self.arc_psnr)})"
            )
        r = np.asarray(self.ratio, dtype=np.float64)
        if not np.all(np.isfinite(r)) or np.any(np.diff(r[np.argsort(self.scales)]) <= 0):
            raise ValueError(f"BaselineCurve: ratio {list(self.ratio)} must be finite and rise with scale")

    @classmethod
    def from_rows(cls, rows: Mapping[float, Mapping[str, float]]) -> BaselineCurve:
        """From ``{scale: summarize(...)}``."""
        s = sorted(rows)
        return cls(
            tuple(float(x) for x in s),
            tuple(float(rows[x]["high_band_ratio"]) for x in s),
            tuple(float(rows[x]["psnr"]) for x in s),
            tuple(float(rows[x]["arc_psnr"]) for x in s),
        )

    def at(self, ratio: float) -> tuple[float, float, str]:
        """(PSNR, arc PSNR, where) of the baseline at ``ratio``: linear in the ratio between points
        (where="inside"); beyond the noisiest point, extrapolated from the last two ("above"); below the
        scale-0 point (less high-band power than the PSNR model), that point's values ("below")."""
        order = np.argsort(self.ratio)
        r = np.asarray(self.ratio, dtype=np.float64)[order]
        out = []
        for ys in (self.psnr, self.arc_psnr):
            y = np.asarray(ys, dtype=np.float64)[order]
            if ratio > r[-1]:
                out.append(float(y[-1] + (y[-1] - y[-2]) / (r[-1] - r[-2]) * (ratio - r[-1])))
            else:
                out.append(float(np.interp(ratio, r, y)))
        where = "below" if ratio < r[0] else "above" if ratio > r[-1] else "inside"
        return out[0], out[1], where


@dataclass(frozen=True)
class Verdict:
    """Whether a GAN earns its place on the perception-distortion plane, with the numbers."""

    name: str
    earns: bool
    ratio: float
    psnr: float
    baseline_psnr: float
    arc_psnr: float
    baseline_arc_psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    where: str
    failures: tuple[str, ...]
    model_ratio: float = math.nan  # the PSNR model's ratio (the baseline at scale 0)

    def text(self) -> str:
        """One Markdown line: the verdict, then the comparisons it rests on."""
        head = "earns its place" if self.earns else "does not earn its place"
        where = {
            "inside": "",
            "above": " (extrapolated: above the noisiest baseline point)",
            "below": " (below the PSNR model's ratio: compared with the PSNR model)",
        }[self.where]
        line = (
            f"**{self.name}: {head}.** At high-band ratio {self.ratio:.3f}{where}, "
            f"{self.ratio / self.model_ratio:.3f} x the PSNR model's, the noise baseline has "
            f"PSNR {self.baseline_psnr:.3f} dB and arc PSNR {self.baseline_arc_psnr:.3f} dB; {self.name} has "
            f"{self.psnr:.3f} dB ({self.psnr - self.baseline_psnr:+.3f}) and {self.arc_psnr:.3f} dB "
            f"({self.arc_psnr - self.baseline_arc_psnr:+.3f}); vs bicubic PSNR {self.bicubic_psnr:.3f} dB "
            f"({self.psnr - self.bicubic_psnr:+.3f}), SSIM {self.ssim:.4f} vs {self.bicubic_ssim:.4f}."
        )
        return line + (f" Fails: {'; '.join(self.failures)}." if self.failures else "")


MIN_MOVE = 1.05  # a GAN must add >= 5 % high-band power over the PSNR model to be judged a different point


def judge(
    name: str,
    point: Mapping[str, float],
    curve: BaselineCurve,
    bicubic: Mapping[str, float],
    min_move: float = MIN_MOVE,
) -> Verdict:
    """The verdict on ``point`` (``summarize`` of a GAN): it earns its place when, at its high-band ratio,
    its PSNR and its arc-region PSNR are above the baseline's and its PSNR and SSIM are at or above
    bicubic's (``bicubic``: ``summarize`` or ``MetricAccumulator.compute`` of bicubic), and it has moved off
    the PSNR model: at least ``min_move`` x its high-band power (a GAN that stays at the PSNR model's point
    wins by hundredths of a dB that mean nothing)."""
    ratio, psnr, arc, ssim = (float(point[k]) for k in ("high_band_ratio", "psnr", "arc_psnr", "ssim"))
    b_psnr, b_arc, where = curve.at(ratio)
    bic_psnr, bic_ssim = float(bicubic["psnr"]), float(bicubic["ssim"])
    fails = []
    if not psnr > b_psnr:
        fails.append(f"PSNR {psnr:.3f} <= baseline {b_psnr:.3f} dB")
    if not arc > b_arc:
        fails.append(f"arc PSNR {arc:.3f} <= baseline {b_arc:.3f} dB")
    if not psnr >= bic_psnr:
        fails.append(f"PSNR {psnr:.3f} < bicubic {bic_psnr:.3f} dB")
    if not ssim >= bic_ssim:
        fails.append(f"SSIM {ssim:.4f} < bicubic {bic_ssim:.4f}")
    model_ratio = float(curve.ratio[int(np.argmin(curve.scales))])
    if not ratio >= min_move * model_ratio:
        fails.append(
            f"high-band power only {ratio / model_ratio:.3f} x the PSNR model's (< {min_move:g}): "
            "it stays at the PSNR model's point"
        )
    return Verdict(
        name, not fails, ratio, psnr, b_psnr, arc, b_arc, ssim, bic_psnr, bic_ssim, where, tuple(fails),
        model_ratio,
    )  # fmt: skip
