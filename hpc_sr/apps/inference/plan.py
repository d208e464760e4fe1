"""Inputs -> work units, and this rank's share of them.

    plan = plan_units(["data/", "extra/*.fits"], out_dir, opts)   # Plan(units, skipped, failed)
    mine = shard(plan.units, rank, world)

- Inputs are files, folders (searched recursively, hidden entries and anything inside ``out_dir`` left out;
  sub-folders mirrored under ``out_dir``) and glob patterns (``**`` recursive). Each file goes to the
  registered format of its ending (:func:`~hpc_sr.apps.inference.formats.format_for`), whose ``plan`` gives
  its units.
- A file found in a folder or by a glob that holds no image (no format reads its type, or the format says
  :class:`NotAnImage`) is skipped with its reason, whatever ``on_error`` says; a file named directly that no
  format reads is an error, one that holds no image a failure. A file whose planning fails otherwise is a
  failure (the runner reports it, or stops on it with ``on_error=stop``).
- Every output is checked before anything is read: two inputs writing one output, and an output that is an
  input, are errors. Units come sorted by id.
"""

from __future__ import annotations

import glob
import heapq
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hpc_sr.apps.inference.formats import (
    FORMATS,
    InferenceOptions,
    NotAnImage,
    Unit,
    format_for,
    supported_suffixes,
)
from hpc_sr.errors import DataError


@dataclass
class Plan:
    """The units of a run (sorted by id), and the files left out: ``(path, reason)``."""

    units: list[Unit]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # hold no image: not a failure
    failed: list[tuple[str, str]] = field(default_factory=list)  # could not be planned


@dataclass(frozen=True)
class _Candidate:
    path: Path
    rel: Path  # relative to the folder it was found in; the name for a file named directly or by a glob
    direct: bool  # named as such on the command line (not found in a folder or by a pattern)


class _Resolver:
    """``Path.resolve`` for many paths of few folders: each folder resolved once, then one ``lstat`` a path
    (a name that is itself a symbolic link, or a path through "..", is resolved in full)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> Path:
        return Path(self.text(path))

    def text(self, path: Path | str) -> str:
        """The resolved path as a string (no Path objects made: the planner's keys)."""
        spec = os.fspath(path)
        if ".." in spec.split(os.sep):  # "link/.." is the link target's parent: resolved the long way
            return str(Path(spec).resolve())
        parent, name = os.path.split(os.path.abspath(spec))
        if not name:
            return str(Path(parent).resolve())
        real = self._folders.get(parent)
        if real is None:
            real = self._folders[parent] = os.path.realpath(parent)
        full = os.path.join(real, name)
        return os.path.realpath(full) if os.path.islink(full) else full


class _Within:
    """Whether a path lies within ``folder`` once both are resolved (links followed), for many paths: the
    folder resolved once, then a string prefix test of each resolved path."""

    def __init__(self, folder: Path, resolve: _Resolver) -> None:
        self._resolve = resolve
        self._folder = resolve.text(folder)
        self._prefix = self._folder.rstrip(os.sep) + os.sep

    def __call__(self, path: Path) -> bool:
        real = self._resolve.text(path)
        return real == self._folder or real.startswith(self._prefix)


def _files(folder: Path) -> Iterator[tuple[str, ...]]:
    """The parts (relative to ``folder``) of every file under it, as ``Path.rglob("*")`` + ``is_file``
    finds them (symbolic links to files followed, to folders not), hidden entries and their contents left
    out, and folders it may not read skipped (as ``rglob`` skips them); one ``scandir`` a folder."""
    todo: list[tuple[str, tuple[str, ...]]] = [(str(folder), ())]
    while todo:
        here, parts = todo.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except PermissionError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir() and not e.is_symlink():
                todo.append((e.path, (*parts, e.name)))
            elif e.is_file():
                yield (*parts, e.name)


def _expand(spec: str, within: _Within) -> Iterator[_Candidate]:
    path = Path(spec)
    if not path.exists() and any(c in spec for c in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise DataError(f"{spec}: the pattern matches no file")
        for m in matches:
            yield from _expand_path(Path(m), False, within)
        return
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder")
    yield from _expand_path(path, True, within)


def _expand_path(path: Path, direct: bool, within: _Within) -> Iterator[_Candidate]:
    if not path.is_dir():
        if direct or not within(path):
            yield _Candidate(path, Path(path.name), direct)
        return
    found = []
    for parts in sorted(_files(path)):  # the order of sorted Paths: part by part
        p = path.joinpath(*parts)
        if not within(p):
            found.append(_Candidate(p, Path(*parts), False))
    if not found and direct:
        raise DataError(f"{path}: the folder holds no file")
    yield from found


def _plan_file(c: _Candidate, out_dir: Path, opts: InferenceOptions, plan: Plan) -> list[Unit]:
    name = format_for(c.path)
    if name is None:
        why = f"unsupported file type (supported: {', '.join(supported_suffixes())})"
        if c.direct:
            raise DataError(f"{c.path}: {why}")
        plan.skipped.append((str(c.path), f"{c.path}: not an image file: {why}"))
        return []
    try:
        return FORMATS[name].cls().plan(c.path, c.rel, out_dir, opts)
    except NotAnImage as exc:
        (plan.failed if c.direct else plan.skipped).append((str(c.path), str(exc)))
    except (DataError, OSError) as exc:
        plan.failed.append((str(c.path), str(exc) if isinstance(exc, DataError) else f"{c.path}: {exc}"))
    return []


def plan_units(inputs: list[str], out_dir: str | Path, opts: InferenceOptions) -> Plan:
    """Every unit of ``inputs`` (see the module docstring); DataError for a bad spec or an output clash."""
    out_dir = Path(out_dir)
    if not inputs:
        raise DataError("no input given")
    plan = Plan([])
    by_target: dict[str, Unit] = {}  # resolved target -> its unit
    resolve = _Resolver()
    within = _Within(out_dir, resolve)
    sources: dict[Path, str] = {}  # a source as planned -> resolved (each once)
    for spec in inputs:
        for c in _expand(str(spec), within):
            for unit in _plan_file(c, out_dir, opts, plan):
                key = resolve.text(unit.target)
                real = sources.get(unit.src)
                if real is None:
                    real = sources[unit.src] = resolve.text(unit.src)
                first = by_target.get(key)
                if first is not None:
                    if sources[first.src] == real and first.id == unit.id:
                        continue  # the same file named twice
                    raise DataError(f"{first.src} and {unit.src} would both write {unit.target}")
                by_target[key] = unit
                plan.units.append(unit)
    real_sources = set(sources.values())
    for key, unit in by_target.items():
        if key in real_sources:
            raise DataError(f"{unit.src}: its output {unit.target} is an input (change --out or --suffix)")
    plan.units.sort(key=lambda u: u.id)
    for a, b in zip(plan.units, plan.units[1:]):
        if a.id == b.id:
            raise DataError(f"{a.src} and {b.src} are both unit {a.id!r}: name them from separate folders")
    if not plan.units and not plan.failed:
        raise DataError(f"no image among the inputs ({len(plan.skipped)} file(s) skipped)")
    return plan


def shard(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """This rank's units: disjoint and deterministic, balanced by ``pixels`` (largest first onto the least
    loaded rank, ties to the lower rank); sorted by id."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    if world == 1:
        return sorted(units, key=lambda u: u.id)
    loads = [(0, r) for r in range(world)]
    mine = []
    for unit in sorted(units, key=lambda u: (-u.pixels, u.id)):
        load, r = heapq.heappop(loads)
        if r == rank:
            mine.append(unit)
        heapq.heappush(loads, (load + unit.pixels, r))
    return sorted(mine, key=lambda u: u.id)
