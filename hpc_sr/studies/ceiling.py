"""The most any x2 SR model can gain over bicubic on a simulated split: the noise-limited ceiling.

For every image of the split, re-render HR without noise from its recorded parameters (same peak scaling),
then make it consistent with LR (add each 2x2 block's mean residual: LR is exactly the block mean of HR).
That estimate knows the noise-free sky, so its error is only the HR noise that LR does not reveal; no model
can beat it except by chance. Prints model-free metrics of bicubic, the noise-free image and the ceiling; the
last line is their JSON. The method lives in hpc_sr.data.truth (clean_images, noise_ceiling_estimate); see
docs/EVALUATION.md.

    python -m hpc_sr.studies ceiling data/deeplense_sr --split test [--limit 600] [--preset deeplense_sr]
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import h5py
import numpy as np
import torch

from hpc_sr.data.lensing import is_simulator_layout
from hpc_sr.data.shards import load_manifest
from hpc_sr.data.truth import ceiling_from_clean, clean_images
from hpc_sr.errors import DataError, HpcSrError
from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale
from hpc_sr.studies.common import add_data, add_limit, fail, study_parser

__all__ = ["DEFAULT_PRESET", "ceiling", "main", "read_split", "split_preset"]

DEFAULT_PRESET = "deeplense_sr"


def read_split(root: str, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(lr, hr, params, scale) of the first ``limit`` (0: all) images of a simulated split, in shard order;
    a DataError when the shards carry no parameters of this simulator."""
    m = load_manifest(root)
    if not is_simulator_layout(m.param_names):
        raise DataError(f"{root}: shards carry no simulator parameters of this version (param_names differ)")
    idx = m.split_indices(split)[: limit or None]
    if len(idx) == 0:
        raise DataError(f"{root}: split {split!r} is empty")
    shard, local = m.locate(idx)
    lrs, hrs, ps = [], [], []
    for s in np.unique(shard):
        rows = np.sort(local[shard == s])
        with h5py.File(m.shard_path(int(s)), "r") as f:
            lrs.append(f["lr"][rows]), hrs.append(f["hr"][rows]), ps.append(f["params"][rows])
    lr, hr, p = (torch.from_numpy(np.concatenate(a)) for a in (lrs, hrs, ps))
    return lr, hr, p, m.scale


def split_preset(root: str) -> str:
    """The preset a shard directory was simulated with (its manifest's provenance), else deeplense_sr."""
    return str(load_manifest(root).provenance.get("preset") or DEFAULT_PRESET)


def ceiling(
    root: str,
    split: str = "test",
    limit: int = 0,
    preset: str | None = None,
    batch: int = 32,
    weighting: str = "equal",
) -> dict[str, dict[str, float]]:
    """Metrics vs HR of bicubic, the noise-free HR and the ceiling (noise-free HR made LR-consistent; each
    block's residual split equally, or by noise variance with ``weighting="variance"``: see
    :func:`hpc_sr.data.truth.noise_ceiling_estimate`)."""
    lr, hr, params, scale = read_split(root, split, limit)
    preset = preset or split_preset(root)
    acc = {name: MetricAccumulator() for name in ("bicubic", "noise_free", "ceiling")}
    for i in range(0, len(lr), batch):
        lo, h, p = lr[i : i + batch], hr[i : i + batch], params[i : i + batch]
        clean = clean_images(p, preset, hr.shape[-1])  # float64, clipped to [0, 1] as HR
        acc["bicubic"].update(bicubic_upscale(lo, scale), h)
        acc["noise_free"].update(clean, h)
        # made consistent with LR where LR is the block mean of HR; an instrument's LR: clean itself
        acc["ceiling"].update(ceiling_from_clean(clean, lo, p, scale, weighting), h)
    return {name: a.compute() for name, a in acc.items()}


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = study_parser("ceiling", __doc__ or "", prog)
    add_data(ap)
    ap.add_argument("--split", default="test")
    add_limit(ap)
    ap.add_argument(
        "--preset",
        default=None,
        help=f"the preset the set was simulated with (default: the manifest's, else {DEFAULT_PRESET})",
    )
    ap.add_argument(
        "--weighting",
        default="equal",
        choices=["equal", "variance"],
        help="split each block's residual equally (the reference) or by the pixels' noise variance",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = ceiling(a.data, a.split, a.limit, a.preset, weighting=a.weighting)
    except (HpcSrError, OSError) as exc:
        return fail(ap.prog, exc)
    bic = result["bicubic"]["psnr"]
    for name, m in result.items():
        print(
            f"{name:>10}  PSNR {m['psnr']:.3f} dB ({m['psnr'] - bic:+.3f})  pooled {m['psnr_pooled']:.3f}  "
            f"SSIM {m['ssim']:.4f}  n={m['n']}"
        )
    print(json.dumps({"split": a.split, **result}))
    return 0
