"""Lensing presets: the priors of every sampled simulator parameter, the pixel scale and the noise model.

``PRESETS`` holds the shipped ones (``model_i``, ``deeplense_sr``, ``wide``); ``resolve_preset`` turns a name
(or a ``LensPreset`` built by hand, e.g. with ``dataclasses.replace``) into a ``LensPreset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hpc_sr.errors import DataError

__all__ = ["PRESETS", "SAMPLED_NAMES", "LensPreset", "Prior", "resolve_preset"]

# Sampled parameters, in column order (hpc_sr.data.lensing.PARAM_NAMES adds the derived hr_peak_flux).
SAMPLED_NAMES: tuple[str, ...] = (
    "theta_E", "lens_e1", "lens_e2", "gamma1", "gamma2", "lens_x", "lens_y",
    "src_amp", "src_R", "src_n", "src_e1", "src_e2", "src_x", "src_y",
    "ll_amp", "ll_R", "ll_n", "ll_e1", "ll_e2",
    "psf_fwhm", "exposure_time", "background_rms",
)  # fmt: skip


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


def resolve_preset(preset: str | LensPreset) -> LensPreset:
    """``preset`` itself if it is a ``LensPreset``, else the shipped preset of that name (a DataError naming
    it and the valid names if there is none)."""
    if isinstance(preset, LensPreset):
        return preset
    if preset not in PRESETS:
        raise DataError(f"unknown lensing preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]
