"""Physics-aware metrics of super-resolved lensing images (docs/EVALUATION.md explains each one).

``per_image_physics`` computes every metric of a batch from arrays: SR, HR, LR and, on simulated splits, the
truth the simulator knows (noise-free image, lens centre, theta_E, noise rms: hpc_sr.data.truth makes them);
``PhysicsAccumulator`` keeps their float64 sums in one tensor for an exact all-reduce. The pieces live in
``spectra`` (band powers) and ``morphology`` (arc region, LR consistency, ring radius).

Everything takes batches (N, 1, H, W) on any device and computes in float64; per-image results are (N,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hpc_sr.eval.images import TINY, check_images, per_image
from hpc_sr.eval.metrics import SumAccumulator
from hpc_sr.eval.morphology import (
    ARC_K,
    ARC_SMOOTH,
    RING_WINDOW,
    arc_mask,
    estimate_noise_rms,
    image_centre,
    lr_consistency_residual,
    masked_psnr,
    ring_radius,
)
from hpc_sr.eval.spectra import BAND_NAMES, DEFAULT_BANDS, band_power_ratios, check_bands
from hpc_sr.imaging import instrument_view

__all__ = ["PhysicsAccumulator", "omit_metric", "per_image_physics"]


def omit_metric(results: dict[str, dict[str, float]], metric: str) -> dict[str, dict[str, float]]:
    """``results`` (``{"model": {...}, "bicubic": {...}}`` of ``compute()``) without ``metric``: a figure
    that does not apply to the data (the block-mean ``lr_residual`` where LR is not the mean of HR)."""
    return {k: {m: v for m, v in d.items() if m != metric} for k, d in results.items()}


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
    lr_kernels: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every physics metric per image, float64 (N,) (band ratios (N, n_bands)); SR clamped to [0, 1].

    ``lr_residual`` is mean |LR model(SR) - LR|: the block mean of SR, or with ``lr_kernels`` (N, K, K)
    (an LR instrument of its own: hpc_sr.data.truth.lr_model_kernels) SR seen through that instrument.

    Keys: ``band_vs_hr``, ``lr_residual``, ``flux_err``, ``arc_psnr`` (NaN: empty mask), ``arc_fraction``,
    ``ring_sr``, ``ring_hr`` (pixels); with ``clean``: ``band_vs_clean``, ``flux_err_vs_clean``,
    ``ring_clean``; with ``theta_e`` (pixels): ``theta_e``. The arc mask is ``clean`` (else HR smoothed by
    ``arc_smooth`` pixels) above ``arc_k`` x ``noise_rms`` (else ``estimate_noise_rms(hr)``). Rings: the
    reference ring is the peak of ``clean``'s profile (else HR's); SR's and HR's are the peaks within
    ``ring_window`` pixels of it. The ring centre (row, col) defaults to the image centre.
    """
    for name, x in (("sr", sr), ("hr", hr)):
        check_images(name, x)
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ")
    dev = sr.device
    n, _, h, w = hr.shape
    s = sr.detach().to(torch.float64).clamp(0.0, 1.0)
    t = hr.detach().to(dev, torch.float64)
    out: dict[str, Tensor] = {
        "band_vs_hr": band_power_ratios(s, t, bands, window),
        "lr_residual": lr_consistency_residual(s, lr.to(dev), scale)
        if lr_kernels is None
        else (instrument_view(s, lr_kernels.to(dev, torch.float64), scale) - lr.to(dev, torch.float64))
        .abs()
        .flatten(1)
        .mean(1),
        "flux_err": _flux_err(s, t),
    }
    c = None if clean is None else clean.detach().to(dev, torch.float64)
    if c is not None and c.shape != hr.shape:
        raise ValueError(f"clean {tuple(c.shape)} and hr {tuple(hr.shape)} differ")
    rms = estimate_noise_rms(t) if noise_rms is None else per_image(noise_rms, n, t).flatten()
    mask = arc_mask(t, arc_k * rms, arc_smooth) if c is None else arc_mask(c, arc_k * rms)
    out["arc_psnr"] = masked_psnr(s, t, mask)
    out["arc_fraction"] = mask.to(torch.float64).flatten(1).mean(1)
    ctr = image_centre(n, h, w, dev) if centre is None else centre.detach().to(dev, torch.float64)
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
        out["theta_e"] = per_image(theta_e, n, t).flatten()
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
        self.bands = check_bands(bands)
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
        lr_kernels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Add a batch (see ``per_image_physics`` for the arguments); returns its per-image values on CPU."""
        per = per_image_physics(
            sr, hr, lr, self.scale, clean=clean, centre=centre, theta_e=theta_e, noise_rms=noise_rms,
            lr_kernels=lr_kernels,
            bands=self.bands, window=self.window, arc_k=self.arc_k, arc_smooth=self.arc_smooth,
            ring_r_min=self.ring_r_min, ring_window=self.ring_window,
        )  # fmt: skip
        per = {k: v.cpu() for k, v in per.items()}
        b = torch.zeros_like(self._sums)
        n = per["lr_residual"].shape[0]
        b[self._i["n"]] = n
        b[self._band_slice("hr")] = per["band_vs_hr"].clamp_min(TINY).log().sum(0)
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
            b[self._band_slice("clean")] = per["band_vs_clean"].clamp_min(TINY).log().sum(0)
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
