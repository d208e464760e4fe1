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
    p.add_argument("--preset", default="deeplense_sr", help="simulator preset (deeplense_sr, model_i, wide)")
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
    from hpc_sr.data.inspect import inspect_dataset

    inspect_dataset(a.dir, sample=a.sample, png=a.png, split=a.split)
    return 0


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise SystemExit(f"--split needs three fractions train,val,test; got {text!r}")
    return parts[0], parts[1], parts[2]


# ----------------------------------------------------------------------------------------------- training
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train SRResNet / SRGAN (single process, torchrun or srun)")
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
        "--checkpoint", required=True, help="checkpoint step dir, run dir (latest) or exported G.pt"
    )
    p.add_argument("--data", required=True, help="shard directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", dest="json_out", default=None, help="write the result as JSON here")
    p.add_argument("--save-images", type=int, default=0, help="PNG comparison grids of the first N images")
    p.add_argument("--images-dir", default=None, help="where the PNGs go (default: beside --json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images of the split")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator, not its EMA")
    p.add_argument("--self-ensemble", action="store_true", help="average over 8 flips/rotations (x8 cost)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> int:
    from hpc_sr.eval.evaluate import evaluate

    evaluate(
        a.checkpoint,
        a.data,
        split=a.split,
        json_out=a.json_out,
        save_images=a.save_images,
        images_dir=a.images_dir,
        batch_size=a.batch_size,
        ema=not a.no_ema,
        ensemble=a.self_ensemble,
        limit=a.limit,
    )
    return 0


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="upscale .npy/.npz/FITS images with a trained generator")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint step dir, run dir (latest) or exported G.pt"
    )
    p.add_argument("--out", required=True, help="output directory (same file names and formats)")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--self-ensemble", action="store_true")
    p.add_argument("--no-clamp", action="store_true", help="keep values outside [0, 1]")
    p.add_argument("inputs", nargs="+", help="input files (.npy, .npz, .fits)")
    p.set_defaults(func=_run_upscale)


def _run_upscale(a: argparse.Namespace) -> int:
    from hpc_sr.eval.evaluate import upscale_files

    upscale_files(
        a.checkpoint, a.out, a.inputs, ema=not a.no_ema, ensemble=a.self_ensemble, clamp=not a.no_clamp
    )
    return 0


def _add_submit(sub: argparse._SubParsersAction) -> None:
    from hpc_sr.launch.slurm import add_submit_arguments, run_submit

    p = sub.add_parser("submit", help="submit training to SLURM through submitit (one task per GPU)")
    add_submit_arguments(p)
    p.set_defaults(func=run_submit)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the quick start: simulate, train the CPU quickstart, evaluate vs bicubic"
    )
    p.add_argument("--workdir", default="demo", help="where data and runs go")
    p.add_argument("--num", type=int, default=1200, help="simulated pairs (80/10/10 split)")
    p.add_argument("--steps", type=int, default=0, help="training steps (0: the quickstart config's)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for the training run")
    p.set_defaults(func=_run_demo)


def _run_demo(a: argparse.Namespace) -> int:
    from hpc_sr.demo import run_demo

    return run_demo(a.workdir, num=a.num, steps=a.steps, overrides=a.overrides)


# ----------------------------------------------------------------------------------------------- commands
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_simulate,
    _add_pack,
    _add_verify,
    _add_inspect,
    _add_train,
    _add_evaluate,
    _add_upscale,
    _add_submit,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-sr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hpc-sr` console script."""
    from hpc_sr.errors import HpcSrError

    args = build_parser().parse_args(argv)
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
