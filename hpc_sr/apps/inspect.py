"""`hpc-sr inspect`: what a shard directory holds, and how bicubic upsampling scores on a sample of it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.atomic import atomic_open
from hpc_sr.errors import DataError


def _load_sample(root: Path, split: str, sample: int) -> tuple[Any, np.ndarray, np.ndarray]:
    from hpc_sr.data.dataset import ShardDataset

    ds = ShardDataset(root, split=split, verify=False)
    n = min(sample, len(ds))
    pos = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int)) if n else np.zeros(0, int)
    pairs = [ds[int(i)] for i in pos]
    ds.close()
    lr = np.stack([p[0].numpy() for p in pairs])
    hr = np.stack([p[1].numpy() for p in pairs])
    return ds.manifest, lr, hr


def bicubic_metrics(lr: Any, hr: Any) -> dict[str, float]:
    """Mean per-image metrics of bicubic upsampling (F.interpolate, align_corners=False, clamp [0, 1])."""
    import torch
    import torch.nn.functional as F

    lr_t, hr_t = torch.as_tensor(lr, dtype=torch.float32), torch.as_tensor(hr, dtype=torch.float32)
    up = F.interpolate(lr_t, size=hr_t.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    try:
        from hpc_sr.eval.metrics import per_image_metrics
    except ImportError:
        per_image_metrics = None
    if per_image_metrics is not None:
        per = per_image_metrics(up, hr_t)
        return {f"bicubic_{k}": float(torch.as_tensor(v, dtype=torch.float64).mean()) for k, v in per.items()}
    mse = ((up.double() - hr_t.double()) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-20))
    return {"bicubic_psnr": float(psnr.mean()), "bicubic_mse": float(mse.mean())}


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()), "std": float(x.std())}


def inspect_dataset(root: str | Path, sample: int = 64, png: str | Path | None = None, split: str = "train",
                    quiet: bool = False) -> dict[str, Any]:
    """Counts, split sizes, value ranges and bicubic PSNR/SSIM on ``sample`` evenly spaced pairs of ``split``;
    optionally a PNG grid (LR | HR per row). Prints the report unless ``quiet``; returns it as a dict."""
    import torch
    import torch.nn.functional as F

    root = Path(root)
    m, lr, hr = _load_sample(root, split, max(1, sample))
    pooled = F.avg_pool2d(torch.from_numpy(hr), m.scale).numpy()
    report: dict[str, Any] = {
        "root": str(root),
        "count": m.count,
        "shards": len(m.shards),
        "hr_shape": list(m.hr_shape),
        "lr_shape": list(m.lr_shape),
        "scale": m.scale,
        "splits": {k: int(len(v)) for k, v in m.split.items()},
        "split_seed": m.split_seed,
        "param_names": m.param_names,
        "provenance": {k: v for k, v in m.provenance.items() if k != "skipped"},
        "sample": {"split": split, "n": len(hr), "hr": _stats(hr), "lr": _stats(lr),
                   # how LR relates to HR: ~0 when LR is the 2x2 (scale x scale) mean of HR
                   "lr_minus_mean_pooled_hr_mae": float(np.abs(lr - pooled).mean()),
                   **bicubic_metrics(lr, hr)},
    }
    from hpc_sr.data.lr_relation import measure_lr_relation

    measured = measure_lr_relation(hr, lr, m.scale, f"{root} ({split} split)")
    recorded = m.provenance.get("lr_relation")
    report["lr_relation"] = {"measured": measured.to_json(), "recorded": recorded,
                             "statement": measured.describe()}
    report["lr_blur"] = lr_blur_summary(root, m.split_indices(split))
    if png is not None:
        report["png"] = str(save_grid(lr, hr, png))
    if not quiet:
        print(format_report(report))
    return report


def format_report(r: dict[str, Any]) -> str:
    s = r["sample"]
    lines = [f"{r['root']}: {r['count']} pairs in {r['shards']} shard(s); hr {tuple(r['hr_shape'])} "
             f"lr {tuple(r['lr_shape'])} scale {r['scale']}",
             "splits: " + ", ".join(f"{k} {v}" for k, v in r["splits"].items())
             + f" (seed {r['split_seed']})",
             f"provenance: {json.dumps(r['provenance'])}",
             f"sample of {s['n']} from {s['split']}:"]
    for key in ("hr", "lr"):
        st = s[key]
        lines.append(f"  {key}: min {st['min']:.4g} max {st['max']:.4g} mean {st['mean']:.4g} "
                     f"std {st['std']:.4g}")
    lines.append(f"  |lr - avgpool(hr)| mean {s['lr_minus_mean_pooled_hr_mae']:.4g}")
    metr = {k: v for k, v in s.items() if k.startswith("bicubic_")}
    lines.append("  " + "  ".join(f"{k} {v:.4f}" if math.isfinite(v) else f"{k} {v}"
                                  for k, v in metr.items()))
    if "lr_relation" in r:
        rel = r["lr_relation"]
        lines.append(f"LR vs HR: {rel['statement']}")
        if rel["measured"]["is_mean"] is False:
            lines.append("  so the LR-consistency layer (model.g.lr_consistent) and loss (lr_consistency) "
                         "are refused for training on it (unless the generator is told each pair's LR blur); "
                         "LR-residual/flux metrics go through an LR model")
    if r.get("lr_blur"):
        lines.append(f"LR blur: {r['lr_blur']['statement']}")
    if "png" in r:
        lines.append(f"grid: {r['png']}")
    return "\n".join(lines)


def lr_blur_summary(root: Path, indices: np.ndarray) -> dict[str, Any]:
    """What ``data.lr_blur=data`` would give the pairs at ``indices``: the share of block means (0) and the
    range elsewhere, or why there is nothing (a generator told its LR's blur then needs one given value)."""
    from hpc_sr.data.lr_blur import pair_lr_blur
    from hpc_sr.errors import DataError

    try:
        blur = pair_lr_blur(root, indices, "data")
    except DataError:
        return {"recorded": False, "statement": "not recorded (no lr_blur rows, no simulated instrument): "
                "a generator told its LR's blur needs data.lr_blur=<FWHM in LR pixels>"}
    zero = blur == 0
    rest = blur[~zero]
    spread = f"; elsewhere {rest.min():.3g}-{rest.max():.3g} LR px (FWHM)" if len(rest) else ""
    return {"recorded": True, "zero_fraction": float(zero.mean()),
            "min": float(blur.min()), "max": float(blur.max()),
            "statement": f"each pair's (data.lr_blur=data): 0, a block mean, for {zero.mean():.0%} of the "
                         f"pairs{spread}"}  # fmt: skip


def save_grid(lr: np.ndarray, hr: np.ndarray, path: str | Path, rows: int = 4) -> Path:
    """Write a PNG with up to ``rows`` examples, LR | HR per row (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = min(rows, len(hr))
    if n == 0:
        raise DataError("no examples to draw")
    fig = Figure(figsize=(5, 2.5 * n))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 2, squeeze=False)
    for i in range(n):
        for j, (img, title) in enumerate(((lr[i, 0], "LR"), (hr[i, 0], "HR"))):
            ax = axes[i, j]
            ax.imshow(img, cmap="magma", vmin=0, vmax=max(float(hr[i].max()), 1e-6))
            ax.set_title(f"{title} {img.shape[0]}x{img.shape[1]}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return path
