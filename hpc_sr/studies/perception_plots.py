"""The pictures of the perception-distortion study (``hpc_sr.studies.perception``): the plane and the grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpc_sr.atomic import atomic_open
from hpc_sr.studies.perception import CEILING

__all__ = ["plot_grid", "plot_plane"]


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
