"""Run a generator over images of any size: in batches, optionally cut into overlapping tiles and blended.

    sr = upscale_array(model, lr, scale=2)                          # (N,C,h,w) -> (N,C,2h,2w)
    sr = upscale_array(model, lr, 2, tile=128, overlap=16, device="cuda")

Tiles are ``tile x tile`` LR pixels (smaller where the image is), spread evenly so that neighbours overlap by
at least ``overlap`` LR pixels. Each tile's SR output is weighted by a separable window: along a side that
has a neighbour, zero over the outer quarter of the overlap, a raised cosine over its middle half, one
beyond; along an image border, one. Neighbouring windows sum to one, so the blend is seamless; and when
a quarter of the overlap covers the model's receptive field (in LR pixels) every weighted value is exact, so
the tiled result equals the untiled one (to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from hpc_sr.models.ensemble import self_ensemble


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles (``min(tile, size)`` long) covering ``size``, overlap >= ``overlap``."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(length: int, device: torch.device) -> Tensor:
    """Rising window over an overlap ``length`` long: 0 (outer quarter), raised cosine, 1 (inner quarter)."""
    margin = length // 4
    rise = length - 2 * margin
    k = torch.arange(length, device=device, dtype=torch.float64)
    w = 0.5 - 0.5 * torch.cos(math.pi * (k - margin + 0.5) / rise)
    w = torch.where(k < margin, torch.zeros_like(w), w)
    return torch.where(k >= length - margin, torch.ones_like(w), w)


def _window_1d(starts: list[int], index: int, length: int, scale: int, device: torch.device) -> Tensor:
    """Weights (HR pixels) of tile ``index`` along one axis, given every tile's LR start."""
    w = torch.ones(length * scale, dtype=torch.float64, device=device)
    if index > 0:
        ov = (starts[index - 1] + length - starts[index]) * scale
        w[:ov] *= _ramp(ov, device)
    if index < len(starts) - 1:
        ov = (starts[index] + length - starts[index + 1]) * scale
        w[length * scale - ov :] *= _ramp(ov, device).flip(0)
    return w.float()


def _run(model: nn.Module, x: Tensor, ensemble: bool) -> Tensor:
    return self_ensemble(model, x) if ensemble else model(x)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _chunks(n: int, size: int) -> Iterator[range]:
    for lo in range(0, n, size):
        yield range(lo, min(n, lo + size))


def upscale_array(
    model: nn.Module,
    lr: Tensor,
    scale: int,
    *,
    tile: int = 0,
    overlap: int = 8,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    ensemble: bool = False,
) -> Tensor:
    """SR of ``lr`` (N, C, h, w) -> float32 (N, C', scale*h, scale*w) on ``lr``'s device.

    No grad, model in eval mode (its previous mode is restored); batches of ``batch_size`` images (or tiles)
    run on ``device`` (default: where the model's parameters are; given, the model is moved there).
    ``tile > 0`` cuts each image into overlapping tiles (see the module docstring); ``ensemble`` averages
    the 8 flips/rotations of every image or tile.
    """
    if lr.ndim != 4:
        raise ValueError(f"lr must be (N, C, h, w), got shape {tuple(lr.shape)}")
    if scale < 1 or tile < 0 or overlap < 0 or batch_size < 1:
        raise ValueError(
            f"need scale >= 1, tile >= 0, overlap >= 0, batch_size >= 1; got scale={scale}, "
            f"tile={tile}, overlap={overlap}, batch_size={batch_size}"
        )
    if tile and overlap >= tile:
        raise ValueError(f"overlap={overlap} must be smaller than tile={tile}")
    if lr.shape[0] == 0:
        return lr.new_zeros((0, lr.shape[1], scale * lr.shape[2], scale * lr.shape[3]), dtype=torch.float32)
    if device is not None:
        model.to(device)
    run_device, dtype = _model_device_dtype(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if tile <= 0:
                outs = [
                    _run(model, lr[r.start : r.stop].to(run_device, dtype), ensemble)
                    for r in _chunks(lr.shape[0], batch_size)
                ]
                return torch.cat([o.to(lr.device, torch.float32) for o in outs])
            return _tiled(model, lr, scale, tile, overlap, batch_size, run_device, dtype, ensemble)
    finally:
        model.train(was_training)


def _tiled(
    model: nn.Module,
    lr: Tensor,
    scale: int,
    tile: int,
    overlap: int,
    batch_size: int,
    run_device: torch.device,
    dtype: torch.dtype,
    ensemble: bool,
) -> Tensor:
    n, _, h, w = lr.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy = [_window_1d(ys, i, th, scale, lr.device) for i in range(len(ys))]
    wx = [_window_1d(xs, j, tw, scale, lr.device) for j in range(len(xs))]

    def hr_window(i: int, j: int) -> tuple[slice, slice]:
        return slice(ys[i] * scale, (ys[i] + th) * scale), slice(xs[j] * scale, (xs[j] + tw) * scale)

    grid = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    jobs = [(b, i, j) for b in range(n) for i, j in grid]  # every tile of every image, in image order
    norm = torch.zeros(scale * h, scale * w, dtype=torch.float32, device=lr.device)
    for i, j in grid:
        norm[hr_window(i, j)] += wy[i][:, None] * wx[j]
    acc: Tensor | None = None
    for r in _chunks(len(jobs), batch_size):
        part = jobs[r.start : r.stop]
        batch = torch.stack([lr[b, :, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for b, i, j in part])
        out = _run(model, batch.to(run_device, dtype), ensemble).to(lr.device, torch.float32)
        if acc is None:
            acc = torch.zeros(n, out.shape[1], scale * h, scale * w, dtype=torch.float32, device=lr.device)
        for k, (b, i, j) in enumerate(part):
            acc[(b, slice(None), *hr_window(i, j))] += out[k] * (wy[i][:, None] * wx[j])
    assert acc is not None  # n >= 1, so there was at least one tile
    return acc.div_(norm)
