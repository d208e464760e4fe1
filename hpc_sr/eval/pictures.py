"""Side-by-side comparison pictures: LR | bicubic | SR | HR | |SR - HR| (matplotlib Agg, no pyplot state).

    img = comparison_grid(lr, sr, hr, scale=2)               # uint8 (H, W, 3)
    writer.add_image("val/compare", img, step, dataformats="HWC")
    save_comparison_png("runs/x/compare_001000.png", lr, sr, hr, scale=2, title="step 1000")

Each row is one image. The four image columns of a row share one colour scale (the min and max over them,
SR clamped to [0, 1] as in the metrics); the residual column has its own (0 to the row's max |SR - HR|).
The titles carry the per-image PSNR of bicubic and SR against HR.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from hpc_sr.atomic import atomic_open
from hpc_sr.eval.metrics import bicubic_upscale, per_image_metrics

_PANEL_INCHES = 1.9
_DPI = 80


def _rows(lr: Tensor, sr: Tensor, hr: Tensor, scale: int, max_rows: int) -> dict[str, Tensor]:
    """First ``max_rows`` images (channel 0) of each column, float32 on CPU, plus PSNRs."""
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    if sr.shape != hr.shape or lr.ndim != 4 or hr.shape[-2:] != (scale * lr.shape[-2], scale * lr.shape[-1]):
        raise ValueError(
            f"comparison picture: lr {tuple(lr.shape)}, sr {tuple(sr.shape)}, hr {tuple(hr.shape)} "
            f"do not fit scale={scale}"
        )
    k = min(max_rows, hr.shape[0])
    lr, sr, hr = (t[:k].detach().to("cpu", torch.float32) for t in (lr, sr, hr))
    bic = bicubic_upscale(lr, scale)
    return {
        "lr": F.interpolate(lr, scale_factor=scale, mode="nearest")[:, 0],
        "bicubic": bic.clamp(0, 1)[:, 0],
        "sr": sr.clamp(0, 1)[:, 0],
        "hr": hr[:, 0],
        "psnr_bicubic": per_image_metrics(bic, hr)["psnr"],
        "psnr_sr": per_image_metrics(sr, hr)["psnr"],
    }


def _figure(lr: Tensor, sr: Tensor, hr: Tensor, scale: int, max_rows: int, title: str | None) -> Figure:
    d = _rows(lr, sr, hr, scale, max_rows)
    k = d["hr"].shape[0]
    height = k * (_PANEL_INCHES + 0.2) + (0.3 if title else 0.0)
    fig = Figure(figsize=(5 * _PANEL_INCHES, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(k, 5, squeeze=False)
    for r in range(k):
        panels = [d[c][r].numpy() for c in ("lr", "bicubic", "sr", "hr")]
        vmin = float(min(p.min() for p in panels))
        vmax = float(max(p.max() for p in panels))
        if vmax <= vmin:
            vmax = vmin + 1e-6
        resid = np.abs(panels[2] - panels[3])
        names = [
            "LR (nearest)",
            f"bicubic {d['psnr_bicubic'][r]:.2f} dB",
            f"SR {d['psnr_sr'][r]:.2f} dB",
            "HR",
            f"|SR-HR| max {resid.max():.3g}",
        ]
        for c, ax in enumerate(axes[r]):
            if c < 4:
                ax.imshow(panels[c], cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(
                    resid,
                    cmap="viridis",
                    vmin=0.0,
                    vmax=max(float(resid.max()), 1e-6),
                    interpolation="nearest",
                )
            ax.set_title(names[c], fontsize=7)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def comparison_grid(lr: Tensor, sr: Tensor, hr: Tensor, scale: int, max_rows: int = 4) -> np.ndarray:
    """Render the comparison as a uint8 (H, W, 3) array (for TensorBoard ``dataformats="HWC"``)."""
    fig = _figure(lr, sr, hr, scale, max_rows, None)
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def save_comparison_png(
    path: str | os.PathLike[str],
    lr: Tensor,
    sr: Tensor,
    hr: Tensor,
    scale: int,
    max_rows: int = 4,
    title: str | None = None,
) -> Path:
    """Write the comparison as a PNG (temp file + atomic rename); returns the path."""
    path = Path(path)
    fig = _figure(lr, sr, hr, scale, max_rows, title)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI)
    return path
