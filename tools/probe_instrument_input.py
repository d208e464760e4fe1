"""Probe: would one generator serve every preset if it were told how blurred its LR is?

Trains one small RRDB on the train splits of several simulated sets (`hpc-sr simulate` outputs of different
presets, their per-pair parameters recorded) and scores it on each set's first ``--limit`` test images.
With the instrument input (the default) the generator gets one constant map beside LR: the FWHM of the
kernel that takes HR's PSF to LR's, ``sqrt(max(lr_psf_fwhm^2 - psf_fwhm^2, 0))`` in LR pixels / 4, and 0
where LR is the 2x2 mean of HR. It enters through the generator's noise input (``noise_channels=1``: the
same first layer, no new arch).
``--project-means`` applies the exact LR-consistency projection to the pairs whose LR is the mean.
``--no-instrument`` trains the same loop without the map (the control).

The probe came first; the toolkit now has the input (``model.g.lr_blur_input=true data.lr_blur=data``, with
its own channel, the values from ``hpc_sr.data.lr_blur``; docs/RESULTS.md). This short loop stays as a quick,
self-contained check of the idea on any simulated sets. The report: each set's gain over bicubic in mean
per-image PSNR and, with ``--robustness`` (the robustness.json of ``hpc-sr study robustness`` over the same
sets), its share of the in-domain model's gain.

    OMP_NUM_THREADS=1 python tools/probe_instrument_input.py WORK/data/deeplense_sr WORK/data/wide \\
        WORK/data/ground_space WORK/data/randomized --robustness WORK/robustness.json [--no-instrument]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.data.lensing import lr_blur_pairs
from hpc_sr.data.presets import resolve_preset
from hpc_sr.eval.metrics import bicubic_upscale, per_image_metrics
from hpc_sr.imaging import lr_projection
from hpc_sr.models.layers import BLUR_INPUT_SCALE
from hpc_sr.models.losses.pixel import pixel_loss
from hpc_sr.models.registry import GeneratorCommon, build_generator
from hpc_sr.studies.ceiling import read_split, split_preset

RRDB = {"channels": 32, "blocks": 1, "growth": 16}


def lr_blur(preset: str, params: Tensor, scale: int) -> Tensor:
    """(N,) each pair's LR blur (hpc_sr.data.lensing.lr_blur_pairs) as the network sees it (times
    BLUR_INPUT_SCALE): 0 for block-mean LR."""
    return lr_blur_pairs(params, resolve_preset(preset).pixel_scale, scale) * BLUR_INPUT_SCALE


class Probe:
    """The generator, its input map and the optional projection of block-mean pairs."""

    def __init__(self, scale: int, instrument: bool, project_means: bool) -> None:
        self.scale, self.instrument, self.project_means = scale, instrument, project_means
        self.net: nn.Module = build_generator("rrdb", RRDB, scale, GeneratorCommon(noise_channels=1))
        self.ema = copy.deepcopy(self.net).eval()

    def __call__(self, net: nn.Module, lr: Tensor, blur: Tensor) -> Tensor:
        given = blur if self.instrument else torch.zeros_like(blur)
        out = net(lr, noise=given.view(-1, 1, 1, 1).expand(-1, 1, *lr.shape[-2:]).contiguous())
        if self.project_means:
            mean_lr = (blur == 0).view(-1, 1, 1, 1)
            out = torch.where(mean_lr, lr_projection(out, lr, self.scale), out)
        return out


def crops(
    lr: Tensor, hr: Tensor, rows: Tensor, patch: int, scale: int, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Aligned random ``patch`` LR crops of ``rows`` with their HR, flipped and transposed at random."""
    side = lr.shape[-1]
    ys = torch.randint(0, side - patch + 1, (len(rows),), generator=g).tolist()
    xs = torch.randint(0, side - patch + 1, (len(rows),), generator=g).tolist()
    lo = torch.stack([lr[r, :, y : y + patch, x : x + patch] for r, y, x in zip(rows.tolist(), ys, xs)])
    hi = torch.stack([hr[r, :, scale * y : scale * (y + patch), scale * x : scale * (x + patch)]
                      for r, y, x in zip(rows.tolist(), ys, xs)])  # fmt: skip
    for dims in ((-1,), (-2,)):
        if torch.rand(1, generator=g) < 0.5:
            lo, hi = lo.flip(dims), hi.flip(dims)
    if torch.rand(1, generator=g) < 0.5:
        lo, hi = lo.transpose(-1, -2), hi.transpose(-1, -2)
    return lo, hi


def train(probe: Probe, lr: Tensor, hr: Tensor, blur: Tensor, a: argparse.Namespace) -> None:
    """``a.steps`` Adam steps (warm-up, cosine to 1 %), EMA 0.995; a line every 200 steps."""
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    opt = torch.optim.Adam(probe.net.parameters(), lr=a.lr, betas=(0.9, 0.99))
    start = time.perf_counter()
    for step in range(a.steps):
        warm = min(1.0, (step + 1) / 50)
        t = max(0, step - 50) / max(1, a.steps - 50)
        for group in opt.param_groups:
            group["lr"] = a.lr * warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
        rows = torch.randint(0, len(lr), (a.batch,), generator=g)
        lo, hi = crops(lr, hr, rows, a.patch, probe.scale, g)
        loss = pixel_loss(probe(probe.net, lo, blur[rows]), hi, a.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(probe.ema.parameters(), probe.net.parameters()):
                pe.mul_(0.995).add_(pm, alpha=0.005)
        if step % 200 == 0 or step == a.steps - 1:
            print(f"step {step + 1}/{a.steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)  # fmt: skip


def in_domain_gains(path: str | None) -> dict[str, float]:
    """{preset: the in-domain model's gain over bicubic} of a robustness study's robustness.json, where that
    gain is positive (a share of a loss says nothing)."""
    if not path:
        return {}
    table = json.loads(Path(path).read_text())["table"]
    gains = {p: float(row[p]["gain_db"]) for p, row in table.items() if p in row}
    return {p: g for p, g in gains.items() if g > 0}


@torch.no_grad()
def score(probe: Probe, root: str, limit: int) -> dict[str, float]:
    """Mean per-image PSNR of the probe's EMA generator and of bicubic on a set's first ``limit`` test
    images."""
    lr, hr, params, scale = read_split(root, "test", limit)
    blur = lr_blur(split_preset(root), params, scale)
    sr = torch.cat([probe(probe.ema, lr[k : k + 50], blur[k : k + 50]) for k in range(0, len(lr), 50)])
    model = float(per_image_metrics(sr.clamp(0, 1), hr)["psnr"].mean())
    bic = float(per_image_metrics(bicubic_upscale(lr, scale).clamp(0, 1), hr)["psnr"].mean())
    return {"psnr": model, "bicubic_psnr": bic, "gain_db": model - bic, "n": len(lr)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", help="simulated set folders (hpc-sr simulate outputs), one per preset")
    ap.add_argument("--no-instrument", dest="instrument", action="store_false", help="control: no map")
    ap.add_argument("--project-means", action="store_true", help="exact projection on block-mean pairs")
    ap.add_argument("--loss", default="psnr", choices=["mse", "rmse", "psnr"], help="pixel loss kind")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=24, help="LR patch side")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--limit", type=int, default=150, help="test images per set")
    ap.add_argument("--robustness", default=None, help="robustness.json: shares of the in-domain gains")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = [read_split(root, "train", 0) for root in a.sets]
    scale = parts[0][3]
    lr, hr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    blur = torch.cat([lr_blur(split_preset(root), p[2], scale) for root, p in zip(a.sets, parts)])
    print(f"{len(lr)} training pairs from {len(a.sets)} sets; blur map {'on' if a.instrument else 'off'} "
          f"(range {blur.min():.2f}-{blur.max():.2f}); projection of mean pairs {a.project_means}",
          flush=True)  # fmt: skip
    probe = Probe(scale, a.instrument, a.project_means)
    train(probe, lr, hr, blur, a)
    gains = in_domain_gains(a.robustness)
    results: dict[str, Any] = {}
    for root in a.sets:
        preset = split_preset(root)
        r = score(probe, root, a.limit)
        if preset in gains:
            r["share_of_in_domain"] = r["gain_db"] / gains[preset]
        results[preset] = r
        share = f" ({r['share_of_in_domain']:.0%} of the in-domain gain)" if "share_of_in_domain" in r else ""
        print(f"{preset}: {r['psnr']:.3f} dB, bicubic {r['bicubic_psnr']:.3f}, "
              f"gain {r['gain_db']:+.3f} dB{share}")  # fmt: skip
    doc = {"probe": "instrument_input", "instrument": a.instrument, "project_means": a.project_means,
           "loss": a.loss, "steps": a.steps, "sets": [str(s) for s in a.sets],
           "results": results}  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc))
    return doc


if __name__ == "__main__":
    main()
