"""SRGANs on the perception-distortion plane: PSNR against the high-band power ratio SR/HR, beside the trivial
baseline (the PSNR model plus Gaussian noise of the simulator's per-pixel rms at scales 0..1).

A sharper output is not a better one when the detail above the LR Nyquist frequency is mostly noise (the
deeplense_sr sets: docs/RESULTS.md). The trivial way to gain high-band power is to add noise, so a GAN is
judged against that baseline. On a simulated split (its shards carry the simulator's parameters: the
noise-free image and the noise model) the study evaluates bicubic, the PSNR model, the PSNR model + noise at
each scale, every GAN, and for reference the ceiling (the noise-free image made consistent with LR; on a
two-instrument set, whose LR reveals none of HR's noise, the noise-free image itself) and a sample of HR given
LR (the ceiling plus the noise LR does not reveal). The noise added has each LR block's mean removed (LR
consistency is kept) where LR is the block mean of HR; with --iid-noise, or on two-instrument data, it is
plain. A GAN earns its place if, at its ratio,
its PSNR and arc PSNR beat the baseline's and its PSNR and SSIM are at or above bicubic's.

    python -m hpc_sr.studies perception DATA --psnr NAME=RUN --gan NAME=RUN [--gan ...] [--limit N]
        [--scales 0,0.25,0.5,0.75,1] [--no-ema] [--out DIR]

RUN: a run directory, checkpoint, exported G.pt or pretrained name (hpc_sr.load_generator). Writes
DIR/pd.json, DIR/pd.md (table + verdicts), DIR/pd.png (the plane; arc PSNR beside) and DIR/grid.png
(LR | bicubic | PSNR model | GANs | HR | |GAN - HR| | GAN - PSNR model for the first --grid test images:
``perception_plots``).

* ``noise_baseline``: SR + scale x sigma x N(0, 1), optionally with each LR block's noise mean removed (keeps
  an LR-consistent SR consistent: what a sample of HR given LR would add to the ceiling);
* ``high_band_ratio``: power of SR over that of HR in [1/(2 s), 1/2] cycles/pixel (above the LR Nyquist);
* ``high_pass`` / ``hf_correlation``: correlation of SR's high-pass with the noise-free image's (structure,
  not noise);
* ``pd_metrics``: every per-image quantity of the plane (mean / pooled PSNR, SSIM, high-band ratio, arc-region
  PSNR: noise-free image above 3 x the background rms, HF correlation, flux error); ``summarize`` their means;
* ``BaselineCurve`` / ``judge``: the baseline interpolated at a GAN's ratio and the verdict (``Verdict``).

Everything computes in float64 on SR clamped to [0, 1] (the noise baseline's output is clamped by the
metrics).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from hpc_sr.atomic import atomic_write_text
from hpc_sr.data.shards import load_manifest
from hpc_sr.data.truth import (
    ceiling_from_clean,
    clean_images,
    mean_lr_pairs,
    noise_rms_from_params,
    noise_variance,
)
from hpc_sr.errors import HpcSrError
from hpc_sr.eval.images import check_images
from hpc_sr.eval.metrics import bicubic_upscale, per_image_metrics, psnr_from_mse
from hpc_sr.eval.morphology import ARC_K, arc_mask, masked_psnr
from hpc_sr.eval.spectra import band_power_ratios
from hpc_sr.studies.ceiling import read_split, split_preset
from hpc_sr.studies.common import (
    StudyArgumentError,
    add_data,
    add_device,
    add_limit,
    add_models,
    add_out,
    add_seed,
    fail,
    load_model,
    parse_models,
    study_parser,
    upscale,
    write_json,
)

__all__ = [
    "PD_KEYS",
    "BaselineCurve",
    "Verdict",
    "evaluate",
    "hf_correlation",
    "high_band_ratio",
    "high_pass",
    "judge",
    "main",
    "markdown",
    "noise_baseline",
    "parse_scales",
    "pd_metrics",
    "summarize",
]

PD_KEYS = ("psnr", "mse", "ssim", "flux_err", "high_band_ratio", "arc_psnr", "hf_corr")
_BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)


def noise_baseline(
    sr: Tensor,
    sigma: float | Tensor,
    scale: float,
    generator: torch.Generator | None = None,
    lr_scale: int | None = None,
) -> Tensor:
    """``sr + scale * sigma * N(0, 1)`` in float64 (not clamped).

    ``sigma``: a scalar, one value per image (N,) or per pixel (N, 1, H, W) (e.g. the square root of
    ``data.truth.noise_variance``). With ``lr_scale`` the noise of every lr_scale x lr_scale block has its
    mean removed, so ``avg_pool(out, lr_scale) == avg_pool(sr, lr_scale)`` (an LR-consistent SR stays so); the
    noise variance is then (1 - 1/lr_scale^2) of sigma^2 per pixel.
    """
    check_images("noise_baseline", sr)
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
    cycles/pixel, the band above the LR Nyquist frequency (``eval.spectra.band_power_ratios``)."""
    check_images("high_band_ratio", sr)
    if lr_scale < 2:
        raise ValueError(f"high_band_ratio: lr_scale={lr_scale} must be >= 2")
    s = sr.detach().to(torch.float64).clamp(0.0, 1.0)
    return band_power_ratios(s, hr.detach().to(torch.float64), ((0.5 / lr_scale, 0.5),))[:, 0]


def high_pass(img: Tensor) -> Tensor:
    """``img - blur(img)`` (float64), blur the separable 5x5 binomial [1 4 6 4 1]/16 with reflected edges."""
    check_images("high_pass", img)
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


# ----------------------------------------------------------------------------------------------- study
DEFAULT_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
CEILING, SAMPLE = "ceiling (reference)", "HR sample given LR (reference)"
RESERVED = ("bicubic", CEILING, SAMPLE)  # row names no model may take


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> sorted unique scales >= 0, always with 0 (the PSNR model itself)."""
    try:
        vals = {float(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise StudyArgumentError(f"--scales {text!r}: expected comma-separated numbers") from None
    if any(not (v >= 0 and math.isfinite(v)) for v in vals):
        raise StudyArgumentError(f"--scales {text!r}: every scale must be finite and >= 0")
    vals.add(0.0)
    if len(vals) < 2:
        raise StudyArgumentError(f"--scales {text!r}: needs at least one scale > 0")
    return tuple(sorted(vals))


def baseline_name(psnr_name: str, scale: float) -> str:
    return psnr_name if scale == 0 else f"{psnr_name} + noise x{scale:g}"


def evaluate(
    data: str,
    psnr: tuple[str, str],
    gans: list[tuple[str, str]],
    split: str = "test",
    limit: int = 0,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    batch: int = 16,
    seed: int = 0,
    iid_noise: bool = False,
    grid: int = 3,
    device: str = "cpu",
    ema: bool = True,
) -> dict[str, Any]:
    """Per-row summaries (``perception.summarize``), row kinds, the baseline curve, verdicts and the grid
    images (tensors, first ``grid`` images)."""
    lr_all, hr_all, params_all, scale = read_split(data, split, limit)
    preset, names = split_preset(data), list(load_manifest(data).param_names)
    models = {name: load_model(run, ema=ema, device=device) for name, run in [psnr, *gans]}
    for name, g in models.items():
        if int(g.scale) != scale:
            raise HpcSrError(f"model {name!r} upscales x{g.scale}; the data set {data} is x{scale}")
    kinds = {"bicubic": "bicubic", **{baseline_name(psnr[0], s): "baseline" for s in scales}}
    kinds.update({g: "gan" for g, _ in gans} | {CEILING: "reference", SAMPLE: "reference"})
    per: dict[str, dict[str, list[torch.Tensor]]] = {r: {k: [] for k in PD_KEYS} for r in kinds}
    pictures: dict[str, list[torch.Tensor]] = {}
    hr_size = hr_all.shape[-1]
    starts = range(0, len(lr_all), batch)
    plain_noise = False  # whether some batch's baseline noise was plain (its LR block means not removed)
    for b, i in enumerate(tqdm(starts, desc="perception-distortion", unit="batch", file=sys.stderr)):
        lr, hr, p = lr_all[i : i + batch].float(), hr_all[i : i + batch].double(), params_all[i : i + batch]
        clean = clean_images(p, preset, hr_size, names)
        sigma = noise_variance(p, clean).sqrt()
        rms = noise_rms_from_params(p)
        sr = {name: upscale(g, lr, device=device).cpu().double() for name, g in models.items()}
        ceiling = ceiling_from_clean(clean, lr, p, scale)  # no projection onto an instrument's LR
        # block means removed only where LR is the block mean of HR (two instruments: plain noise)
        lr_scale = None if iid_noise or not bool(mean_lr_pairs(p).all()) else scale
        plain_noise = plain_noise or lr_scale is None
        outs = {"bicubic": bicubic_upscale(lr, scale).double(), CEILING: ceiling}
        outs[SAMPLE] = noise_baseline(ceiling, sigma, 1.0, torch.Generator().manual_seed(seed + b), lr_scale)
        for s in scales:  # the same noise at every scale: one smooth curve
            gen = torch.Generator().manual_seed(seed + b)
            outs[baseline_name(psnr[0], s)] = noise_baseline(sr[psnr[0]], sigma, s, gen, lr_scale)
        outs.update({g: sr[g] for g, _ in gans})
        for row, out in outs.items():
            for k, v in pd_metrics(out, hr, clean, rms, scale).items():
                per[row][k].append(v.cpu())
        if i < grid:
            take = slice(0, grid - i)
            for key, t in {"lr": lr, "hr": hr, "bicubic": outs["bicubic"], **sr}.items():
                pictures.setdefault(key, []).append(t[take].cpu())
    rows = {r: summarize({k: torch.cat(v) for k, v in d.items()}) for r, d in per.items()}
    curve = BaselineCurve.from_rows({s: rows[baseline_name(psnr[0], s)] for s in scales})
    verdicts = [judge(g, rows[g], curve, rows["bicubic"]) for g, _ in gans]
    return {
        "rows": rows,
        "kinds": kinds,
        "curve": curve,
        "verdicts": verdicts,
        "pictures": {k: torch.cat(v) for k, v in pictures.items()},
        "scale": scale,
        "plain_noise": plain_noise,
    }


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def markdown(res: dict[str, Any], title: str) -> str:
    """The table (one row per output) and the verdict lines."""
    lines = [
        f"### {title}",
        "",
        "| output | PSNR mean / pooled | SSIM | high-band SR/HR | arc PSNR | HF corr (noise-free) "
        "| flux err |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in res["rows"].items():
        lines.append(
            f"| {name} | {m['psnr']:.3f} / {m['psnr_pooled']:.3f} | {m['ssim']:.4f} | "
            f"{m['high_band_ratio']:.3f} | {m['arc_psnr']:.3f} | {m['hf_corr']:.3f} | {m['flux_err']:.2e} |"
        )
    lines += ["", *[v.text() for v in res["verdicts"]], ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = study_parser("perception", __doc__ or "", prog)
    add_data(ap, "a simulated shard directory (its shards carry the simulator's parameters)")
    add_models(ap, "--psnr", "the PSNR-trained model", required=True)
    add_models(ap, "--gan", "a GAN")
    ap.add_argument("--split", default="test")
    add_limit(ap)
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    ap.add_argument("--iid-noise", action="store_true", help="plain noise (LR block means not removed)")
    ap.add_argument("--batch", type=int, default=16)
    add_seed(ap, "seed of the baseline's noise")
    ap.add_argument("--grid", type=int, default=3, help="test images in grid.png")
    ap.add_argument("--crop", type=int, default=96, help="grid.png: central crop in HR pixels (0: whole)")
    add_device(ap)
    ap.add_argument("--no-ema", action="store_true", help="a checkpoint's raw weights, not its EMA")
    add_out(ap, "pd")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.grid < 1 or a.limit < 0 or a.crop < 0:
        ap.error("--batch and --grid must be >= 1, --limit and --crop >= 0")
    try:
        (psnr,) = parse_models([a.psnr], "--psnr", reserved=RESERVED).items()
        gans = list(parse_models(a.gan, "--gan", reserved=(*RESERVED, psnr[0])).items())
        scales = parse_scales(a.scales)
    except StudyArgumentError as exc:
        ap.error(str(exc))
    from hpc_sr.studies.perception_plots import plot_grid, plot_plane  # matplotlib: only when run

    torch.set_num_threads(1)
    try:
        res = evaluate(a.data, psnr, gans, a.split, a.limit, scales, a.batch, a.seed, a.iid_noise, a.grid,
                       a.device, not a.no_ema)  # fmt: skip
    except (HpcSrError, OSError) as exc:
        return fail(ap.prog, exc)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    n = res["rows"]["bicubic"]["n"]
    noise = "iid" if res["plain_noise"] else "LR-block-mean-free"
    weights = "raw weights" if a.no_ema else "EMA weights"
    title = f"Perception-distortion, {a.split} split, {n} images ({noise} baseline noise, {weights})"
    doc = {
        "data": str(a.data), "split": a.split, "n": n, "noise": noise, "seed": a.seed, "scales": list(scales),
        "ema": not a.no_ema,
        "psnr_model": {"name": psnr[0], "run": psnr[1]}, "gans": [{"name": g, "run": r} for g, r in gans],
        "rows": {k: {"kind": res["kinds"][k], **v} for k, v in res["rows"].items()},
        "baseline": {"scales": res["curve"].scales, "high_band_ratio": res["curve"].ratio,
                     "psnr": res["curve"].psnr, "arc_psnr": res["curve"].arc_psnr},
        "verdicts": [{**v.__dict__, "failures": list(v.failures), "text": v.text()} for v in res["verdicts"]],
    }  # fmt: skip
    write_json(out / "pd.json", _json_safe(doc), indent=1)
    md = markdown(res, title)
    atomic_write_text(out / "pd.md", md)
    plot_plane(res, psnr[0], out / "pd.png")
    plot_grid(res, psnr[0], [g for g, _ in gans], out / "grid.png", a.crop)
    print(md)
    return 0
