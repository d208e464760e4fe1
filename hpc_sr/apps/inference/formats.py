"""File formats of survey inference: each turns an input into work units, reads a unit's LR images and
publishes its outputs atomically.

    fmt = format_for(path)                       # by extension; FORMATS lists them (hpc_sr.registry)
    units = fmt.plan(path, rel, out_dir, opts)   # raises NotAnImage for a file that holds no image
    batch = fmt.read(unit, opts)                 # ImageSet: raw (H, W) float32 images + what write needs
    paths = fmt.write(batch, results, opts)      # atomic; returns the published paths (checksummed)
    fmt.finish(units, opts)                      # once every unit of an input is done (HDF5: the output)

A unit is what one rank writes on its own: a whole file, or a row range of an HDF5 catalog (its rows written
into the input's data file, a part file published; ``finish`` turns the data file into the output).
Normalisation, the model, flux conservation and error maps are the engine's; a format only moves pixels and
metadata between files and arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpc_sr.errors import DataError
from hpc_sr.registry import Registry


class NotAnImage(DataError):
    """An input that holds no image (a catalogue table, a header-only FITS, ...): skipped with its reason."""


@dataclass(frozen=True)
class InferenceOptions:
    """What a run was asked for; ``fingerprint()`` (minus the runtime-only fields) goes into the ledger."""

    scale: int = 2
    suffix: str = "_sr"
    normalize: str = "auto"
    flux: str = "auto"
    samples: int = 0  # > 0: a stochastic generator's sample mean + calibrated sigma
    tile: int = 0
    overlap: int = 8
    ensemble: bool = False
    hdus: tuple[str, ...] = ()  # FITS: EXTNAME[,EXTVER] or index selections; () = every image HDU
    dataset: str = ""  # HDF5 catalog: the image dataset ("" = the one (N,H,W) / (N,1,H,W) dataset)
    catalog_rows: int = 1024  # rows per unit of an HDF5 catalog
    engine: str = "torch"  # torch | onnx | auto (resolved before the run: the ledger records torch or onnx)
    lr_blur: float | None = None  # a generator told its LR's blur: every input's, FWHM in LR pixels
    # runtime only (not part of the fingerprint): how, not what
    batch_size: int = 16
    device: str = "cpu"
    on_error: str = "skip"  # skip | stop
    compile: bool = False  # torch.compile the generator (CUDA: worth it for long runs)
    onnx_model: str = ""  # engine onnx: this .onnx file (its sha256 goes into the fingerprint's model)
    onnx_cache: str = ""  # engine onnx: the export cache ("" = onnx_engine.default_cache())
    durability: str = "batch"  # batch | file: outputs made durable a batch of units at a time (publish.py)

    RUNTIME = ("batch_size", "device", "on_error", "compile", "onnx_model", "onnx_cache", "durability")

    def fingerprint(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in self.RUNTIME}


@dataclass(frozen=True)
class Unit:
    """One piece of work whose output(s) one rank publishes atomically."""

    id: str  # stable across runs: the input's path relative to its spec [+ "#rows=a:b"]
    src: Path
    format: str  # registered format name
    target: Path  # the output this unit publishes (a part file for catalog rows)
    pixels: int  # LR pixels: the cost ranks balance
    detail: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class ImageSet:
    """A unit's LR images as read: raw (H, W) float32 arrays (NaN = blank) in input units, one flux mode
    each (``per-pixel`` | ``surface-brightness``), and whatever ``write`` needs (headers, layout, ids)."""

    unit: Unit
    images: list[np.ndarray]
    flux: list[str]
    labels: list[str]
    context: Any = None


@dataclass
class Results:
    """SR of an ImageSet, in input units (flux rule applied), and per image the normalisation used."""

    images: list[np.ndarray]
    sigma: list[np.ndarray] | None = None  # per-pixel standard deviation, input units (samples > 0)
    notes: list[dict[str, Any]] = field(default_factory=list)  # normalize/offset/scale/flux per image
    history: list[str] = field(default_factory=list)  # run provenance (version, arch, checkpoint, choices)
    provenance: dict[str, Any] = field(default_factory=dict)  # the same as plain values (runner.provenance)


class Format(Protocol):
    """What a registered file format implements (``@FORMATS.register(name)`` on the class).

    Optional: ``concurrent_io = True`` lets the engine run its reads and writes side by side (only for code
    that never enters ``warnings.catch_warnings``, as astropy does: that state is one for all threads).
    """

    suffixes: tuple[str, ...]  # lower-case file endings it reads (".npy", ".fits.fz", ".h5", ...)

    def plan(self, src: Path, rel: Path, out_dir: Path, opts: InferenceOptions) -> list[Unit]: ...
    def read(self, unit: Unit, opts: InferenceOptions) -> ImageSet: ...
    def write(self, images: ImageSet, results: Results, opts: InferenceOptions) -> list[Path]: ...
    def finish(self, units: list[Unit], opts: InferenceOptions) -> list[Path]: ...


FORMATS: Registry[Any] = Registry("file format", package="hpc_sr.apps.inference", noun="format")


_BY_LENGTH: dict[tuple[tuple[str, tuple[str, ...]], ...], list[tuple[str, str]]] = {}


def _suffixes() -> list[tuple[str, str]]:
    """(format, suffix) of every registered format, longest suffix first (ties: in the formats' order)."""
    key = tuple((fmt, tuple(FORMATS[fmt].cls.suffixes)) for fmt in FORMATS.names())
    found = _BY_LENGTH.get(key)
    if found is None:
        pairs = [(fmt, suffix) for fmt, suffixes in key for suffix in suffixes]
        found = _BY_LENGTH[key] = sorted(pairs, key=lambda p: -len(p[1]))
    return found


def _match(path: str | Path) -> tuple[str, str] | None:
    """(format, suffix) of the longest registered suffix that ends ``path`` (case-insensitive), or None."""
    name = os.path.basename(os.fspath(path).rstrip(os.sep)).lower()
    for fmt, suffix in _suffixes():
        if len(name) > len(suffix) and name.endswith(suffix):
            return fmt, suffix
    return None


def format_for(path: Path) -> str | None:
    """The registered format whose suffix ends ``path`` (longest match, case-insensitive), or None."""
    match = _match(path)
    return match[0] if match else None


def supported_suffixes() -> list[str]:
    """Every file ending a registered format reads, sorted (for messages)."""
    return sorted({s for fmt in FORMATS.names() for s in FORMATS[fmt].cls.suffixes})


def output_name(path: str | Path, suffix: str) -> str:
    """``a.fits.gz`` -> ``a<suffix>.fits.gz`` (the ending's case kept); DataError for an unread file type."""
    name = Path(path).name
    match = _match(name)
    if match is None:
        raise DataError(f"{path}: unsupported file type (supported: {', '.join(supported_suffixes())})")
    cut = len(name) - len(match[1])
    return f"{name[:cut]}{suffix}{name[cut:]}"


def tagged_path(target: Path, tag: str) -> Path:
    """A companion output of ``target``: ``x_sr.npy`` + ``_sigma`` -> ``x_sr_sigma.npy`` (the runner also
    removes a killed run's temporary files of these names)."""
    return target.with_name(output_name(target.name, tag))
