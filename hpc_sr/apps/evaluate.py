"""`hpc-sr evaluate`: a generator (checkpoint, run dir, exported G.pt) and bicubic on one split, side by side.

Evaluation follows the DeepLense protocol: per image, data_range 1, SR clamped to [0, 1]; mean per-image PSNR,
pooled-MSE PSNR, SSIM, MSE, relative flux error; bicubic on the same images. Under torchrun the split is
sharded across ranks (indices rank::world) and the sums are all-reduced (hpc_sr.eval.loop), so the result is
exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from hpc_sr.atomic import atomic_write_text
from hpc_sr.dist import env as dist_env
from hpc_sr.errors import DataError
from hpc_sr.eval.loop import evaluate_batches
from hpc_sr.models.ensemble import self_ensemble
from hpc_sr.train.checkpoint import load_generator


def format_table(result: dict[str, Any]) -> str:
    """A small fixed-width table: model vs bicubic."""
    rows = [("", "PSNR", "PSNR pooled", "SSIM", "MSE", "flux err")]
    for name in ("model", "bicubic"):
        m = result[name]
        rows.append(
            (
                name,
                f"{m['psnr']:.3f}",
                f"{m['psnr_pooled']:.3f}",
                f"{m['ssim']:.4f}",
                f"{m['mse']:.3e}",
                f"{m['flux_err']:.3e}",
            )
        )
    gain = result["model"]["psnr"] - result["bicubic"]["psnr"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines + [f"n = {result['n']} images, gain over bicubic {gain:+.3f} dB (mean PSNR)"])


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    json_out: str | Path | None = None,
    save_images: int = 0,
    images_dir: str | Path | None = None,
    batch_size: int = 16,
    ema: bool = True,
    ensemble: bool = False,
    limit: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a generator and bicubic on one split of a shard directory; returns the JSON-able result."""
    from hpc_sr.data.dataset import ShardDataset

    env = dist_env.DistEnv.from_environment()
    device = dist_env.select_device(env)
    started_dist = env.distributed and not torch.distributed.is_initialized()
    finished = False
    dist_env.init_distributed(env, device)
    try:
        model, payload = load_generator(checkpoint, ema=ema)
        model.to(device)
        scale = int(payload["scale"])
        dataset = ShardDataset(data, split=split, scale=scale)
        n = len(dataset) if not limit else min(limit, len(dataset))
        if n == 0:
            raise DataError(f"{data}: split {split!r} is empty")
        loader = DataLoader(Subset(dataset, list(range(env.rank, n, env.world_size))), batch_size=batch_size)
        if images_dir is None:
            images_dir = Path(json_out).parent / "images" if json_out else Path("eval_images")
        images_dir = Path(images_dir)
        saved = 0

        def save_pictures(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
            nonlocal saved
            if not env.is_main or saved >= save_images:
                return
            from hpc_sr.eval.pictures import save_comparison_png

            k = min(4, save_images - saved, lr.shape[0])
            save_comparison_png(
                images_dir / f"{split}_{saved:04d}.png",
                lr[:k].cpu(),
                sr[:k].cpu(),
                hr[:k].cpu(),
                scale=scale,
                max_rows=k,
                title=f"{Path(str(checkpoint)).name} on {split}",
            )
            saved += k

        def predict(lr: torch.Tensor) -> torch.Tensor:
            return self_ensemble(model, lr) if ensemble else model(lr)

        bar = tqdm(loader, desc=f"evaluate {split}", disable=quiet or not env.is_main, unit="batch")
        res = evaluate_batches(predict, bar, scale, device, on_batch=save_pictures)
        result = {
            "n": res.model["n"],
            "model": res.model,
            "bicubic": res.bicubic,
            "checkpoint": str(checkpoint),
            "data": str(data),
            "split": split,
            "ema": ema,
            "self_ensemble": ensemble,
            "step": payload.get("step"),
        }
        if env.is_main:
            if not quiet:
                print(format_table(result))
                if saved:
                    print(f"comparison grids: {images_dir}/")
            if json_out:
                atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
        finished = True
        return result
    finally:
        if started_dist:
            dist_env.shutdown_distributed(wait_for_peers=finished)
