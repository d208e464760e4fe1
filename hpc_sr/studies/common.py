"""What the study commands share: their parser, the ``NAME=RUN_OR_PRETRAINED`` model argument (and loading
and running the models it names), the usual options (data set, limit, seed, device, output) and how results
and errors are written."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hpc_sr.apps.tiling import upscale_array
from hpc_sr.atomic import atomic_write_text
from hpc_sr.errors import HpcSrError
from hpc_sr.models.artifacts import load_generator

__all__ = [
    "MODEL_FORM",
    "PROG",
    "StudyArgumentError",
    "add_data",
    "add_device",
    "add_limit",
    "add_models",
    "add_out",
    "add_seed",
    "fail",
    "load_model",
    "parse_models",
    "parse_named",
    "study_parser",
    "upscale",
    "write_json",
]

PROG = "hpc-sr study"
MODEL_FORM = "NAME=RUN_OR_PRETRAINED"
_SOURCE_HELP = "a run directory, checkpoint, exported G.pt or pretrained name (hpc_sr.load_generator)"


class StudyArgumentError(HpcSrError, ValueError):
    """A study argument that cannot be used as given; the message names the argument."""


def parse_named(
    spec: str, flag: str = "--model", form: str = MODEL_FORM, bare: bool = True
) -> tuple[str, str]:
    """``NAME=RUN`` -> (NAME, RUN). A bare RUN (``bare``) is named after its last path component
    (``runs/G1`` -> ``G1``, a pretrained name after itself); otherwise it is an error naming ``flag``."""
    name, sep, run = spec.partition("=")
    if not sep:
        if not bare:
            raise StudyArgumentError(f"{flag} {spec!r}: expected {form}")
        name, run = Path(spec).name or spec, spec
    if not name or not run:
        raise StudyArgumentError(f"{flag} {spec!r}: expected {form}")
    return name, run


def parse_models(
    specs: Sequence[str],
    flag: str = "--model",
    reserved: Collection[str] = (),
    form: str = MODEL_FORM,
    bare: bool = True,
) -> dict[str, str]:
    """``parse_named`` of every spec -> {name: run}; names must be unique and not ``reserved``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, run = parse_named(spec, flag, form, bare)
        if name in out or name in reserved:
            taken = ", ".join([*reserved, f"an earlier {flag}"])
            raise StudyArgumentError(f"{flag} {spec!r}: the name {name!r} is taken ({taken})")
        out[name] = run
    return out


def load_model(source: str, ema: bool = True, device: str | None = None) -> nn.Module:
    """The generator (eval mode) a ``NAME=RUN_OR_PRETRAINED`` argument names, its EMA weights by default."""
    model, _ = load_generator(source, ema=ema)
    return model.to(device) if device else model


def upscale(model: nn.Module, lr: Tensor, device: str | None = None, clamp: bool = False) -> Tensor:
    """SR (N, 1, sH, sW) float32 of LR images (N, 1, H, W), on LR's device; clamped to [0, 1] if ``clamp``."""
    out = upscale_array(model, lr.float(), int(model.scale), batch_size=16, device=device)
    return out.clamp(0, 1) if clamp else out


def study_parser(name: str, doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of study ``name``: ``doc``'s first line as description, its defaults shown in --help."""
    return argparse.ArgumentParser(
        prog=prog or f"{PROG} {name}",
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_data(
    ap: argparse.ArgumentParser, help: str = "a simulated shard directory (hpc-sr simulate)"
) -> None:
    ap.add_argument("data", help=help)


def add_models(
    ap: argparse.ArgumentParser, flag: str = "--model", help: str = _SOURCE_HELP, required: bool = False
) -> None:
    """``flag`` NAME=RUN_OR_PRETRAINED, repeatable (one, when ``required``); parse with ``parse_models``."""
    if required:
        ap.add_argument(flag, required=True, metavar=MODEL_FORM, help=help)
    else:
        ap.add_argument(flag, action="append", default=[], metavar=MODEL_FORM, help=f"{help}; repeatable")


def add_limit(ap: argparse.ArgumentParser, default: int = 0, what: str = "images of the split") -> None:
    ap.add_argument("--limit", type=int, default=default, help=f"first N {what} (0: all)")


def add_seed(ap: argparse.ArgumentParser, help: str = "random seed") -> None:
    ap.add_argument("--seed", type=int, default=0, help=help)


def add_device(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cpu", help="torch device of the models")


def add_out(ap: argparse.ArgumentParser, default: str | None, help: str = "output directory") -> None:
    """``--out DIR``: required when ``default`` is None."""
    ap.add_argument("--out", type=Path, default=default, required=default is None, help=help)


def write_json(path: Path, obj: Any, indent: int = 2) -> None:
    """``obj`` as indented JSON (and a newline) at ``path``, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def fail(prog: str, exc: BaseException) -> int:
    """Report ``exc`` as ``PROG: error: ...`` on stderr; the exit status of a study that could not run."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
