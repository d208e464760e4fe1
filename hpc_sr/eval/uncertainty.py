"""Per-pixel uncertainty of a stochastic generator (``model.g.noise_channels > 0``) from its samples.

    samples = draw_samples(g, lr, n=16, seed=0)              # (16, B, C, H, W), clamped to [0, 1]
    cal = CalibrationAccumulator(); cal.update(samples, hr)  # sums: all-reduce with eval.loop's reducer
    cal.compute()  # {"overall": {...}, "bins": [{"name": "background", "coverage": 0.67, ...}, ...]}

The central ``level`` interval of n samples runs between the order statistics at ranks (n+1)(1-level)/2 and
(n+1)(1+level)/2 (linearly interpolated): for samples and truth drawn from the same distribution the truth
falls between the k-th and j-th of n sorted samples with probability (j-k)/(n+1), so this interval covers
``level`` in expectation for any n. (The plain 16 % / 84 % quantiles of 16 samples cover only ~60 %.)

Pixels are binned by the sample mean's brightness (what the user sees, known without HR; binning by HR
conditions on the outcome, and a calibrated sampler under-covers extreme HR values by construction).
Intervals include their ends: HR is clipped at 0 as the samples are, so in the background the truth and an
interval end are often both exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hpc_sr.eval.metrics import SumAccumulator, psnr_from_mse

LEVEL = 0.68
# sample-mean brightness edges (data_range 1): background | faint | bright
BIN_EDGES: tuple[float, ...] = (0.005, 0.05)
BIN_NAMES: tuple[str, ...] = ("background", "faint", "bright")


@torch.no_grad()
def draw_samples(
    g: nn.Module,
    lr: Tensor,
    n: int,
    seed: int | torch.Generator = 0,
    clamp: bool = True,
    antithetic: bool = False,
) -> Tensor:
    """``n`` samples (n, B, C, H, W) of a stochastic generator for ``lr``, float32, clamped to [0, 1].

    The noise comes from ``seed`` (an int, or a ``torch.Generator`` on ``lr``'s device to continue), so the
    same seed gives the same samples. ``clamp=False`` keeps them as the generator gives them.
    ``antithetic``: n/2 draws z and their negatives -z (samples 2i and 2i+1), n even; for a centred
    generator (``model.g.noise_centred``) the mean of the unclamped samples is then exactly its centre.
    """
    k = int(getattr(g, "noise_channels", 0))
    if k <= 0:
        raise ValueError(
            f"draw_samples: {type(g).__name__} is deterministic (noise_channels={k}); every sample would "
            "be the same"
        )
    if n < 1:
        raise ValueError(f"draw_samples: n={n} must be >= 1")
    if antithetic and n % 2:
        raise ValueError(f"draw_samples: antithetic pairs need an even n, got {n}")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator(lr.device).manual_seed(int(seed))
    shape = (lr.shape[0], k, lr.shape[-2], lr.shape[-1])
    noises = [torch.randn(shape, generator=gen, device=lr.device, dtype=lr.dtype)
              for _ in range(n // 2 if antithetic else n)]  # fmt: skip
    if antithetic and getattr(g, "noise_centred", False) and hasattr(g, "antithetic_pairs"):
        stacked = g.antithetic_pairs(lr, torch.stack(noises)).float()  # the centre computed once
    else:
        if antithetic:
            noises = [s * z for z in noises for s in (1, -1)]
        stacked = torch.stack([g(lr, z) for z in noises]).float()
    return stacked.clamp(0.0, 1.0) if clamp else stacked


def interval_positions(n: int, level: float = LEVEL) -> tuple[float, float]:
    """0-based positions in the sorted samples of the central ``level`` interval's ends (see module doc)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    lo, hi = (n + 1) * (1 - level) / 2, (n + 1) * (1 + level) / 2
    if lo < 1 or hi > n:
        need = math.ceil(2 / (1 - level) - 1)
        raise ValueError(f"a central {level:.0%} interval needs at least {need} samples, got {n}")
    return lo - 1, hi - 1


def central_interval(samples: Tensor, level: float = LEVEL) -> tuple[Tensor, Tensor]:
    """(lower, upper) per pixel of the central ``level`` interval of ``samples`` (n, ...)."""
    n = samples.shape[0]
    lo_pos, hi_pos = interval_positions(n, level)
    s = samples.sort(0).values

    def at(pos: float) -> Tensor:
        i = min(int(math.floor(pos)), n - 2)
        f = pos - i
        return s[i] * (1 - f) + s[i + 1] * f

    return at(lo_pos), at(hi_pos)


def _bin_index(brightness: Tensor, edges: Sequence[float]) -> Tensor:
    return torch.bucketize(
        brightness, torch.tensor(list(edges), dtype=brightness.dtype, device=brightness.device), right=True
    )


def interval_coverage(
    samples: Tensor,
    hr: Tensor,
    level: float = LEVEL,
    edges: Sequence[float] = BIN_EDGES,
    names: Sequence[str] = BIN_NAMES,
) -> dict[str, object]:
    """Coverage of the central ``level`` interval of ``samples`` (n, B, C, H, W) for ``hr`` (B, C, H, W),
    overall and per sample-mean brightness bin; each with the pixel share and mean interval width.

    Also the mean per-image PSNR of the sample mean (``mean_psnr``). One batch; use
    :class:`CalibrationAccumulator` to sum over batches and ranks.
    """
    acc = CalibrationAccumulator(level, edges, names)
    acc.update(samples, hr)
    return acc.compute()


class CalibrationAccumulator(SumAccumulator):
    """Float64 sums for calibration: per bin ``[pixels, covered, width]`` (+ the overall row), and per image
    ``[images, PSNR and MSE of the sample mean, PSNR and MSE of the infinite-sample mean]`` (summed).

    The infinite-sample estimate removes the mean's own sampling noise: MSE(mean of n) - var/n per pixel,
    with the unbiased sample variance (what the sample mean of n draws costs over the distribution's mean).
    """

    def __init__(
        self, level: float = LEVEL, edges: Sequence[float] = BIN_EDGES, names: Sequence[str] = BIN_NAMES
    ) -> None:
        if len(names) != len(edges) + 1:
            raise ValueError(f"{len(edges)} bin edges need {len(edges) + 1} names, got {list(names)}")
        if list(edges) != sorted(edges):
            raise ValueError(f"bin edges {list(edges)} must increase")
        self.level, self.edges, self.names = level, tuple(edges), tuple(names)
        self._bins = len(names)
        self._sums = torch.zeros(3 * (self._bins + 1) + 5, dtype=torch.float64)

    def update(self, samples: Tensor, hr: Tensor, raw: Tensor | None = None) -> None:
        """Add one batch: ``samples`` (n, B, C, H, W) in [0, 1], ``hr`` (B, C, H, W).

        ``raw``: the same samples before their clamp to [0, 1]; the interval is then theirs with its ends
        clipped to [0, 1], and the estimate (binning and the PSNR rows) their mean, clamped (else the interval
        and the mean of ``samples``).
        """
        if samples.ndim != hr.ndim + 1 or samples.shape[1:] != hr.shape:
            raise ValueError(
                f"CalibrationAccumulator: samples {tuple(samples.shape)} must be (n, *hr.shape), "
                f"hr {tuple(hr.shape)}"
            )
        n = samples.shape[0]
        s64, hr64 = samples.detach().double(), hr.detach().double().to(samples.device)
        spread_of = s64 if raw is None else raw.detach().double()
        # the interval of the samples as the generator gives them, its ends then clipped to [0, 1] like every
        # image (interpolating between clamped samples would not commute with scaling their spread)
        lo, hi = (end.clamp(0.0, 1.0) for end in central_interval(spread_of, self.level))
        covered = ((hr64 >= lo) & (hr64 <= hi)).double()
        width = hi - lo
        mean = spread_of.mean(0).clamp_(0.0, 1.0) if raw is not None else s64.mean(0)
        idx = _bin_index(mean, self.edges).flatten()
        rows = torch.zeros(self._bins + 1, 3, dtype=torch.float64, device=samples.device)
        ones = torch.ones_like(idx, dtype=torch.float64)
        for col, v in enumerate((ones, covered.flatten(), width.flatten())):
            rows[: self._bins, col].index_add_(0, idx, v)
        rows[self._bins] = rows[: self._bins].sum(0)
        err = (mean - hr64).pow(2).flatten(1).mean(1)
        var = spread_of.var(0, unbiased=True).flatten(1).mean(1) if n > 1 else torch.zeros_like(err)
        err_inf = err - var / n
        images = torch.stack(
            [
                torch.tensor(float(hr.shape[0]), dtype=torch.float64, device=samples.device),
                psnr_from_mse(err).to(samples.device).sum(),
                err.sum(),
                psnr_from_mse(err_inf).to(samples.device).sum(),
                err_inf.sum(),
            ]
        )
        self._sums += torch.cat([rows.flatten(), images]).cpu()

    def compute(self) -> dict[str, object]:
        """``level``, ``overall`` and ``bins`` (name, range, share of pixels, coverage, mean width), and the
        sample mean's ``mean_psnr`` / ``mean_psnr_pooled``, and the same for the infinite-sample mean
        (``*_inf``; NaN when empty)."""
        rows = self._sums[: 3 * (self._bins + 1)].reshape(self._bins + 1, 3)
        n_img, psnr_sum, mse_sum, psnr_inf_sum, mse_inf_sum = (
            float(v) for v in self._sums[3 * (self._bins + 1) :]
        )
        total = float(rows[self._bins, 0])

        def row(i: int, name: str, lo: float, hi: float) -> dict[str, object]:
            px, cov, wid = (float(v) for v in rows[i])
            return {
                "name": name,
                "range": [lo, hi],
                "share": px / total if total else math.nan,
                "pixels": int(px),
                "coverage": cov / px if px else math.nan,
                "width": wid / px if px else math.nan,
            }

        bounds = [0.0, *self.edges, 1.0]
        nan = math.nan
        return {
            "level": self.level,
            "overall": row(self._bins, "all", 0.0, 1.0),
            "bins": [row(i, name, bounds[i], bounds[i + 1]) for i, name in enumerate(self.names)],
            "images": int(n_img),
            "mean_psnr": psnr_sum / n_img if n_img else nan,
            "mean_psnr_pooled": float(psnr_from_mse(mse_sum / n_img)) if n_img else nan,
            "mean_psnr_inf": psnr_inf_sum / n_img if n_img else nan,
            "mean_psnr_pooled_inf": float(psnr_from_mse(mse_inf_sum / n_img)) if n_img else nan,
        }
