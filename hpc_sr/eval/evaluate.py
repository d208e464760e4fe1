"""`hpc-sr evaluate` and `hpc-sr upscale`: load a generator (checkpoint or exported G.pt), run it, report.

Evaluation follows the DeepLense protocol: per image, data_range 1, SR clamped to [0, 1]; mean per-image PSNR,
pooled-MSE PSNR, SSIM, MSE, relative flux error; bicubic on the same images. Under torchrun the split is
sharded across ranks (indices rank::world) and the sums are all-reduced, so the result is exact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from hpc_sr.atomic import atomic_open, atomic_write_text
from hpc_sr.errors import DataError
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale
from hpc_sr.train import distributed as du
from hpc_sr.train.checkpoint import load_generator


def self_ensemble(model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """Average of the model over the 8 flips/rotations of the input (geometric self-ensemble, x8)."""
    outs = []
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(lr, k, dims=(-2, -1))
            x = torch.flip(x, dims=(-1,)) if flip else x
            y = model(x)
            y = torch.flip(y, dims=(-1,)) if flip else y
            outs.append(torch.rot90(y, -k, dims=(-2, -1)))
    return torch.stack(outs).mean(0)


def upscale_tensor(model: nn.Module, lr: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return self_ensemble(model, lr) if ensemble else model(lr)


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

    env = du.DistEnv.from_environment()
    device = du.select_device(env)
    started_dist = env.distributed and not torch.distributed.is_initialized()
    finished = False
    du.init_distributed(env, device)
    try:
        model, payload = load_generator(checkpoint, ema=ema)
        model.to(device)
        scale = int(payload["scale"])
        dataset = ShardDataset(data, split=split, scale=scale)
        n = len(dataset) if not limit else min(limit, len(dataset))
        if n == 0:
            raise DataError(f"{data}: split {split!r} is empty")
        loader = DataLoader(Subset(dataset, list(range(env.rank, n, env.world_size))), batch_size=batch_size)
        acc_model, acc_bic = MetricAccumulator(), MetricAccumulator()
        saved = 0
        if images_dir is None:
            images_dir = Path(json_out).parent / "images" if json_out else Path("eval_images")
        images_dir = Path(images_dir)
        bar = tqdm(loader, desc=f"evaluate {split}", disable=quiet or not env.is_main, unit="batch")
        for lr, hr in bar:
            lr, hr = lr.to(device), hr.to(device)
            sr = upscale_tensor(model, lr, ensemble)
            acc_model.update(sr, hr)
            acc_bic.update(bicubic_upscale(lr, scale), hr)
            if env.is_main and saved < save_images:
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
        for acc in (acc_model, acc_bic):
            state = acc.state().to(device)
            du.all_reduce_(state)
            acc.load_state(state.cpu())
        result = {
            "n": acc_model.n,
            "model": acc_model.compute(),
            "bicubic": acc_bic.compute(),
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
            du.shutdown_distributed(wait_for_peers=finished)


# ----------------------------------------------------------------------------------------------- upscale
def _read_image_file(path: Path) -> tuple[dict[str, np.ndarray], Any]:
    """Arrays to upscale from .npy / .npz / .fits (and what is needed to write the same format back)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}, None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, None
        if suffix in (".fits", ".fit", ".fts"):
            try:
                from astropy.io import fits
            except ImportError:
                raise DataError(f"{path}: reading FITS needs astropy (pip install 'hpc-sr[fits]')") from None
            with fits.open(path) as hdul:
                return {"": np.asarray(hdul[0].data)}, hdul[0].header.copy()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy/astropy raise many kinds
        raise DataError(f"{path}: cannot read: {exc}") from None
    raise DataError(f"{path}: unsupported file type {suffix!r} (npy, npz, fits)")


def _to_batch(arr: np.ndarray, label: str) -> torch.Tensor:
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{label}: dtype {a.dtype} is not numeric")
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None] if a.shape[0] != 1 else a[None]
    elif a.ndim != 4:
        raise DataError(f"{label}: shape {a.shape} is not an image (H,W), (1,H,W), (N,H,W) or (N,1,H,W)")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise DataError(f"{label}: contains NaN or inf")
    return t


def _like(out: torch.Tensor, original: np.ndarray) -> np.ndarray:
    """SR output (N,1,H,W) back in the input's layout and float dtype."""
    o = out.numpy()
    if original.ndim == 2:
        o = o[0, 0]
    elif original.ndim == 3:
        o = o[:, 0] if original.shape[0] != 1 or o.shape[0] != 1 else o[0]
    dtype = original.dtype if np.issubdtype(original.dtype, np.floating) else np.float32
    return o.astype(dtype)


def upscale_files(
    checkpoint: str | Path,
    out_dir: str | Path,
    inputs: list[str],
    ema: bool = True,
    ensemble: bool = False,
    clamp: bool = True,
) -> list[Path]:
    """Upscale each input file (npy, npz or FITS, any image size) into ``out_dir`` in the same format."""
    model, _ = load_generator(checkpoint, ema=ema)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in tqdm(inputs, desc="upscale", unit="file", disable=len(inputs) < 2):
        path = Path(name)
        arrays, header = _read_image_file(path)
        results = {}
        for key, arr in arrays.items():
            sr = upscale_tensor(model, _to_batch(arr, f"{path}{'[' + key + ']' if key else ''}"), ensemble)
            results[key] = _like(sr.clamp(0, 1) if clamp else sr, arr)
        target = out_dir / path.name
        with atomic_open(target, "wb") as fh:
            if path.suffix.lower() == ".npy":
                np.save(fh, results[""])
            elif path.suffix.lower() == ".npz":
                np.savez(fh, **results)
            else:
                from astropy.io import fits

                fits.PrimaryHDU(results[""], header=header).writeto(fh, output_verify="silentfix")
        written.append(target)
    print(f"wrote {len(written)} file(s) to {out_dir}", file=sys.stderr)
    return written
