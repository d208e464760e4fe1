"""What the apps' command-line entry points share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hpc_sr.errors import HpcSrError


def run_cli(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv`` with ``parser`` and return ``command(args)``, its exit status; an :class:`HpcSrError`
    is printed as ``error: ...`` on stderr and gives 2 (bad arguments exit from argparse, also with 2)."""
    args = parser.parse_args(argv)
    try:
        return command(args)
    except HpcSrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
