"""Post-hoc spread recalibration of a stochastic generator: one scale per brightness bin, fitted on held-out
images, applied to every sample's deviation from the centre (the mean of the samples).

    fitter = SpreadScaleFitter()
    fitter.update(raw_samples, hr)        # (n, B, C, H, W) as the generator gives them, validation images
    scales = fitter.compute()             # SpreadScales: edges, one scale per bin, the level
    calibrated = scales.apply(raw)        # centre + scale[bin] * (raw - centre)

Why it is exact: scaling every sample's deviation by s > 0 keeps their order, so the central interval of the
scaled samples is the centre plus s times the old interval's offsets (the order statistics and their linear
interpolation commute with it), and clipping the interval's ends to [0, 1] is monotone. (The calibration
table takes the interval of the samples as the generator gives them, then clips its ends, for this reason:
interpolating between already-clamped samples does not commute with the scaling.) Each pixel then needs a
smallest scale r that makes its interval cover the truth, and the interval covers a share ``level`` of a bin's
pixels exactly when s is the ``level`` quantile of r over that bin. The fitter keeps a histogram of r per bin
(log-spaced, float64 sums: exact over ranks with ``hpc_sr.eval.loop.reduce_accumulator``).

The bins are those of the centre's brightness, averaged over ``block x block`` blocks. ``block=1`` (what
``hpc-sr evaluate --recalibrate-on`` fits) bins each pixel as the calibration table does, so every table bin
is calibrated on the fitting images; a scaled sample is then LR-consistent only where the scale is the same
over a whole block. ``block=scale`` bins by the LR pixel's brightness: the scale is constant on each block,
so every scaled sample keeps its block means and an exactly LR-consistent generator stays so, at the price of
faint pixels inside darker blocks taking the darker bin's scale (on the centred RRDB: faint-bin coverage 61 %
against 68 %). The sample mean is unchanged either way (the deviations still average to zero). Finer bins
than the table's three follow the spread's change with brightness more closely.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hpc_sr.eval.metrics import SumAccumulator
from hpc_sr.eval.uncertainty import LEVEL, central_interval

# block-brightness edges (data_range 1) of the fitted scales: finer than the calibration table's three bins
FIT_EDGES: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2)
# required-scale histogram: log-spaced between these (r below the first counts as the first bin, above as inf)
R_MIN, R_MAX, R_BINS = 1e-3, 1e3, 1200


@dataclass(frozen=True)
class SpreadScales:
    """Scales of the samples' deviations per block-brightness bin (``len(edges) + 1`` of them)."""

    edges: tuple[float, ...]
    scales: tuple[float, ...]
    level: float = LEVEL
    block: int = 1
    pixels: tuple[int, ...] = ()  # fitting pixels per bin (0: the bin was empty, its scale is 1)

    def __post_init__(self) -> None:
        if len(self.scales) != len(self.edges) + 1:
            raise ValueError(f"SpreadScales: {len(self.edges)} edges need {len(self.edges) + 1} scales, "
                             f"got {len(self.scales)}")
        bad = [s for s in self.scales if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ValueError(f"SpreadScales: scales must be finite and > 0, got {bad}")

    def scale_map(self, centre: Tensor) -> Tensor:
        """The per-pixel scale for a centre image (B, C, H, W): constant on each ``block x block`` block."""
        return _block_values(centre, self.block, torch.tensor(self.scales, dtype=centre.dtype,
                                                               device=centre.device), self.edges)

    def apply(self, raw: Tensor) -> Tensor:
        """``raw`` samples (n, B, C, H, W) with their deviations from the sample mean scaled per bin."""
        centre = raw.mean(0)
        return centre + self.scale_map(centre) * (raw - centre)

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, object], where: str = "spread scales") -> SpreadScales:
        try:
            return cls(
                edges=tuple(float(v) for v in d["edges"]),  # type: ignore[union-attr]
                scales=tuple(float(v) for v in d["scales"]),  # type: ignore[union-attr]
                level=float(d.get("level", LEVEL)),  # type: ignore[arg-type]
                block=int(d.get("block", 1)),  # type: ignore[call-overload]
                pixels=tuple(int(v) for v in d.get("pixels", ())),  # type: ignore[union-attr]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a spread-scales record ({exc}); expected edges and "
                             "scales") from None

    @classmethod
    def load(cls, path: str | Path) -> SpreadScales:
        """From a JSON file: the record itself or an evaluate result holding it under ``spread_scales``."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read spread scales ({exc})") from None
        if isinstance(d, dict) and isinstance(d.get("spread_scales"), dict):
            d = d["spread_scales"]
        if not isinstance(d, dict):
            raise ValueError(f"{path}: not a spread-scales record; expected a JSON object with edges "
                             "and scales")
        return cls.from_dict(d, where=str(path))


def _block_values(centre: Tensor, block: int, values: Tensor, edges: Sequence[float]) -> Tensor:
    """``values[bin]`` per pixel, the bin of each block's mean brightness (clamped to [0, 1])."""
    if centre.shape[-1] % block or centre.shape[-2] % block:
        raise ValueError(f"recalibration: image {tuple(centre.shape[-2:])} is not a multiple of block "
                         f"{block}")
    m = F.avg_pool2d(centre.clamp(0.0, 1.0), block)
    idx = torch.bucketize(m, torch.tensor(list(edges), dtype=m.dtype, device=m.device), right=True)
    return values[idx].repeat_interleave(block, -2).repeat_interleave(block, -1)


def required_scale(raw: Tensor, hr: Tensor, level: float = LEVEL) -> Tensor:
    """Per pixel, the smallest deviation scale whose clamped central ``level`` interval covers ``hr``
    (0 where it is covered at any scale, inf where no scale covers it: zero spread on the wrong side)."""
    r64, t = raw.double(), hr.double()
    centre = r64.mean(0)
    lo, hi = central_interval(r64, level)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=raw.device)
    up_gap, lo_gap = hi - centre, centre - lo
    r_up = torch.where(up_gap > 0, (t - centre) / up_gap.clamp_min(1e-300), inf)
    # HR at 0 (1): the clamped top (bottom) end covers it at any scale
    r_up = torch.where((t > centre) & (t > 0), r_up, torch.zeros_like(r_up))
    r_lo = torch.where(lo_gap > 0, (centre - t) / lo_gap.clamp_min(1e-300), inf)
    r_lo = torch.where((t < centre) & (t < 1), r_lo, torch.zeros_like(r_lo))
    return torch.maximum(r_up, r_lo)


class SpreadScaleFitter(SumAccumulator):
    """Histograms of :func:`required_scale` per block-brightness bin; ``compute()``: the scales."""

    def __init__(self, edges: Sequence[float] = FIT_EDGES, level: float = LEVEL, block: int = 1) -> None:
        if list(edges) != sorted(edges):
            raise ValueError(f"bin edges {list(edges)} must increase")
        self.edges, self.level, self.block = tuple(float(e) for e in edges), level, block
        self._bins = len(self.edges) + 1
        # per bin: [r == 0, R_BINS log bins, r > R_MAX or inf]
        self._sums = torch.zeros(self._bins, R_BINS + 2, dtype=torch.float64)

    def update(self, raw: Tensor, hr: Tensor) -> None:
        """Add one batch: ``raw`` samples (n, B, C, H, W) as the generator gives them, ``hr`` (B, C, H, W)."""
        if raw.ndim != hr.ndim + 1 or raw.shape[1:] != hr.shape:
            raise ValueError(f"SpreadScaleFitter: samples {tuple(raw.shape)} must be (n, *hr.shape), "
                             f"hr {tuple(hr.shape)}")
        hr = hr.to(raw.device)
        r = required_scale(raw, hr, self.level).flatten()
        ids = torch.arange(self._bins, dtype=torch.float64, device=raw.device)
        b = _block_values(raw.double().mean(0), self.block, ids, self.edges).flatten().long()
        pos = (torch.log(r.clamp_min(R_MIN)) - math.log(R_MIN)) / (math.log(R_MAX) - math.log(R_MIN))
        col = (pos * R_BINS).floor().clamp(0, R_BINS - 1).long() + 1
        col = torch.where(r == 0, torch.zeros_like(col), col)
        col = torch.where(r > R_MAX, torch.full_like(col, R_BINS + 1), col)
        flat = torch.zeros(self._bins * (R_BINS + 2), dtype=torch.float64, device=raw.device)
        flat.index_add_(0, b * (R_BINS + 2) + col, torch.ones_like(r))
        self._sums += flat.reshape(self._bins, R_BINS + 2).cpu()

    def compute(self) -> SpreadScales:
        """The ``level`` quantile of the required scale per bin (1 for a bin no pixel fell in)."""
        scales, pixels = [], []
        bounds = [0.0, *self.edges, 1.0]
        for i, h in enumerate(self._sums):
            total = float(h.sum())
            pixels.append(int(total))
            try:
                scales.append(_quantile_from_histogram(h, self.level) if total else 1.0)
            except ValueError as exc:
                raise ValueError(f"{exc} (brightness bin [{bounds[i]:g}, {bounds[i + 1]:g}])") from None
        return SpreadScales(self.edges, tuple(scales), self.level, self.block, tuple(pixels))


def _quantile_from_histogram(h: Tensor, q: float) -> float:
    """The ``q`` quantile of the log-binned required scales (log-linear within a bin)."""
    cdf = torch.cumsum(h, 0) / h.sum()
    k = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype)))
    if k == 0:  # most pixels are covered at any scale: the smallest scale the histogram resolves
        return R_MIN
    if k > R_BINS:
        raise ValueError(
            f"recalibration: a {q:.0%} interval needs a scale above {R_MAX:g} (the samples have no spread "
            "there); the generator cannot be recalibrated"
        )
    below = float(cdf[k - 1])
    frac = (q - below) / max(float(cdf[k]) - below, 1e-300)
    lo_log = math.log(R_MIN) + (k - 1) / R_BINS * (math.log(R_MAX) - math.log(R_MIN))
    return math.exp(lo_log + frac * (math.log(R_MAX) - math.log(R_MIN)) / R_BINS)
