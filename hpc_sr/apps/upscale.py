"""``hpc-sr upscale``: upscale .npy / .npz / FITS / HDF5 files (or folders, or globs) with a generator.

    upscale_paths(model, ["data/", "extra/*.fits"], "sr/", scale=2, tile=256, device="cuda")

The work is :mod:`hpc_sr.apps.inference`'s (see :mod:`~hpc_sr.apps.inference.runner`): every output is planned
and checked (two inputs writing one output, an output that is an input) before anything is read; images are
batched across files on one process or many ranks (torchrun / SLURM), each output written atomically and
recorded in ``out_dir/.hpc_sr_ledger/``, so a rerun skips what is done (a first run refuses to replace files
it did not write, unless ``overwrite``; a rerun with other options or another model is refused, naming the
difference). A bad file is recorded as failed and the run goes on (``on_error="skip"``, the CLI default) or
stops naming it (``"stop"``, the default of :func:`upscale_paths`); files in folders that hold no image are
skipped. ``out_dir/upscale_report.json`` lists what was done, skipped and failed. Exit status of the command
(per rank): 0 every unit done (skipped non-images do not count), 1 a unit or an input failed, 2 refused (bad
inputs or options, another run's settings in ``--out``), 3 stopped by USR2/SIGTERM (requeued under SLURM).

- Inputs: files, folders (searched recursively; sub-folders mirrored under ``out_dir``) and glob patterns.
  ``x.npy`` -> ``out_dir/x_sr.npy`` (``suffix``); the format is kept (each format's module says how:
  :mod:`~hpc_sr.apps.inference.format_numpy`, ``format_fits``, ``format_hdf5``).
- Values: given to the model as it was trained (``normalize="auto"`` with a model that records its training
  data's convention, ``data_values``: the raw values), or normalised into [0, 1] by a guess per image for a
  model without a record (:func:`~hpc_sr.apps.fits_io.choose_normalization`); upscaled, restored to the
  input's units, never clipped; per-pixel units divided by scale**2 (total flux kept). Blank pixels
  (NaN/inf) are filled with the median for the model and come back blank (each as a scale x scale block).
- ``samples`` > 0 (a stochastic generator): the output is the mean of that many samples, with a per-pixel
  sigma beside it (calibrated by the spread scales stored with the model).
- ``engine``: torch (default), onnx (ONNX Runtime on an export cached by the model's fingerprint, or a given
  ``.onnx``) or auto (onnx on CPU where it can run, else torch, the reason said); the engine that ran is part
  of the ledger's fingerprint (:mod:`~hpc_sr.apps.inference.onnx_engine`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from hpc_sr.apps import fits_io
from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.inference.formats import output_name as output_name  # re-exported (moved)
from hpc_sr.apps.inference.onnx_engine import ENGINES
from hpc_sr.apps.inference.pixels import normalization_note as normalization_note  # re-exported (moved)
from hpc_sr.apps.inference.publish import DURABILITY
from hpc_sr.apps.inference.runner import execute, run_inference
from hpc_sr.errors import DataError


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
    on_error: str = "stop",
    engine: str = "torch",
    onnx_model: str = "",
    lr_blur: float | None = None,
) -> list[Path]:
    """Upscale every file of ``inputs`` (files, folders, globs) into ``out_dir``; returns the output path of
    every unit done (in this call or an earlier one into ``out_dir``), sorted by unit.

    ``model_label`` (the checkpoint path, for ``run_upscale``) goes into the FITS HISTORY with the arch;
    ``progress`` shows the bar and summary on stderr; ``model_values`` is the generator's ``data_values``
    record (the payload of :func:`hpc_sr.models.artifacts.load_generator`), which ``normalize="auto"``
    follows; ``on_error="skip"`` records a bad file as failed and goes on; ``engine`` torch | onnx | auto
    and ``onnx_model`` (a given .onnx): :mod:`hpc_sr.apps.inference.onnx_engine`; ``lr_blur``: every
    input's LR blur for a generator told it (FWHM in LR pixels). See the module docstring.
    """
    if isinstance(inputs, str | Path):
        inputs = [str(inputs)]
    opts = InferenceOptions(
        scale=int(scale),
        suffix=suffix,
        normalize=normalize,
        flux=flux,
        tile=tile,
        overlap=overlap,
        ensemble=ensemble,
        hdus=() if hdu is None else (str(hdu),),
        batch_size=batch_size,
        device=str(device),
        on_error=on_error,
        engine=engine,
        onnx_model=str(onnx_model or ""),
        lr_blur=lr_blur,
    )
    payload = {"data_values": model_values} if model_values is not None else None
    result = execute(
        model,
        payload,
        list(inputs),
        out_dir,
        opts,
        overwrite=overwrite,
        progress=progress,
        model_label=model_label,
    )
    return [u.target for u in result.plan.units if result.ledger.get(u.id, {}).get("status") == "done"]


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
        action="append",
        default=None,
        help="FITS HDU to upscale: an index, EXTNAME or EXTNAME,EXTVER; repeat for several; by default every "
        "image HDU" + d,
    )
    parser.add_argument(
        "--dataset",
        default="",
        help="HDF5 catalog: the image dataset; by default the one (N, H, W) dataset" + d,
    )
    parser.add_argument("--catalog-rows", type=int, default=1024, help="HDF5 catalog rows per work unit" + d)
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
    parser.add_argument("--lr-blur", type=float, default=None, metavar="FWHM",
                        help="for a generator told its LR's blur (model.g.lr_blur_input, e.g. one trained on "
                             "the randomized preset): the FWHM in LR pixels of the Gaussian that takes the "
                             "training HR's PSF to your images' PSF (0: LR is a 2x2 mean)")
    parser.add_argument("--tile", type=int, default=0, help="LR tile size; 0 = whole images" + d)
    parser.add_argument("--overlap", type=int, default=8, help="LR overlap of neighbouring tiles" + d)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA" + d)
    parser.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations" + d)
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help="a stochastic generator: the mean of N samples per image, with a per-pixel sigma beside it" + d,
    )
    parser.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="a bad file: skip records it as failed (upscale_report.json, exit status 1) and goes on; stop "
        "ends the run naming it" + d,
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the generator (long GPU runs)" + d
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="torch",
        help="what runs the generator: torch, onnx (ONNX Runtime: the generator exported once into a cache, "
        "about 2x faster on CPU; needs pip install 'hpc-sr[export]'), or auto (onnx on CPU when onnxruntime "
        "is installed and the generator exports, torch on CUDA, with --samples or --compile); the engine "
        "that ran is recorded: a rerun with the other one is refused (--overwrite)" + d,
    )
    parser.add_argument(
        "--onnx-model",
        default="",
        help="engine onnx: run this .onnx (hpc-sr ckpt export --format onnx) instead of exporting "
        "--checkpoint's generator; checked against it on a small input first" + d,
    )
    parser.add_argument(
        "--onnx-cache",
        default="",
        help="engine onnx: folder of the cached exports; default $HPC_SR_ONNX_CACHE, else "
        "~/.cache/hpc_sr/onnx" + d,
    )
    parser.add_argument(
        "--durability",
        choices=DURABILITY,
        default=DURABILITY[0],
        help="how outputs become durable before the ledger records them: batch (a batch of units' files "
        "synced together by a committer thread, then renamed, each folder synced once: ~5x faster for many "
        "small files) or file (each file synced and renamed on its own); both exactly once" + d,
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo everything: clear the output folder's ledger and replace existing outputs (without it a "
        "rerun skips what is done and refuses other options or another model)" + d,
    )
    parser.add_argument(
        "--no-clamp",
        action="store_true",
        help="ignored (kept for old scripts): values are never clipped now" + d,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="input files (.npy, .npz, .fits[.gz], .fits.fz, .h5), folders or globs; under torchrun or srun "
        "each rank takes its share",
    )


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except RuntimeError as exc:
        raise DataError(f"--device {name!r}: {exc}") from None
    return name


def options_from_args(args: argparse.Namespace, scale: int) -> InferenceOptions:
    """The :class:`InferenceOptions` of parsed ``hpc-sr upscale`` arguments."""
    return InferenceOptions(
        scale=scale,
        suffix=args.suffix,
        normalize=args.normalize,
        flux=args.flux,
        samples=args.samples,
        tile=args.tile,
        overlap=args.overlap,
        ensemble=args.self_ensemble,
        hdus=tuple(args.hdu or ()),
        dataset=args.dataset,
        catalog_rows=args.catalog_rows,
        batch_size=args.batch_size,
        device=_device(args.device),
        on_error=args.on_error,
        compile=args.compile,
        engine=args.engine,
        onnx_model=args.onnx_model,
        onnx_cache=args.onnx_cache,
        durability=args.durability,
        lr_blur=args.lr_blur,
    )


def run_upscale(args: argparse.Namespace) -> int:
    """``hpc-sr upscale``: load the generator, upscale the inputs as this rank's share; warnings go to stderr
    as one line each. The exit status of :func:`~hpc_sr.apps.inference.runner.run_inference`."""
    from hpc_sr.dist.signals import install_stop_flag
    from hpc_sr.models.artifacts import load_generator

    install_stop_flag()  # before the model loads: a stop signal from now on ends the run cleanly
    if str(args.checkpoint).lower().endswith(".onnx"):
        raise DataError(
            f"--checkpoint {args.checkpoint}: an ONNX file is run with --onnx-model (and --engine onnx); "
            "--checkpoint names the generator it was exported from (its scale, value record, calibration)"
        )
    module, payload = load_generator(args.checkpoint, ema=not args.no_ema)
    note = normalization_note(args.normalize, payload.get("data_values"))
    print(f"hpc-sr upscale: normalize={args.normalize}: {note}", file=sys.stderr)
    opts = options_from_args(args, int(module.scale))

    def say(message: str) -> None:
        tqdm.write(f"hpc-sr upscale: warning: {message}", file=sys.stderr)

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        say(str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("always", fits_io.UpscaleWarning)
        warnings.showwarning = show
        return run_inference(
            module,
            payload,
            list(args.inputs),
            args.out,
            opts,
            overwrite=args.overwrite,
            progress=True,
            model_label=str(args.checkpoint),
            handle_signals=True,
            on_warning=say,
        )
