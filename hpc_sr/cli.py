"""The `hpc-sr` command: argparse sub-commands that parse, then call one library function each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int | None]


# ----------------------------------------------------------------------------------------------- data
def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate lensing HR/LR pairs into HDF5 shards + manifest")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--num", type=int, required=True, help="number of HR/LR pairs")
    p.add_argument("--preset", default="deeplense_sr",
                   help="simulator preset: deeplense_sr, model_i, wide (LR = 2x2 mean of HR); "
                   "ground_space (LR from a ground-based instrument); randomized (domain-randomised)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=4096, help="pairs per shard file")
    p.add_argument("--device", default="cpu", help="torch device that runs the simulator")
    p.add_argument("--hr-size", type=int, default=150)
    p.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.set_defaults(func=_run_simulate)


def _run_simulate(a: argparse.Namespace) -> int:
    from hpc_sr.data.shards import simulate_to_shards

    simulate_to_shards(
        a.out,
        num=a.num,
        preset=a.preset,
        seed=a.seed,
        shard_size=a.shard_size,
        device=a.device,
        hr_size=a.hr_size,
        compression=a.compression,
        split=_fractions(a.split),
    )
    return 0


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="pack DeepLense .npy folders, .npz or FITS pairs into HDF5 shards")
    p.add_argument("--from", dest="kind", choices=["deeplense", "npz", "fits"], required=True)
    p.add_argument("--src", required=True, help="source directory (deeplense: SRC/HR/*.npy + SRC/LR/*.npy)")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none")
    p.add_argument("--split", default="0.8,0.1,0.1")
    p.add_argument("--skip-bad", action="store_true", help="list and skip bad pairs instead of failing")
    p.set_defaults(func=_run_pack)


def _run_pack(a: argparse.Namespace) -> int:
    from hpc_sr.data.shards import pack_to_shards

    pack_to_shards(
        a.kind,
        a.src,
        a.out,
        shard_size=a.shard_size,
        seed=a.seed,
        scale=a.scale,
        compression=a.compression,
        split=_fractions(a.split),
        skip_bad=a.skip_bad,
    )
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="recheck shard counts, shapes and sha256 against the manifest")
    p.add_argument("dir")
    p.set_defaults(func=_run_verify)


def _run_verify(a: argparse.Namespace) -> int:
    from hpc_sr.data.shards import verify_shards

    verify_shards(a.dir)
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="counts, split sizes, value ranges, bicubic PSNR/SSIM, example grid")
    p.add_argument("dir")
    p.add_argument("--sample", type=int, default=64, help="images used for value ranges and bicubic metrics")
    p.add_argument("--png", default=None, help="write a PNG grid of examples here")
    p.add_argument("--split", default="train")
    p.set_defaults(func=_run_inspect)


def _run_inspect(a: argparse.Namespace) -> int:
    from hpc_sr.apps.inspect import inspect_dataset

    inspect_dataset(a.dir, sample=a.sample, png=a.png, split=a.split)
    return 0


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise SystemExit(f"--split needs three fractions train,val,test; got {text!r}")
    return parts[0], parts[1], parts[2]


# ----------------------------------------------------------------------------------------------- training
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a generator (and GAN): single process, torchrun or srun")
    p.add_argument("--config", default=None, help="YAML config (configs/*.yaml); defaults when omitted")
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (from the run's latest checkpoint when it exists), never, or a checkpoint path",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr_g=2e-4 data.batch_size=32")
    p.set_defaults(func=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    from hpc_sr.train.entry import train_main

    return train_main(a.config, a.overrides, resume=a.resume)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM/MSE/flux of a generator and of bicubic on a split")
    p.add_argument(
        "--checkpoint", required=True, nargs="+",
        help="a shipped generator (deeplense-small), checkpoint step dir, run dir (latest) or exported G.pt; "
        "several: their mean (an ensemble)",
    )
    p.add_argument("--data", required=True, help="shard directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--lr-blur", default=None, metavar="data|FWHM",
                   help="a generator told its LR's blur (model.g.lr_blur_input): each pair's blur from the "
                        "set (data, the default for such a generator) or this FWHM in LR pixels for all")
    p.add_argument("--json", dest="json_out", default=None, help="write the result as JSON here")
    p.add_argument("--save-images", type=int, default=0, help="PNG comparison grids of the first N images")
    p.add_argument("--images-dir", default=None, help="where the PNGs go (default: beside --json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images of the split")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator, not its EMA")
    p.add_argument("--self-ensemble", action="store_true", help="average over 8 flips/rotations (x8 cost)")
    p.add_argument(
        "--samples",
        type=int,
        default=1,
        help="stochastic generator: N >= 6 samples per image; sample-mean metrics, 68%% interval calibration",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed for --samples")
    p.add_argument("--antithetic", action="store_true",
                   help="--samples as pairs (z, -z): the mean of a centred generator's samples is its centre")
    p.add_argument("--recalibrate-on", choices=["train", "val", "test"], default=None,
                   help="--samples: first fit one spread scale per brightness bin on this split (first "
                        "--limit images), then evaluate with the scaled samples")
    p.add_argument("--spread-scales", default=None,
                   help="--samples: apply spread scales fitted before (JSON: a record or an evaluate --json)")
    p.add_argument("--store-calibration", action="store_true",
                   help="--recalibrate-on: store the fitted scales with the evaluated generator (a step "
                        "dir's calibration.json, or the G.pt rewritten) for `upscale --samples`")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> int:
    from hpc_sr.apps.evaluate import evaluate

    evaluate(
        a.checkpoint[0] if len(a.checkpoint) == 1 else a.checkpoint,
        a.data,
        split=a.split,
        json_out=a.json_out,
        save_images=a.save_images,
        images_dir=a.images_dir,
        batch_size=a.batch_size,
        ema=not a.no_ema,
        ensemble=a.self_ensemble,
        limit=a.limit,
        samples=a.samples,
        seed=a.seed,
        antithetic=a.antithetic,
        recalibrate_on=a.recalibrate_on,
        spread_scales=a.spread_scales,
        store_calibration=a.store_calibration,
        lr_blur=a.lr_blur,
    )
    return 0


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    from hpc_sr.apps.upscale import add_upscale_arguments

    p = sub.add_parser(
        "upscale", help="upscale .npy/.npz/FITS images (files, folders, globs) with a trained generator"
    )
    add_upscale_arguments(p)
    p.set_defaults(func=_run_upscale)


def _run_upscale(a: argparse.Namespace) -> int:
    from hpc_sr.apps.upscale import run_upscale

    return run_upscale(a)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    from hpc_sr.launch.slurm import add_submit_arguments, run_submit

    p = sub.add_parser("submit", help="submit training to SLURM through submitit (one task per GPU)")
    add_submit_arguments(p)
    p.set_defaults(func=run_submit)


def _add_submit_upscale(sub: argparse._SubParsersAction) -> None:
    from hpc_sr.launch.upscale import add_submit_upscale_arguments, run_submit_upscale

    p = sub.add_parser("submit-upscale", help="submit `hpc-sr upscale ARGS` to SLURM (one rank per task, "
                       "requeued and resumed on USR2): [job options] -- ARGS")
    add_submit_upscale_arguments(p)
    p.set_defaults(func=run_submit_upscale)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the quick start: simulate, train the CPU quickstart, evaluate vs bicubic"
    )
    p.add_argument("--workdir", default="demo", help="where data and runs go")
    p.add_argument("--num", type=int, default=1200, help="simulated pairs (80/10/10 split)")
    p.add_argument("--hr-size", type=int, default=150, help="HR side of the simulated pairs")
    p.add_argument("--steps", type=int, default=0, help="training steps (0: the quickstart config's)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for the training run")
    p.set_defaults(func=_run_demo)


def _run_demo(a: argparse.Namespace) -> int:
    from hpc_sr.apps.demo import run_demo

    return run_demo(a.workdir, num=a.num, steps=a.steps, overrides=a.overrides, hr_size=a.hr_size)


# ----------------------------------------------------------------------------------------------- config
def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config", help="print the resolved config, or list the registered archs, losses, sources"
    )
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser(
        "show",
        help="the resolved, validated config as YAML (what `train` would use)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    show.add_argument("--config", default=None, help="YAML config; the defaults when omitted")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.g.arch=rcan")
    csub.add_parser("archs", help="registered generators, discriminators, loss terms and data sources")
    p.set_defaults(func=_run_config)


def _run_config(a: argparse.Namespace) -> int:
    if a.config_command == "show":
        from hpc_sr.config import dump_config, load_config
        from hpc_sr.train.components import check_config

        cfg = load_config(a.config, a.overrides)
        check_config(cfg)
        print(dump_config(cfg), end="")
        return 0
    from hpc_sr.apps.catalog import format_catalog

    print(format_catalog())
    return 0


# ----------------------------------------------------------------------------------------------- commands
# name -> (one-line help, function adding the sub-command's arguments). Only the chosen command's arguments
# are built, so `hpc-sr --help` and `hpc-sr --version` import nothing heavy (measured in tools/bench_cli.py).
_COMMANDS: dict[str, tuple[str, Callable[[argparse._SubParsersAction], None] | None]] = {
    "simulate": ("simulate lensing HR/LR pairs into HDF5 shards + manifest", _add_simulate),
    "pack": ("pack DeepLense .npy folders, .npz or FITS pairs into HDF5 shards", _add_pack),
    "verify": ("recheck shard counts, shapes and sha256 against the manifest", _add_verify),
    "inspect": ("counts, split sizes, value ranges, bicubic PSNR/SSIM, example grid", _add_inspect),
    "train": ("train a generator (and GAN): single process, torchrun or srun", _add_train),
    "evaluate": ("PSNR/SSIM/MSE/flux of a generator and of bicubic on a split", _add_evaluate),
    "upscale": (
        "upscale .npy/.npz/FITS images (files, folders, globs) with a trained generator",
        _add_upscale,
    ),
    "submit": ("submit training to SLURM through submitit (one task per GPU)", _add_submit),
    "submit-upscale": ("submit `hpc-sr upscale` to SLURM: [job options] -- ARGS", _add_submit_upscale),
    "demo": ("the quick start: simulate, train the CPU quickstart, evaluate vs bicubic", _add_demo),
    "config": ("print the resolved config; list registered archs, losses and data sources", _add_config),
    "ckpt": ("checkpoints: list | export | average | prune | verify (hpc-sr ckpt --help)", None),
    "runs": ("compare runs: metrics table, --by KEY groups, --plot curves (hpc-sr runs --help)", None),
    "cv": ("k-fold cross-validation: every fold here or as one SLURM job array (hpc-sr cv --help)", None),
    "study": ("research studies: ceiling, downstream, perception, robustness, zoo (hpc-sr study -h)", None),
}
# own parsers: argv passed on
_PASS_THROUGH = {
    "ckpt": "hpc_sr.apps.ckpt",
    "runs": "hpc_sr.apps.runs",
    "study": "hpc_sr.studies",
    "cv": "hpc_sr.launch.cv",
}


def _version() -> str:
    from hpc_sr.version import __version__

    return f"hpc-sr {__version__}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s sub-parser gets its arguments (all of them when None is not wanted)."""
    parser = argparse.ArgumentParser(prog="hpc-sr", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults_sub = _DefaultsSubparsers(sub)
    for name, (text, add) in _COMMANDS.items():
        if name == command and add is not None:
            add(defaults_sub)  # type: ignore[arg-type]
        else:
            sub.add_parser(name, help=text)
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, and "(required)" instead of "(default: None)" for a required option."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required and action.option_strings:
            return f"{action.help or ''} (required)".strip()
        return super()._get_help_string(action)


class _DefaultsSubparsers:
    """Wraps the sub-parser action so that every sub-command's help shows its defaults."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self._sub = sub

    def add_parser(self, name: str, **kw: object) -> argparse.ArgumentParser:
        kw.setdefault("formatter_class", _HelpFormatter)
        return self._sub.add_parser(name, **kw)  # type: ignore[arg-type]


def _command_of(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hpc-sr` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    if command in _PASS_THROUGH and argv and argv[0] == command:
        import importlib

        return int(importlib.import_module(_PASS_THROUGH[command]).main(argv[1:]) or 0)
    from hpc_sr.errors import HpcSrError

    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HpcSrError as exc:
        print(f"hpc-sr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hpc-sr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
