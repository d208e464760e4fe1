"""Each pair's LR blur: what a generator with ``model.g.lr_blur_input`` is told beside its LR.

The LR blur of a pair is the FWHM, in LR pixels, of the Gaussian that takes HR's PSF to LR's
(``sqrt(max(fwhm_LR^2 - fwhm_HR^2, 0))``), and 0 where LR is the block mean of HR. One model told this
serves sharp (DeepLense-like) and seeing-blurred (ground-to-space) LR alike; survey images come with a PSF
model, so a user knows it at upscale time.

``data.lr_blur`` says where the values come from:

- ``""``: none (the default; a generator without the input);
- ``"data"``: the set's own, per pair: its ``lr_blur`` rows (``hpc-sr pack`` with an ``lr_blur.csv``, or
  ``tools/export_deeplense.py`` sets), else a simulated set's instrument parameters, else 0 for a set whose
  LR is the block mean of HR (``hpc_sr.data.lr_relation``); a DataError naming the set otherwise;
- a number: that FWHM for every pair (real pairs from one instrument pair with a known seeing).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hpc_sr.config import ConfigError
from hpc_sr.data.shards import Manifest, load_manifest, read_params, read_rows
from hpc_sr.errors import DataError

__all__ = ["LR_BLUR_KEY", "attach_lr_blur", "lr_blur_setting", "pair_lr_blur", "read_lr_blur_csv"]

LR_BLUR_KEY = "lr_blur"  # the per-row dataset of a shard (float32, FWHM in LR pixels)


def lr_blur_setting(value: object) -> str | float | None:
    """``data.lr_blur`` parsed: None (off), ``"data"``, or a FWHM >= 0 in LR pixels; ConfigError otherwise."""
    text = str(value).strip() if value is not None else ""
    if text in ("", "none", "None"):
        return None
    if text == "data":
        return "data"
    try:
        fwhm = float(text)
    except ValueError:
        fwhm = math.nan
    if not math.isfinite(fwhm) or fwhm < 0:
        raise ConfigError(
            f"data.lr_blur={value!r}: expected '' (none), 'data' (the set's per-pair values) or a FWHM >= 0 "
            "in LR pixels (the kernel from HR's PSF to LR's; 0 for a block mean)"
        )
    return fwhm


def _from_params(m: Manifest, indices: np.ndarray) -> np.ndarray | None:
    """A simulated set's LR blur from its recorded instrument parameters, None if it records none."""
    from hpc_sr.data.lensing import is_simulator_layout, lr_blur_pairs
    from hpc_sr.data.presets import PRESETS, resolve_preset

    preset = m.provenance.get("preset")
    if not is_simulator_layout(m.param_names) or preset not in PRESETS:
        return None
    params = read_params(m, indices)
    if params is None:
        return None
    pixel_scale = resolve_preset(preset).pixel_scale
    return lr_blur_pairs(torch.from_numpy(params), pixel_scale, m.scale).numpy()


def pair_lr_blur(root: str | Path, indices: np.ndarray, setting: str | float) -> np.ndarray:
    """(len(indices),) float32: the LR blur of the pairs at global ``indices`` of the set at ``root`` for
    ``data.lr_blur`` = ``setting`` ("data" or a number); DataError naming the set when "data" finds none."""
    if not isinstance(setting, str):
        return np.full(len(indices), float(setting), np.float32)
    m = load_manifest(root)
    idx = np.asarray(indices, np.int64)
    found = read_rows(m, LR_BLUR_KEY, idx)
    if found is None:
        found = _from_params(m, idx)
    if found is None:
        from hpc_sr.data.lr_relation import lr_relation

        if lr_relation(root).is_mean is True:
            found = np.zeros(len(idx), np.float32)
    if found is None:
        raise DataError(
            f"{m.root}: data.lr_blur=data needs each pair's LR blur, and this set records none (no "
            f"'{LR_BLUR_KEY}' rows, no simulator instrument parameters, and its LR is not the block mean of "
            "HR): pack it with an lr_blur.csv (hpc-sr pack --help) or give one FWHM for every pair, "
            "data.lr_blur=<FWHM in LR pixels>"
        )
    found = np.asarray(found, np.float32).reshape(len(idx))
    if not np.isfinite(found).all() or (found < 0).any():
        raise DataError(f"{m.root}: '{LR_BLUR_KEY}' holds values that are not finite FWHMs >= 0")
    return found


def attach_lr_blur(lr: np.ndarray, blur: np.ndarray | float) -> np.ndarray:
    """LR (C, h, w) or (N, C, h, w) with its blur as one more constant channel (numpy twin of
    ``hpc_sr.imaging.with_lr_blur``)."""
    one = lr.ndim == 3
    x = lr[None] if one else lr
    b = np.broadcast_to(np.asarray(blur, np.float32).reshape(-1, 1, 1, 1), (x.shape[0], 1, *x.shape[-2:]))
    out = np.concatenate([x.astype(np.float32, copy=False), b], axis=1)
    return out[0] if one else out


def read_lr_blur_csv(path: str | Path) -> dict[str, float]:
    """``name,lr_blur`` rows (a header line optional): each LR file's name (as packed) -> its LR blur, the
    FWHM in LR pixels; DataError naming the file and line for a bad row."""
    path = Path(path)
    out: dict[str, float] = {}
    for k, line in enumerate(path.read_text().splitlines(), start=1):
        parts = [p.strip() for p in line.split(",")]
        if not line.strip() or (k == 1 and parts[-1] == LR_BLUR_KEY):
            continue
        try:
            name, value = parts
            fwhm = float(value)
        except ValueError:
            raise DataError(f"{path}:{k}: expected 'name,{LR_BLUR_KEY}', got {line!r}") from None
        if not math.isfinite(fwhm) or fwhm < 0:
            raise DataError(f"{path}:{k}: {LR_BLUR_KEY} must be a FWHM >= 0 in LR pixels, got {value!r}")
        out[name] = fwhm
    return out
