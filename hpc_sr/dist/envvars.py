"""Typed reads of environment variables: a bad value is an error naming the variable and the value."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from hpc_sr.errors import EnvironmentVariableError

N = TypeVar("N", int, float)


def _parsed(
    name: str, parse: Callable[[str], N], what: str, environ: Mapping[str, str] | None
) -> tuple[str, N] | None:
    """(raw text, parsed value) of variable ``name``, None when unset; a value ``parse`` rejects is an error
    naming it (a set but empty variable too: some cluster modules leave ``OMP_NUM_THREADS=``)."""
    env = os.environ if environ is None else environ
    if name not in env:
        return None
    raw = env[name]
    try:
        return raw, parse(raw.strip())
    except ValueError:
        raise EnvironmentVariableError(f"environment variable {name}={raw!r} is not {what}") from None


def env_int(
    name: str, default: int | None = None, *, minimum: int = 0, environ: Mapping[str, str] | None = None
) -> int | None:
    """Integer value of environment variable ``name`` (``default`` when unset); bad values name the variable.

    A variable that is set but empty counts as bad (some cluster modules leave ``OMP_NUM_THREADS=``).
    """
    found = _parsed(name, int, f"an integer; set it to a number >= {minimum} or unset it", environ)
    if found is None:
        return default
    raw, value = found
    if value < minimum:
        raise EnvironmentVariableError(f"environment variable {name}={raw!r} must be >= {minimum}")
    return value


def env_float(
    name: str, default: float, *, positive: bool = True, environ: Mapping[str, str] | None = None
) -> float:
    """Float value of environment variable ``name`` (``default`` when unset); bad values name the variable."""
    found = _parsed(name, float, "a number", environ)
    if found is None:
        return default
    raw, value = found
    if positive and not value > 0:
        raise EnvironmentVariableError(f"environment variable {name}={raw!r} must be a positive number")
    return value
