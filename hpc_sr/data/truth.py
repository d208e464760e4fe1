"""What the simulator knows about the images it made: their truth, re-derived from the recorded parameters.

A simulated split records every image's parameters (``PARAM_NAMES``); from them and the preset come the
noise-free HR (``clean_images``), the lens centre and Einstein radius in pixels, the background noise rms and
per-pixel noise variance in HR units, and the noise-limited ceiling (``noise_ceiling_estimate``: the
noise-free HR made consistent with LR). ``simulation_truth`` bundles what the physics metrics take
(``SimTruth.as_kwargs()`` -> ``hpc_sr.eval.physics.PhysicsAccumulator.update``).

Pixel (i, j) has centre x = (j - (W-1)/2) * pixel_scale, y = (i - (H-1)/2) * pixel_scale (as the simulator);
centres here are (row, column) = (i, j) in pixels. Everything is float64 on the params' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.data.lensing import PARAM_NAMES, hr_kernels, lr_kernels, noise_free_hr
from hpc_sr.data.lensing import mean_lr_pairs as lensing_mean_lr_pairs
from hpc_sr.data.presets import INSTRUMENT_NAMES, LensPreset, resolve_preset
from hpc_sr.errors import DataError
from hpc_sr.imaging import block_residual, matching_kernels

__all__ = [
    "SimTruth",
    "ceiling_from_clean",
    "clean_images",
    "lens_centre_pixels",
    "lr_model_kernels",
    "mean_lr_pairs",
    "noise_ceiling_estimate",
    "noise_rms_from_params",
    "noise_variance",
    "simulation_truth",
    "theta_e_pixels",
]

_P = {name: i for i, name in enumerate((*PARAM_NAMES, *INSTRUMENT_NAMES))}
_KNOWN_LAYOUTS = (list(PARAM_NAMES), [*PARAM_NAMES, *INSTRUMENT_NAMES])


def _check_params(params: Tensor, param_names: Sequence[str] | None = None, rendered: bool = True) -> Tensor:
    """params (N, len(PARAM_NAMES)) or, with an LR instrument, (N, len(PARAM_NAMES) + len(INSTRUMENT_NAMES))
    as float64, checked (``rendered``: with their hr_peak_flux): a DataError naming what is wrong."""
    if param_names is not None and list(param_names) not in _KNOWN_LAYOUTS:
        raise DataError(
            f"param_names {list(param_names)} are not this simulator's {list(PARAM_NAMES)} (+ "
            f"{list(INSTRUMENT_NAMES)} with an LR instrument): the shards were made by another version; "
            "their noise-free images cannot be re-rendered"
        )
    if params.ndim != 2 or params.shape[1] not in (len(layout) for layout in _KNOWN_LAYOUTS):
        raise DataError(
            f"params has shape {tuple(params.shape)}; expected (N, {len(PARAM_NAMES)}) or (N, "
            f"{len(PARAM_NAMES) + len(INSTRUMENT_NAMES)}) with an LR instrument"
        )
    p = params.detach().to(torch.float64)
    if not rendered:
        return p
    peak = p[:, _P["hr_peak_flux"]]
    bad = ~(torch.isfinite(peak) & (peak > 0))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise DataError(f"params[{row}] has hr_peak_flux={float(peak[row])}; expected a finite value > 0")
    return p


def lens_centre_pixels(params: Tensor, preset: str | LensPreset, hr_size: int) -> Tensor:
    """(N, 2) float64 (row, column) of the lens centre: lens_y, lens_x (arcsec) / pixel_scale + (H-1)/2."""
    ps = resolve_preset(preset).pixel_scale
    p = _check_params(params)
    half = (hr_size - 1) / 2
    return torch.stack((p[:, _P["lens_y"]] / ps + half, p[:, _P["lens_x"]] / ps + half), dim=1)


def theta_e_pixels(params: Tensor, preset: str | LensPreset) -> Tensor:
    """Einstein radius theta_E in HR pixels (N,) float64."""
    return _check_params(params)[:, _P["theta_E"]] / resolve_preset(preset).pixel_scale


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

    ``weighting="equal"`` (``hpc_sr.studies ceiling``, the reference): every pixel of a block gets the block's
    mean residual (the orthogonal projection). ``"variance"``: pixel p gets s^2 r v_p / sum_block(v), v the
    noise variance (``noise_variance``): the conditional mean of Gaussian noise given its block mean, a
    slightly higher ceiling. The projection holds where LR is the scale x scale mean of HR (the simulator's
    ``lr_mode="mean"``): the error is then only the HR noise that LR does not reveal. Pairs whose LR comes
    from an instrument of its own (params with INSTRUMENT_NAMES and lr_psf_fwhm > 0) reveal nothing of the
    HR noise: their ceiling is the noise-free HR itself.
    """
    if lr.ndim != 4 or lr.shape[1] != 1:
        raise ValueError(
            f"noise_ceiling_estimate: expected (N, 1, H, W) LR images, got shape {tuple(lr.shape)}"
        )
    if weighting not in ("equal", "variance"):
        raise ValueError(f"weighting={weighting!r} is not 'equal' or 'variance'")
    clean = clean_images(params.to(lr.device), preset, lr.shape[-1] * scale, param_names)
    if clean.shape[-2] != lr.shape[-2] * scale:
        raise DataError(f"lr {tuple(lr.shape)} is not square; the simulator renders square images")
    return ceiling_from_clean(clean, lr, params, scale, weighting)


def ceiling_from_clean(
    clean: Tensor, lr: Tensor, params: Tensor, scale: int, weighting: str = "equal"
) -> Tensor:
    """``noise_ceiling_estimate`` from the noise-free HR already rendered (``clean_images``)."""
    residual = block_residual(clean, lr.to(clean.device, torch.float64), scale)
    mean_pairs = mean_lr_pairs(params).to(residual.device)
    residual = residual * mean_pairs.reshape(-1, 1, 1, 1)  # instrument LR reveals no HR noise: no projection
    if weighting == "equal":  # imaging.lr_projection(clean, lr, scale)
        return clean + residual
    v = noise_variance(params, clean)
    return clean + v / F.interpolate(F.avg_pool2d(v, scale), scale_factor=scale, mode="nearest") * residual


def mean_lr_pairs(params: Tensor) -> Tensor:
    """(N,) bool: whether each pair's LR is the block mean of its HR (every pair without an LR instrument;
    with one, the pairs it left as means: lr_psf_fwhm 0)."""
    return lensing_mean_lr_pairs(_check_params(params, rendered=False))


def lr_model_kernels(params: Tensor, preset: str | LensPreset, scale: int) -> Tensor | None:
    """(N, K, K) float64 kernels on the HR grid that turn an image at the HR PSF into the LR instrument's
    view (``imaging.instrument_view(x, kernels, scale)`` predicts LR from an HR-like x): the LR PSF, with its
    misalignment, matched from the HR PSF (``imaging.matching_kernels``); a delta for pairs whose LR is the
    block mean of HR. None when no pair has an LR instrument (the block mean is the whole LR model)."""
    p = _check_params(params, rendered=False)
    mean_pairs = mean_lr_pairs(p)
    if bool(mean_pairs.all()):
        return None
    ps = resolve_preset(preset).pixel_scale
    k_lr, k_hr = lr_kernels(p, ps, scale), hr_kernels(p, ps)
    if k_hr.shape[-1] > k_lr.shape[-1]:
        pad = (k_hr.shape[-1] - k_lr.shape[-1]) // 2
        k_lr = F.pad(k_lr, (pad, pad, pad, pad))
    out = matching_kernels(k_hr, k_lr)
    delta = torch.zeros_like(out[0])
    delta[delta.shape[0] // 2, delta.shape[1] // 2] = 1.0
    out[mean_pairs] = delta
    return out


@dataclass(frozen=True)
class SimTruth:
    """What a simulated split knows beyond HR: noise-free image, lens centre (row, col) and theta_E in
    pixels, background noise rms in HR units."""

    clean: Tensor
    centre: Tensor
    theta_e: Tensor
    noise_rms: Tensor
    lr_kernels: Tensor | None = None  # the LR model (lr_model_kernels); None: LR is the block mean of HR

    def as_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments of ``PhysicsAccumulator.update`` / ``per_image_physics``."""
        out = {
            "clean": self.clean,
            "centre": self.centre,
            "theta_e": self.theta_e,
            "noise_rms": self.noise_rms,
        }
        if self.lr_kernels is not None:
            out["lr_kernels"] = self.lr_kernels
        return out


def simulation_truth(
    params: Tensor,
    preset: str | LensPreset,
    hr_size: int,
    param_names: Sequence[str] | None = None,
    scale: int = 2,
) -> SimTruth:
    """``SimTruth`` of simulated images from their recorded params (N, len(PARAM_NAMES) [+ instrument])."""
    return SimTruth(
        clean=clean_images(params, preset, hr_size, param_names),
        centre=lens_centre_pixels(params, preset, hr_size),
        theta_e=theta_e_pixels(params, preset),
        noise_rms=noise_rms_from_params(params),
        lr_kernels=lr_model_kernels(params, preset, scale),
    )
