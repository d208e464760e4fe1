"""SRGANs on the perception-distortion plane: PSNR against the high-band power ratio SR/HR, beside the trivial
baseline (the PSNR model plus Gaussian noise of the simulator's per-pixel rms at scales 0..1).

On a simulated split (its shards carry the simulator's parameters: the noise-free image and the noise model)
it evaluates bicubic, the PSNR model, the PSNR model + noise at each scale, every GAN, and for reference the
ceiling (the noise-free image made consistent with LR) and a sample of HR given LR (the ceiling plus the
noise LR does not reveal). The noise added has each LR block's mean removed (LR consistency is kept); with
--iid-noise it is plain. Metrics (hpc_sr.eval.perception): mean / pooled PSNR, SSIM, high-band (above the LR
Nyquist) power ratio SR/HR, arc-region PSNR (noise-free image above 3 x the background rms), correlation of
the high-pass SR with the noise-free image's, flux error. A GAN earns its place if, at its ratio, its PSNR and
arc PSNR beat the baseline's and its PSNR and SSIM are at or above bicubic's.

    python tools/perception_distortion.py DATA --psnr NAME=RUN --gan NAME=RUN [--gan ...] [--limit N]
        [--scales 0,0.25,0.5,0.75,1] [--no-ema] [--out DIR]

RUN: a run directory, checkpoint, exported G.pt or pretrained name (hpc_sr.load_generator). Writes
DIR/pd.json, DIR/pd.md (table + verdicts), DIR/pd.png (the plane; arc PSNR beside) and DIR/grid.png
(LR | bicubic | PSNR model | GANs | HR | |GAN - HR| | GAN - PSNR model for the first --grid test images).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tqdm import tqdm  # noqa: E402

import hpc_sr  # noqa: E402
from hpc_sr.atomic import atomic_open, atomic_write_text  # noqa: E402
from hpc_sr.data.shards import load_manifest  # noqa: E402
from hpc_sr.errors import HpcSrError  # noqa: E402
from hpc_sr.eval.metrics import bicubic_upscale  # noqa: E402
from hpc_sr.eval.perception import PD_KEYS, BaselineCurve, judge, noise_baseline, pd_metrics, summarize  # noqa: E402
from hpc_sr.eval.physics import (  # noqa: E402
    clean_images,
    lr_consistent_projection,
    noise_rms_from_params,
    noise_variance,
)
from tools.noise_ceiling import read_split, split_preset  # noqa: E402

DEFAULT_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
CEILING, SAMPLE = "ceiling (reference)", "HR sample given LR (reference)"


def parse_named(spec: str, flag: str) -> tuple[str, str]:
    """``NAME=RUN`` -> (NAME, RUN); a bare RUN is named after itself."""
    name, sep, run = spec.partition("=")
    if not sep:
        name, run = Path(spec).name or spec, spec
    if not name or not run:
        raise ValueError(f"{flag} {spec!r}: expected NAME=RUN")
    return name, run


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> sorted unique scales >= 0, always with 0 (the PSNR model itself)."""
    try:
        vals = {float(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected comma-separated numbers") from None
    if any(not (v >= 0 and math.isfinite(v)) for v in vals):
        raise ValueError(f"--scales {text!r}: every scale must be finite and >= 0")
    vals.add(0.0)
    if len(vals) < 2:
        raise ValueError(f"--scales {text!r}: needs at least one scale > 0")
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
    models = {name: hpc_sr.load_generator(run, ema=ema, device=device) for name, run in [psnr, *gans]}
    for name, g in models.items():
        if int(g.scale) != scale:
            raise HpcSrError(f"model {name!r} upscales x{g.scale}; the data set {data} is x{scale}")
    kinds = {"bicubic": "bicubic", **{baseline_name(psnr[0], s): "baseline" for s in scales}}
    kinds.update({g: "gan" for g, _ in gans} | {CEILING: "reference", SAMPLE: "reference"})
    per: dict[str, dict[str, list[torch.Tensor]]] = {r: {k: [] for k in PD_KEYS} for r in kinds}
    pictures: dict[str, list[torch.Tensor]] = {}
    hr_size = hr_all.shape[-1]
    starts = range(0, len(lr_all), batch)
    for b, i in enumerate(tqdm(starts, desc="perception-distortion", unit="batch", file=sys.stderr)):
        lr, hr, p = lr_all[i : i + batch].float(), hr_all[i : i + batch].double(), params_all[i : i + batch]
        clean = clean_images(p, preset, hr_size, names)
        sigma = noise_variance(p, clean).sqrt()
        rms = noise_rms_from_params(p)
        sr = {name: hpc_sr.upscale(g, lr, device=device).cpu().double() for name, g in models.items()}
        ceiling = lr_consistent_projection(clean, lr, scale)
        lr_scale = None if iid_noise else scale
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


def _save(fig: Figure, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)


def plot_plane(res: dict[str, Any], psnr_name: str, path: Path) -> None:
    """PSNR vs high-band ratio (left), arc PSNR vs ratio (right): the baseline as a line, the rest points."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    rows, kinds, curve = res["rows"], res["kinds"], res["curve"]
    for ax, key, label in zip(
        fig.subplots(1, 2), ("psnr", "arc_psnr"), ("PSNR (dB)", "arc-region PSNR (dB)")
    ):
        ys = curve.psnr if key == "psnr" else curve.arc_psnr
        ax.plot(curve.ratio, ys, "-o", color="0.5", label="PSNR model + noise (baseline)", zorder=1)
        for s, x, y in zip(curve.scales, curve.ratio, ys):
            ax.annotate(f"x{s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.4")
        gan_colours = iter(["tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"] * 4)
        for name, m in rows.items():
            kind = kinds[name]
            if kind == "baseline" and name != psnr_name:
                continue
            marker, colour = {
                "bicubic": ("s", "tab:blue"),
                "baseline": ("o", "tab:green"),
                "gan": ("*", None),
                "reference": ("D", "black") if name == CEILING else ("X", "0.45"),
            }[kind]
            colour = next(gan_colours) if kind == "gan" else colour
            size = 160 if kind == "gan" else 50
            ax.scatter(
                m["high_band_ratio"], m[key], marker=marker, s=size, color=colour, label=name, zorder=3
            )
        ax.axhline(rows["bicubic"][key], color="tab:blue", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("high-band power SR / HR (above the LR Nyquist; log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("perception-distortion plane (test split)", fontsize=10)
    _save(fig, path)


def plot_grid(res: dict[str, Any], psnr_name: str, gan_names: list[str], path: Path, crop: int = 0) -> None:
    """LR | bicubic | PSNR model | GANs | HR | |GAN - HR| | GAN - PSNR model, one row per image; ``crop`` > 0
    shows the central crop x crop HR pixels."""
    pics, scale = res["pictures"], res["scale"]
    gan = gan_names[0] if gan_names else psnr_name
    cols = ["LR (nearest)", "bicubic", psnr_name, *gan_names, "HR"]
    n = pics["hr"].shape[0]
    fig = Figure(figsize=(1.9 * (len(cols) + 2), 2.0 * n + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(cols) + 2, squeeze=False)
    for r in range(n):
        imgs = [F.interpolate(pics["lr"][r : r + 1], scale_factor=scale, mode="nearest")[0, 0]]
        imgs += [pics[k][r, 0].clamp(0, 1) for k in ("bicubic", psnr_name, *gan_names)] + [pics["hr"][r, 0]]
        h, w = imgs[0].shape
        c0, c1 = (max((h - crop) // 2, 0), max((w - crop) // 2, 0)) if crop > 0 else (0, 0)
        win = (slice(c0, h - c0), slice(c1, w - c1))
        arrays = [t.double().numpy()[win] for t in imgs]
        vmin, vmax = min(a.min() for a in arrays), max(a.max() for a in arrays)
        g = pics[gan][r, 0].clamp(0, 1).double().numpy()[win]
        resid = np.abs(g - arrays[-1])
        diff = g - pics[psnr_name][r, 0].clamp(0, 1).double().numpy()[win]
        for c, (a, title) in enumerate(zip(arrays, cols)):
            axes[r][c].imshow(
                a, cmap="inferno", vmin=vmin, vmax=max(vmax, vmin + 1e-6), interpolation="nearest"
            )
            axes[r][c].set_title(title, fontsize=7)
        axes[r][-2].imshow(
            resid, cmap="viridis", vmin=0, vmax=max(resid.max(), 1e-6), interpolation="nearest"
        )
        axes[r][-2].set_title(f"|{gan} - HR| max {resid.max():.3g}", fontsize=7)
        lim = max(np.abs(diff).max(), 1e-6)
        axes[r][-1].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[r][-1].set_title(f"{gan} - {psnr_name} (+-{lim:.2g})", fontsize=7)
        for ax in axes[r]:
            ax.set_axis_off()
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a simulated shard directory (its shards carry the simulator's parameters)")
    ap.add_argument("--psnr", required=True, metavar="NAME=RUN", help="the PSNR-trained model")
    ap.add_argument("--gan", action="append", default=[], metavar="NAME=RUN", help="a GAN (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N images of the split (0: all)")
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    ap.add_argument("--iid-noise", action="store_true", help="plain noise (LR block means not removed)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the baseline's noise")
    ap.add_argument("--grid", type=int, default=3, help="test images in grid.png")
    ap.add_argument("--crop", type=int, default=96, help="grid.png: central crop in HR pixels (0: whole)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ema", action="store_true", help="a checkpoint's raw weights, not its EMA")
    ap.add_argument("--out", default="pd", help="output directory (default: pd)")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.grid < 1 or a.limit < 0 or a.crop < 0:
        ap.error("--batch and --grid must be >= 1, --limit and --crop >= 0")
    try:
        psnr = parse_named(a.psnr, "--psnr")
        gans = [parse_named(g, "--gan") for g in a.gan]
        scales = parse_scales(a.scales)
    except ValueError as exc:
        ap.error(str(exc))
    names = [psnr[0], *(g for g, _ in gans)]
    if len(set(names)) != len(names) or {"bicubic", CEILING, SAMPLE} & set(names):
        ap.error(f"model names {names} must be distinct and not 'bicubic'")
    torch.set_num_threads(1)
    try:
        res = evaluate(a.data, psnr, gans, a.split, a.limit, scales, a.batch, a.seed, a.iid_noise, a.grid,
                       a.device, not a.no_ema)  # fmt: skip
    except (HpcSrError, OSError) as exc:
        print(f"perception_distortion: error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = res["rows"]["bicubic"]["n"]
    noise = "iid" if a.iid_noise else "LR-block-mean-free"
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
    atomic_write_text(out / "pd.json", json.dumps(_json_safe(doc), indent=1) + "\n")
    md = markdown(res, title)
    atomic_write_text(out / "pd.md", md)
    plot_plane(res, psnr[0], out / "pd.png")
    plot_grid(res, psnr[0], [g for g, _ in gans], out / "grid.png", a.crop)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
