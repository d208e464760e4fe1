"""``hpc-sr upscale``: upscale .npy / .npz / FITS files (or folders, or globs) with a trained generator.

    upscale_paths(model, ["data/", "extra/*.fits"], "sr/", scale=2, tile=256, device="cuda")

- Inputs: files, folders (searched recursively; sub-folders mirrored under ``out_dir``) and glob patterns.
  ``x.npy`` -> ``out_dir/x_sr.npy`` (``suffix``); the format is kept. Every output path is planned, and
  checked (two inputs writing one output, an existing output without ``overwrite``, an output that is an
  input), before anything is read; then files go one by one, each written atomically. A bad file stops the
  run with a DataError naming it; outputs already written stay.
- .npy: (H, W), (1, H, W), a stack (N, H, W) or (N, 1, H, W); .npz: every array the same way, keys kept;
  FITS (.fits/.fit/.fts, optionally .gz, or tile-compressed .fits.fz/.fz): the image HDU of
  :func:`hpc_sr.apps.fits_io.read_fits_image`.
- Values: given to the model as it was trained (``normalize="auto"`` with a model that records its training
  data's convention, ``data_values``: the raw values), or normalised into [0, 1] by a per-file guess for a
  model without a record (:func:`~hpc_sr.apps.fits_io.choose_normalization`); upscaled, restored to the
  input's units, never clipped; per-pixel units divided by scale**2 (total flux kept). Blank pixels
  (NaN/inf) are filled with the median for the model and come back blank (each as a scale x scale block).
- FITS output: WCS rescaled (with the distortion / -TAB tables it reads), BUNIT and every other card kept
  (non-standard ones byte for byte), a compressed image compressed the same way, HPCSR* cards and HISTORY
  (hpc_sr version, arch, checkpoint, choices).
"""

from __future__ import annotations

import argparse
import glob
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hpc_sr.apps import fits_io
from hpc_sr.apps.tiling import upscale_array
from hpc_sr.atomic import atomic_open
from hpc_sr.data.sources import as_image
from hpc_sr.errors import DataError, HpcSrError
from hpc_sr.version import __version__

FITS_EXTS = (".fits", ".fit", ".fts", ".fits.fz", ".fz")  # .fz: tile-compressed (fpack)
EXTS = (".npy", ".npz", *FITS_EXTS, *(e + ".gz" for e in FITS_EXTS))


# ----------------------------------------------------------------------------------------------- planning
def file_ext(path: str | Path) -> str | None:
    """The supported extension of ``path`` (``.npy``, ``.fits.gz``, ...; case-insensitive), or None."""
    name = Path(path).name.lower()
    for ext in sorted(EXTS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def output_name(path: str | Path, suffix: str) -> str:
    """``a.fits.gz`` -> ``a<suffix>.fits.gz`` (the extension's case kept)."""
    name = Path(path).name
    ext = file_ext(name)
    if ext is None:
        raise DataError(f"{path}: unsupported file type (supported: {', '.join(EXTS)})")
    return f"{name[: -len(ext)]}{suffix}{name[-len(ext) :]}"


@dataclass(frozen=True)
class Job:
    """One input file and the output it writes."""

    src: Path
    target: Path


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _expand(spec: str, out_dir: Path, suffix: str) -> Iterator[Job]:
    path = Path(spec)
    if not path.exists() and any(c in spec for c in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise DataError(f"{spec}: the pattern matches no file")
        for m in matches:
            yield from _expand_path(Path(m), out_dir, suffix, spec)
        return
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder")
    yield from _expand_path(path, out_dir, suffix, spec)


def _expand_path(path: Path, out_dir: Path, suffix: str, spec: str) -> Iterator[Job]:
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and file_ext(p) and not p.name.startswith(".") and not _is_within(p, out_dir)
        )
        if not found and spec == str(path):
            raise DataError(f"{path}: folder holds no {', '.join(EXTS)} file")
        for p in found:
            yield Job(p, out_dir / p.relative_to(path).parent / output_name(p, suffix))
    elif file_ext(path):
        yield Job(path, out_dir / output_name(path, suffix))
    elif spec == str(path):
        raise DataError(f"{path}: unsupported file type (supported: {', '.join(EXTS)})")


def plan_outputs(
    inputs: list[str], out_dir: str | Path, suffix: str = "_sr", overwrite: bool = False
) -> list[Job]:
    """Every (input, output) pair; DataError for a clash, an existing output or an output that is an input."""
    out_dir = Path(out_dir)
    if not inputs:
        raise DataError("no input given")
    jobs: list[Job] = []
    by_target: dict[Path, Job] = {}
    for spec in inputs:
        for job in _expand(str(spec), out_dir, suffix):
            key = job.target.resolve()
            if key in by_target:
                first = by_target[key].src
                if first.resolve() == job.src.resolve():
                    continue  # the same file named twice
                raise DataError(f"{first} and {job.src} would both write {job.target}")
            by_target[key] = job
            jobs.append(job)
    sources = {j.src.resolve() for j in jobs}
    for job in jobs:
        if job.target.resolve() in sources:
            raise DataError(f"{job.src}: its output {job.target} is an input (change --out or --suffix)")
        if job.target.exists() and not overwrite:
            raise DataError(f"{job.target} exists (pass --overwrite / overwrite=True to replace it)")
    return jobs


# ----------------------------------------------------------------------------------------------- one image
@dataclass
class _Settings:
    model: nn.Module
    scale: int
    normalize: str
    device: str | torch.device
    batch_size: int
    tile: int
    overlap: int
    ensemble: bool
    trained: dict[str, Any] | None = None  # the model's data_values record (normalize=auto follows it)


def _stack(arr: object, label: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Images of ``arr`` as a float32 stack (N, H, W) (NaN kept), and the map of an SR stack to the layout."""
    a = np.asarray(arr)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[0] == 1):
        items, back = [(a, label)], (lambda s: s[0] if a.ndim == 2 else s)
    elif a.ndim == 3:
        items, back = [(a[i], f"{label}[{i}]") for i in range(len(a))], (lambda s: s)
    elif a.ndim == 4 and a.shape[1] == 1:
        items, back = [(a[i, 0], f"{label}[{i}]") for i in range(len(a))], (lambda s: s[:, None])
    else:
        raise DataError(
            f"{label}: shape {a.shape} is not an image (H, W), (1, H, W) or a stack (N, H, W), (N, 1, H, W)"
        )
    if not items:
        raise DataError(f"{label}: empty stack of shape {a.shape}")
    images = []
    for img, name in items:
        blank = ~np.isfinite(img) if np.issubdtype(img.dtype, np.floating) else None
        checked = as_image(np.where(blank, 0, img) if blank is not None and blank.any() else img, name)[0]
        images.append(np.where(blank, np.nan, checked) if blank is not None and blank.any() else checked)
    return np.stack(images), back


def _upscale_stack(stack: np.ndarray, label: str, flux: str, st: _Settings) -> tuple[np.ndarray, Any]:
    """SR of a (N, H, W) stack in the input's units; returns it and the normalisation used."""
    blank = ~np.isfinite(stack)
    good = stack[~blank]
    norm = fits_io.choose_normalization(good, st.normalize, label, st.trained)
    if blank.any():
        fits_io.warn(
            f"{label}: {int(blank.sum())} blank (NaN/inf) pixel(s) filled with the median for the "
            f"model; they stay blank in the output"
        )
        stack = np.where(blank, np.float32(np.median(good)), stack)
    x = norm.apply(stack)
    fits_io.warn_out_of_range(x[~blank], label, norm)
    lr = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    try:
        sr = upscale_array(
            st.model,
            lr,
            st.scale,
            tile=st.tile,
            overlap=st.overlap,
            batch_size=st.batch_size,
            device=st.device,
            ensemble=st.ensemble,
        )
    except RuntimeError as exc:
        raise DataError(
            f"{label}: the model failed on shape {tuple(stack.shape[1:])} "
            f"(try --tile or a smaller --batch-size): {exc}"
        ) from exc
    out = norm.restore(sr[:, 0].numpy())
    if flux == "per-pixel":
        out = out / st.scale**2
    if blank.any():
        out[np.repeat(np.repeat(blank, st.scale, axis=1), st.scale, axis=2)] = np.nan
    return out, norm


def _dtype_of(arr: np.ndarray) -> type:
    """float64 stays float64; every other input type comes out as float32."""
    return np.float64 if arr.dtype.kind == "f" and arr.dtype.itemsize == 8 else np.float32


# ----------------------------------------------------------------------------------------------- files
def _load_npy(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix.lower() == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many kinds for a damaged file
        raise DataError(f"{path}: cannot read: {type(exc).__name__}: {exc}") from None
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    return arrays


def _numpy_file(job: Job, flux: str, st: _Settings) -> None:
    arrays = _load_npy(job.src)
    results = {}
    for key, arr in arrays.items():
        label = f"{job.src}[{key}]" if key else str(job.src)
        mode = fits_io.resolve_flux(flux, None, label, warn_unknown=False)
        stack, back = _stack(arr, label)
        out, _ = _upscale_stack(stack, label, mode, st)
        results[key] = back(out).astype(_dtype_of(np.asarray(arr)))
    with atomic_open(job.target, "wb") as fh:
        if job.src.suffix.lower() == ".npy":
            np.save(fh, results[""])
        else:
            np.savez(fh, **results)


def _fits_file(job: Job, hdu: int | str | None, flux: str, st: _Settings, history: list[str]) -> None:
    image = fits_io.read_fits_image(job.src, hdu)
    label = image.label
    bunit = image.header.get("BUNIT", (image.primary_header or {}).get("BUNIT"))
    mode = fits_io.resolve_flux(flux, None if bunit is None else str(bunit), label)
    stack, back = _stack(image.data, label)
    out, norm = _upscale_stack(stack, label, mode, st)
    data = back(out).astype(_dtype_of(image.data))
    cards = fits_io.provenance_cards(st.scale, norm, mode)
    notes = [
        f"hpc_sr normalize={norm.method} offset={norm.offset:.6g} scale={norm.scale:.6g}; flux {mode} "
        f"(BUNIT {bunit!r})" + (f": output divided by {st.scale**2}" if mode == "per-pixel" else "")
    ]
    raw = fits_io.fits_output_bytes(
        image, data, st.scale, cards, history + notes, compress=job.src.name.lower().endswith(".gz")
    )
    with atomic_open(job.target, "wb") as fh:
        fh.write(raw)


def upscale_paths(
    model: nn.Module,
    inputs: list[str],
    out_dir: str | Path,
    *,
    scale: int,
    suffix: str = "_sr",
    hdu: int | str | None = None,
    normalize: str = "auto",
    flux: str = "auto",
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    tile: int = 0,
    overlap: int = 8,
    ensemble: bool = False,
    model_label: str = "",
    overwrite: bool = False,
    progress: bool = False,
    model_values: dict[str, Any] | None = None,
) -> list[Path]:
    """Upscale every file of ``inputs`` (files, folders, globs) into ``out_dir``; returns the paths written.

    ``model_label`` (the checkpoint path, for ``run_upscale``) goes into the FITS HISTORY with the arch;
    ``progress`` shows a tqdm bar on stderr; ``model_values`` is the generator's ``data_values`` record (the
    payload of :func:`hpc_sr.models.artifacts.load_generator`), which ``normalize="auto"`` follows. See the
    module docstring for the rest.
    """
    if normalize not in fits_io.NORMALIZE_MODES:
        raise DataError(f"normalize={normalize!r}: choose one of {', '.join(fits_io.NORMALIZE_MODES)}")
    if flux not in fits_io.FLUX_MODES:
        raise DataError(f"flux={flux!r}: choose one of {', '.join(fits_io.FLUX_MODES)}")
    if batch_size < 1 or tile < 0 or overlap < 0 or (tile and overlap >= tile):
        raise HpcSrError(
            f"need batch_size >= 1, tile >= 0 and 0 <= overlap < tile (when tiling); got "
            f"batch_size={batch_size}, tile={tile}, overlap={overlap}"
        )
    if isinstance(inputs, str | Path):
        inputs = [str(inputs)]
    jobs = plan_outputs([str(i) for i in inputs], out_dir, suffix, overwrite)
    st = _Settings(model, int(scale), normalize, device, batch_size, tile, overlap, ensemble, model_values)
    arch = getattr(model, "arch", None) or type(model).__name__
    history = [f"hpc_sr {__version__} upscale x{scale}: model {arch}"]
    if model_label:
        history.append(f"hpc_sr checkpoint: {model_label}")
    history.append(f"hpc_sr tile={tile} overlap={overlap} self_ensemble={ensemble}")
    history.append(f"hpc_sr normalize={normalize}: {normalization_note(normalize, model_values)}")
    written = []
    for job in tqdm(jobs, desc="upscale", unit="file", disable=not progress, file=sys.stderr):
        if file_ext(job.src) in (".npy", ".npz"):
            _numpy_file(job, flux, st)
        else:
            _fits_file(job, hdu, flux, st, history)
        written.append(job.target)
    return written


# ----------------------------------------------------------------------------------------------- CLI
def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hpc-sr upscale`` (each help line shows its default)."""
    d = ""  # the `hpc-sr` parser shows every default (ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a shipped generator (deeplense-small) or a checkpoint step dir, run dir (its latest "
        "checkpoint) or exported G.pt",
    )
    parser.add_argument("--out", required=True, help="output folder (input sub-folders mirrored)")
    parser.add_argument("--suffix", default="_sr", help="added to each output file's stem" + d)
    parser.add_argument(
        "--hdu",
        default=None,
        help="FITS HDU to upscale, index or EXTNAME; by default the first HDU holding a 2-D image" + d,
    )
    parser.add_argument(
        "--normalize",
        choices=fits_io.NORMALIZE_MODES,
        default="auto",
        help="what the model sees (restored on output): auto = the values as the model was trained on "
        "them (raw, for models that record it: every model hpc_sr trains), else a guess per file: none if "
        "the values lie in [0, 1] (sky-subtracted noise below 0 allowed), max if only the peak is off, "
        f"else percentile ({fits_io.PERCENTILES[0]}-{fits_io.PERCENTILES[1]} %%)" + d,
    )
    parser.add_argument(
        "--flux",
        choices=fits_io.FLUX_MODES,
        default="auto",
        help="per-pixel: keep the total flux (output / scale^2); surface-brightness: keep the level; auto: "
        "from the FITS BUNIT parsed by astropy.units (per solid angle or beam, or K: level; counts, e-, ADU, "
        "Jy, erg/s/cm2/A: total; unparsable, undecided or .npy/.npz: level kept, a warning for FITS)" + d,
    )
    parser.add_argument(
        "--device", default="auto", help="torch device; auto: cuda if there is one, else cpu" + d
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images (or tiles) per forward pass" + d)
    parser.add_argument("--tile", type=int, default=0, help="LR tile size; 0 = whole images" + d)
    parser.add_argument("--overlap", type=int, default=8, help="LR overlap of neighbouring tiles" + d)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA" + d)
    parser.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations" + d)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs" + d)
    parser.add_argument(
        "--no-clamp",
        action="store_true",
        help="ignored (kept for old scripts): values are never clipped now" + d,
    )
    parser.add_argument(
        "inputs", nargs="+", help="input files (.npy, .npz, .fits[.gz], .fits.fz), folders or globs"
    )


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except RuntimeError as exc:
        raise DataError(f"--device {name!r}: {exc}") from None
    return name


def normalization_note(normalize: str, model_values: dict[str, Any] | None) -> str:
    """What ``normalize`` means for this model, in one line (printed, and kept in FITS HISTORY)."""
    if normalize != "auto":
        return f"{normalize} for every file"
    if model_values is None:
        return "the model records no training value range; chosen per file (HPCSRNRM card of each output)"
    lr = model_values.get("lr") or {}
    span = f", training LR in [{lr['min']:.4g}, {lr['max']:.4g}]" if "min" in lr and "max" in lr else ""
    return f"{model_values.get('normalize', 'none')} (the model's training convention: raw values{span})"


def run_upscale(args: argparse.Namespace) -> int:
    """``hpc-sr upscale``: load the generator, upscale the inputs; warnings go to stderr as one line each."""
    from hpc_sr.models.artifacts import load_generator

    module, payload = load_generator(args.checkpoint, ema=not args.no_ema)
    values = payload.get("data_values")
    note = normalization_note(args.normalize, values)
    print(f"hpc-sr upscale: normalize={args.normalize}: {note}", file=sys.stderr)
    device = _device(args.device)

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        tqdm.write(f"hpc-sr upscale: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", fits_io.UpscaleWarning)
        warnings.showwarning = show
        written = upscale_paths(
            module,
            list(args.inputs),
            args.out,
            scale=int(module.scale),
            suffix=args.suffix,
            hdu=fits_io.parse_hdu(args.hdu),
            normalize=args.normalize,
            flux=args.flux,
            device=device,
            batch_size=args.batch_size,
            tile=args.tile,
            overlap=args.overlap,
            ensemble=args.self_ensemble,
            model_label=str(args.checkpoint),
            overwrite=args.overwrite,
            progress=True,
            model_values=values,
        )
    print(f"wrote {len(written)} file(s) to {args.out}", file=sys.stderr)
    return 0
