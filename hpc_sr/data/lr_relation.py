"""How a data set's LR relates to its HR: the ``scale x scale`` mean of HR, or an image of its own.

The LR-consistency layer and loss, the flux and LR-residual metrics and the mean-LR noise ceiling hold only
when LR is the block mean of HR (the DeepLense SR task). Two-instrument data (``ground_space``, a real
ground-to-space set) break it: LR is blurred by another PSF, misaligned and noisier. Everything that assumes
the mean asks :func:`lr_relation_of` first.

A simulated set records the relation in its manifest (``provenance.lr_relation``: from the preset); a packed
set has it measured when it is packed (``measure_lr_relation`` on its first pairs) and sets made before that
are measured on read (:func:`lr_relation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.data.presets import LensPreset, resolve_preset
from hpc_sr.errors import DataError

__all__ = [
    "MEAN_TOLERANCE",
    "LRRelation",
    "lr_relation",
    "lr_is_mean",
    "lr_relation_of",
    "measure_lr_relation",
    "preset_lr_relation",
]

# Mean |lr - avg_pool(hr)| (data units, [0, 1]) at or below which LR counts as the block mean of HR: float
# rounding and 16-bit storage stay far below; a 2-instrument look-alike measured 0.025, ground_space 0.03.
MEAN_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LRRelation:
    """Whether LR is the block mean of HR: ``is_mean`` True / False, or None for a mixture (``mean_fraction``
    of the pairs); ``residual`` is the measured mean |lr - avg_pool(hr)| when measured; ``source`` says
    where the answer comes from."""

    is_mean: bool | None
    mean_fraction: float
    residual: float | None
    source: str

    def describe(self) -> str:
        """One line for reports and error messages."""
        what = {True: "LR is the block mean of HR", False: "LR is NOT the block mean of HR"}.get(
            self.is_mean, f"LR is the block mean of HR for {self.mean_fraction:.0%} of the pairs only"
        )
        res = "" if self.residual is None else f" (mean |lr - avg_pool(hr)| = {self.residual:.3g})"
        return f"{what}{res}; {self.source}"

    def to_json(self) -> dict[str, Any]:
        return {"is_mean": self.is_mean, "mean_fraction": self.mean_fraction, "residual": self.residual,
                "source": self.source}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LRRelation:
        try:
            return cls(d["is_mean"], float(d["mean_fraction"]), d.get("residual"), str(d["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"lr_relation record {d!r} is not valid: {exc}") from exc


def preset_lr_relation(preset: str | LensPreset, lr_mode: str | None = None) -> LRRelation:
    """What a simulator preset renders: the mean (no LR instrument, or ``lr_mode="mean"``), an instrument's
    LR, or a mixture (an instrument with ``mean_fraction``)."""
    p = resolve_preset(preset)
    inst = p.lr_instrument
    if lr_mode == "independent":
        return LRRelation(False, 0.0, None, f"simulator preset {p.name!r}, lr_mode 'independent'")
    if inst is None or lr_mode == "mean":
        return LRRelation(True, 1.0, None, f"simulator preset {p.name!r}")
    frac = inst.mean_fraction
    is_mean = None if 0.0 < frac < 1.0 else frac == 1.0
    return LRRelation(is_mean, frac, None, f"simulator preset {p.name!r} (its LR instrument)")


def measure_lr_relation(hr: np.ndarray, lr: np.ndarray, scale: int, where: str) -> LRRelation:
    """Measure on pairs hr (N,[C,]H,W), lr (N,[C,]H/s,W/s): mean |lr - avg_pool(hr, s)| against
    MEAN_TOLERANCE."""
    if hr.ndim == 3:
        hr, lr = hr[:, None], lr[:, None]
    n, c, h, w = hr.shape
    if lr.shape != (n, c, h // scale, w // scale):
        raise DataError(f"{where}: lr shape {lr.shape} is not hr shape {hr.shape} / scale {scale}")
    pooled = hr.astype(np.float64).reshape(n, c, h // scale, scale, w // scale, scale).mean(axis=(3, 5))
    residual = float(np.abs(lr.astype(np.float64) - pooled).mean())
    is_mean = residual <= MEAN_TOLERANCE
    return LRRelation(is_mean, float(is_mean), residual, f"measured on {n} pairs of {where}")


def lr_relation(root: str | Path, sample: int = 64) -> LRRelation:
    """The relation of a packed set: its manifest's record, else measured on up to ``sample`` pairs of its
    first non-empty split (train, val, test)."""
    from hpc_sr.data.shards import load_manifest

    m = load_manifest(root)
    record = m.provenance.get("lr_relation")
    if isinstance(record, dict):
        return LRRelation.from_json(record)
    if m.provenance.get("command") == "simulate":  # made before the record existed: its preset says
        return preset_lr_relation(str(m.provenance.get("preset", "deeplense_sr")))
    from hpc_sr.data.dataset import ShardDataset

    split = next((name for name in ("train", "val", "test") if len(m.split.get(name, ()))), None)
    if split is None:
        raise DataError(f"{root}: no pairs in any split to measure LR against HR on")
    ds = ShardDataset(root, split=split, verify=False)
    try:
        pos = np.unique(np.linspace(0, len(ds) - 1, min(sample, len(ds))).round().astype(int))
        pairs = [ds[int(i)] for i in pos]
    finally:
        ds.close()
    lr = np.stack([p[0].numpy() for p in pairs])
    hr = np.stack([p[1].numpy() for p in pairs])
    return measure_lr_relation(hr, lr, m.scale, f"{Path(root)} ({split} split)")


def lr_relation_of(data: Any) -> LRRelation | None:
    """The relation of a training config's data (``DataConfig``): a simulate source's preset, or the packed
    set at ``data.path``; None when it cannot be known (another source, or no readable manifest)."""
    if data.source == "simulate":
        return preset_lr_relation(str(data.options.get("preset", "deeplense_sr")))
    if data.source != "shards":
        return None
    try:
        return lr_relation(data.path)
    except (DataError, OSError):
        return None


def lr_is_mean(data: Any) -> bool:
    """False only when a training config's data are known not to have LR = the block mean of HR (all pairs);
    True when they do or when it cannot be known (``lr_relation_of``)."""
    relation = lr_relation_of(data)
    return relation is None or relation.is_mean is True
