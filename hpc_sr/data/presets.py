"""Lensing presets: the priors of every sampled simulator parameter, the pixel scale and the noise model.

``PRESETS`` holds the shipped ones: ``model_i``, ``deeplense_sr``, ``wide`` (LR = the 2x2 mean of HR),
``ground_space`` (LR from a ground-based instrument of its own: seeing, misalignment, more noise) and
``randomized`` (a domain-randomised mixture across and beyond all of them); ``resolve_preset`` turns a name
(or a ``LensPreset`` built by hand, e.g. with ``dataclasses.replace``) into a ``LensPreset``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from hpc_sr.errors import DataError

__all__ = [
    "INSTRUMENT_NAMES",
    "PRESETS",
    "SAMPLED_NAMES",
    "Instrument",
    "LensPreset",
    "Prior",
    "resolve_preset",
]

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


# Per-pair parameters of an LR instrument, in column order after hr_peak_flux (hpc_sr.data.lensing).
INSTRUMENT_NAMES: tuple[str, ...] = (
    "lr_psf_fwhm", "lr_psf_beta", "lr_shift_x", "lr_shift_y", "lr_exposure_time", "lr_background_rms",
)  # fmt: skip


@dataclass(frozen=True)
class Instrument:
    """The camera that observes LR in a two-instrument preset (ground-based LR of a space-based HR).

    LR pixels are ``scale`` x ``scale`` HR pixels. Per pair: a PSF of FWHM ``psf_fwhm`` (arcsec), a Moffat of
    index ``psf_beta`` with probability ``moffat_fraction`` and a Gaussian otherwise (recorded as beta 0),
    a misalignment (``shift_x``, ``shift_y``, in LR pixels: LR's content moves by +shift), Poisson noise at
    ``exposure_time`` and Gaussian background ``background_rms`` (flux per LR pixel, before the HR
    scaling). A noise-free, aligned LR pixel is the mean of the sky blurred by this PSF over its HR block.
    """

    psf_fwhm: Prior
    psf_beta: Prior = Prior(3.5, 3.5)
    moffat_fraction: float = 0.0
    shift_x: Prior = Prior(0.0, 0.0)
    shift_y: Prior = Prior(0.0, 0.0)
    exposure_time: Prior = Prior(3.0, 3.5, "log10uniform")
    background_rms: Prior = Prior(1e-2, 1e-2)
    mean_fraction: float = 0.0  # probability that a pair's LR is instead the scale x scale mean of its HR

    def __post_init__(self) -> None:
        for name in ("moffat_fraction", "mean_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"instrument {name}={getattr(self, name)} must lie in [0, 1]")
        if self.psf_fwhm.support[0] <= 0:
            raise DataError(f"instrument psf_fwhm prior {self.psf_fwhm} must stay > 0 arcsec")
        if self.moffat_fraction > 0 and self.psf_beta.support[0] <= 1.0:
            raise DataError(
                f"instrument psf_beta prior {self.psf_beta} must stay > 1 (a Moffat of finite flux)"
            )
        if self.exposure_time.support[0] <= 0:
            raise DataError(f"instrument exposure_time prior {self.exposure_time} must stay > 0")

    DRAWS = 8  # uniform draws per pair

    def draw(self, u: Tensor) -> Tensor:
        """Map uniform draws u (n, DRAWS) to the (n, len(INSTRUMENT_NAMES)) per-pair parameters; a pair whose
        LR is the mean of its HR (``mean_fraction``) has lr_psf_fwhm 0."""
        moffat = u[:, 2] < self.moffat_fraction
        beta = torch.where(moffat, self.psf_beta.transform(u[:, 1]), torch.zeros_like(u[:, 1]))
        fwhm = self.psf_fwhm.transform(u[:, 0]).masked_fill(u[:, 7] < self.mean_fraction, 0.0)
        cols = (
            fwhm, beta, self.shift_x.transform(u[:, 3]),
            self.shift_y.transform(u[:, 4]), self.exposure_time.transform(u[:, 5]),
            self.background_rms.transform(u[:, 6]),
        )  # fmt: skip
        return torch.stack(cols, dim=1)


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
    lr_instrument: Instrument | None = None  # None: LR is the 2x2 mean of HR (or lr_mode="independent")

    def __post_init__(self) -> None:
        if self.poisson not in ("gaussian", "exact"):
            raise DataError(f"preset {self.name!r}: poisson={self.poisson!r} is not 'gaussian' or 'exact'")
        if self.pixel_scale <= 0:
            raise DataError(f"preset {self.name!r}: pixel_scale={self.pixel_scale} must be > 0")

    def priors(self) -> tuple[Prior, ...]:
        """Priors in SAMPLED_NAMES order."""
        return tuple(getattr(self, n) for n in SAMPLED_NAMES)

    @property
    def lr_is_mean(self) -> bool:
        """Whether this preset's LR is the scale x scale mean of its HR (no LR instrument of its own)."""
        return self.lr_instrument is None


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

# Ground-to-space: HR from a space telescope (HST-like 0.10" PSF, deeplense_sr's lenses and noise); LR from a
# ground-based survey at twice the pixel (HSC-like seeing 0.45-0.75", Gaussian or Moffat), misaligned by up
# to half an LR pixel, with ~5x the HR noise (std, in the common units).
_GROUND_SPACE = dataclasses.replace(
    _DEEPLENSE_SR,
    name="ground_space",
    psf_fwhm=Prior(0.09, 0.11),
    lr_instrument=Instrument(
        psf_fwhm=Prior(0.45, 0.75), psf_beta=Prior(2.5, 4.5), moffat_fraction=0.5,
        shift_x=Prior(-0.5, 0.5), shift_y=Prior(-0.5, 0.5),
        exposure_time=Prior(1.0, 1.5, "log10uniform"), background_rms=Prior(0.0225, 0.0375),
    ),
)  # fmt: skip

# Domain-randomised: lenses, HR PSF and noise across and beyond every preset above; LR from its own instrument
# (seeing 0.1-0.9", either profile, misaligned, 1-10x the noise) or, for 40 % of pairs, the mean of HR.
_RANDOMIZED = LensPreset(
    name="randomized",
    pixel_scale=0.05,
    theta_E=Prior(0.5, 2.2), lens_e1=Prior(-0.4, 0.4), lens_e2=Prior(-0.4, 0.4),
    gamma1=Prior(-0.15, 0.15), gamma2=Prior(-0.15, 0.15),
    lens_x=Prior(-0.35, 0.35), lens_y=Prior(-0.35, 0.35),
    src_amp=Prior(4.0, 60.0), src_R=Prior(0.08, 0.9), src_n=Prior(0.5, 3.5),
    src_e1=Prior(-0.4, 0.4), src_e2=Prior(-0.4, 0.4), src_x=Prior(-0.7, 0.7), src_y=Prior(-0.7, 0.7),
    ll_amp=Prior(0.0, 8.0), ll_R=Prior(0.3, 1.2), ll_n=Prior(1.0, 4.0), ll_e1=Prior(-0.3, 0.3),
    ll_e2=Prior(-0.3, 0.3),
    psf_fwhm=Prior(0.05, 0.16),
    exposure_time=Prior(2.8, 4.6, "log10uniform"),
    background_rms=Prior(-3.1, -1.6, "log10uniform"),
    lr_instrument=Instrument(
        psf_fwhm=Prior(0.1, 0.9), psf_beta=Prior(2.2, 5.0), moffat_fraction=0.5,
        shift_x=Prior(-0.5, 0.5), shift_y=Prior(-0.5, 0.5),
        exposure_time=Prior(0.8, 3.0, "log10uniform"), background_rms=Prior(-2.0, -1.3, "log10uniform"),
        mean_fraction=0.4,
    ),
)  # fmt: skip

PRESETS: dict[str, LensPreset] = {
    p.name: p for p in (_MODEL_I, _DEEPLENSE_SR, _WIDE, _GROUND_SPACE, _RANDOMIZED)
}


def resolve_preset(preset: str | LensPreset) -> LensPreset:
    """``preset`` itself if it is a ``LensPreset``, else the shipped preset of that name (a DataError naming
    it and the valid names if there is none)."""
    if isinstance(preset, LensPreset):
        return preset
    if preset not in PRESETS:
        raise DataError(f"unknown lensing preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]
