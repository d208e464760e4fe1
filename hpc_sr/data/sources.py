"""Readers of HR/LR image pairs on disk: DeepLense .npy folders, .npz files and FITS folders.

Layouts (``kind`` of :func:`open_source`):

- ``deeplense``: ``SRC/HR/*.npy`` and ``SRC/LR/*.npy`` with the same file names.
- ``fits``: ``SRC/HR/*.fits`` and ``SRC/LR/*.fits`` with the same file names (needs astropy, extra ``fits``).
- ``npz``: either a folder ``SRC/*.npz`` holding one pair per file (arrays ``hr`` and ``lr``; the file stem is
  the pair's name), or a single file ``SRC.npz`` holding stacked arrays ``hr`` (N, ...) and ``lr`` (N, ...)
  (the pair names are ``<stem>[i]``).

Each image may be (H, W) or (1, H, W), of any float or integer dtype; it comes out as float32 (1, H, W).
Values are never rescaled (rescaling LR and HR separately would break the pairing). Files are taken in
sorted name order. A bad pair raises :class:`DataError` naming the file, or with ``skip_bad=True`` is listed
on stderr, recorded in ``PairSource.skipped`` and left out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpc_sr.errors import DataError

KINDS = ("deeplense", "npz", "fits")


@dataclass(frozen=True)
class Pair:
    """One HR/LR pair: float32 arrays (1, H, W) and (1, H/scale, W/scale)."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


@dataclass(frozen=True)
class _Entry:
    name: str
    hr_label: str  # what an error message names for the HR image (a path, or path[i])
    lr_label: str
    load: Callable[[], tuple[object, object]]


def as_image(arr: object, label: str) -> np.ndarray:
    """Return ``arr`` as a float32 (1, H, W) array, or raise DataError naming ``label``."""
    a = np.asarray(arr)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"{label}: dtype {a.dtype} is not a real numeric image type")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise DataError(f"{label}: shape {tuple(np.shape(arr))} is not an image (H, W) or (1, H, W)")
    if a.size == 0:
        raise DataError(f"{label}: empty image of shape {a.shape}")
    out = np.ascontiguousarray(a, dtype=np.float32)[None]
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad:
        raise DataError(f"{label}: {bad} NaN or inf values (after conversion to float32)")
    return out


def check_pair(hr: np.ndarray, lr: np.ndarray, scale: int, hr_label: str, lr_label: str) -> None:
    """Raise DataError naming both files unless HR is exactly ``scale`` times LR in each dimension."""
    if hr.shape[-2:] != (lr.shape[-2] * scale, lr.shape[-1] * scale):
        raise DataError(f"{hr_label} {tuple(hr.shape[-2:])} is not {scale} x {lr_label} "
                        f"{tuple(lr.shape[-2:])}")


class PairSource:
    """An iterable over the good pairs of a source, in sorted name order.

    ``candidates`` is the number of pairs found (before the contents are read); ``skipped`` lists
    ``(file, reason)`` for every pair left out with ``skip_bad=True``.
    """

    def __init__(self, entries: list[_Entry], scale: int, skip_bad: bool, origin: str,
                 skipped: list[tuple[str, str]]) -> None:
        if scale < 1:
            raise DataError(f"scale must be >= 1, got {scale}")
        self._entries = entries
        self.scale = scale
        self.skip_bad = skip_bad
        self.origin = origin
        self.skipped = skipped
        self.hr_shape: tuple[int, ...] | None = None
        self.lr_shape: tuple[int, ...] | None = None

    @property
    def candidates(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Pair]:
        for e in self._entries:
            try:
                pair = self._read(e)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._skip(e.hr_label, str(exc))
                continue
            yield pair

    def _read(self, e: _Entry) -> Pair:
        try:
            hr_raw, lr_raw = e.load()
        except DataError:
            raise
        except Exception as exc:  # unreadable file: numpy/astropy raise many types
            raise DataError(f"{e.hr_label}: cannot read pair: {type(exc).__name__}: {exc}") from exc
        hr = as_image(hr_raw, e.hr_label)
        lr = as_image(lr_raw, e.lr_label)
        check_pair(hr, lr, self.scale, e.hr_label, e.lr_label)
        if self.hr_shape is None:
            self.hr_shape, self.lr_shape = hr.shape, lr.shape
        elif hr.shape != self.hr_shape or lr.shape != self.lr_shape:
            raise DataError(f"{e.hr_label}: shape {hr.shape} / LR {lr.shape} differs from the first pair's "
                            f"{self.hr_shape} / {self.lr_shape}")
        return Pair(e.name, hr, lr)

    def _skip(self, label: str, reason: str) -> None:
        self.skipped.append((label, reason))
        print(f"skipped bad pair: {reason}", file=sys.stderr)


@dataclass
class _Listing:
    entries: list[_Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _paired_folders(src: Path, suffix: str, loader: Callable[[Path], object], skip_bad: bool) -> _Listing:
    hr_dir, lr_dir = src / "HR", src / "LR"
    for d in (hr_dir, lr_dir):
        if not d.is_dir():
            raise DataError(f"missing folder {d} (expected {src}/HR/*{suffix} and {src}/LR/*{suffix})")
    hr = {p.name: p for p in hr_dir.iterdir() if p.name.endswith(suffix) and p.is_file()}
    lr = {p.name: p for p in lr_dir.iterdir() if p.name.endswith(suffix) and p.is_file()}
    if not hr and not lr:
        raise DataError(f"no *{suffix} files in {hr_dir} or {lr_dir}")
    out = _Listing()
    for name in sorted(set(hr) ^ set(lr)):
        reason = (f"{hr[name]} has no LR partner {lr_dir / name}" if name in hr
                  else f"{lr[name]} has no HR partner {hr_dir / name}")
        if not skip_bad:
            raise DataError(reason)
        out.skipped.append((str(hr.get(name) or lr[name]), reason))
        print(f"skipped bad pair: {reason}", file=sys.stderr)
    for name in sorted(set(hr) & set(lr)):
        h, lo = hr[name], lr[name]
        out.entries.append(_Entry(name[: -len(suffix)], str(h), str(lo),
                                  lambda h=h, lo=lo: (loader(h), loader(lo))))
    if not out.entries:
        raise DataError(f"no HR/LR pairs with matching names in {hr_dir} and {lr_dir}")
    return out


def _load_npy(path: Path) -> object:
    return np.load(path, allow_pickle=False)


def _load_fits(path: Path) -> object:
    try:
        from astropy.io import fits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("reading FITS needs astropy: pip install 'hpc-sr[fits]'") from exc
    data = fits.getdata(path)
    if data is None:
        raise DataError(f"{path}: the primary HDU holds no image")
    return np.asarray(data)  # big-endian FITS data becomes native float32 in as_image


def _load_npz_pair(path: Path) -> tuple[object, object]:
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("hr", "lr") if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {missing} (has {z.files})")
        return z["hr"], z["lr"]


def _npz(src: Path) -> _Listing:
    if src.is_file():
        try:
            with np.load(src, allow_pickle=False) as z:
                missing = [k for k in ("hr", "lr") if k not in z.files]
                if missing:
                    raise DataError(f"{src}: missing array(s) {missing} (has {z.files})")
                hr, lr = z["hr"], z["lr"]
        except (OSError, ValueError) as exc:
            raise DataError(f"{src}: cannot read .npz: {exc}") from exc
        if hr.ndim < 3 or lr.ndim < 3 or len(hr) != len(lr):
            raise DataError(f"{src}: stacked hr {hr.shape} and lr {lr.shape} must be (N, ...), the same N")
        if len(hr) == 0:
            raise DataError(f"{src}: holds no pairs")
        entries = [_Entry(f"{src.stem}[{i}]", f"{src}[hr][{i}]", f"{src}[lr][{i}]",
                          lambda i=i: (hr[i], lr[i])) for i in range(len(hr))]
        return _Listing(entries)
    if not src.is_dir():
        raise DataError(f"npz source {src} is neither a .npz file nor a folder of .npz files")
    files = sorted(p for p in src.iterdir() if p.suffix == ".npz" and p.is_file())
    if not files:
        raise DataError(f"no *.npz files in {src}")
    return _Listing([_Entry(p.stem, f"{p}[hr]", f"{p}[lr]", lambda p=p: _load_npz_pair(p)) for p in files])


def open_source(kind: str, src: str | Path, scale: int = 2, skip_bad: bool = False) -> PairSource:
    """List the pairs of ``src`` (layout ``kind``: deeplense | npz | fits); read them by iterating."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"source {src} does not exist")
    if kind == "deeplense":
        listing = _paired_folders(src, ".npy", _load_npy, skip_bad)
    elif kind == "fits":
        listing = _paired_folders(src, ".fits", _load_fits, skip_bad)
    elif kind == "npz":
        listing = _npz(src)
    else:
        raise DataError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
    return PairSource(listing.entries, scale, skip_bad, str(src), listing.skipped)
