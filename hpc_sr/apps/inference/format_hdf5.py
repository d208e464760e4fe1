"""HDF5 catalogs of cutouts (.h5 / .hdf5): an image dataset (N, H, W) or (N, 1, H, W), and optional ids.

- The images: the dataset ``opts.dataset`` names, else the file's one dataset of that shape (several: an
  error lists them; none: :class:`NotAnImage`). The ids: a 1-D dataset of length N named ``ids`` beside it
  (or at the root); without one the ids are the row numbers. A ``BUNIT`` / ``unit(s)`` attribute of the
  images gives their flux mode (none: the level is kept unless ``flux`` says per-pixel).
- Units: ``opts.catalog_rows`` rows each (id ``<rel>#rows=a:b``); a unit reads only its rows and publishes a
  part file ``<out>/<stem><suffix>.parts/rows_<a>_<b>.h5`` (images in the input's layout, float64 kept and
  other types as float32; its ids; ``sigma`` with samples; one value per row of each normalisation note).
- ``finish``: once every part is there, one file ``<out>/<stem><suffix>.<ext>``: the images at the input's
  dataset path (its attributes kept), the ids at theirs in the same order, ``sigma`` beside the images,
  attributes ``hpc_sr_*`` on the images (version, factor, run history, each note common to all rows; a note
  that varies is a per-row dataset ``hpc_sr/<note>``). Merged part by part (the memory of one part, whatever
  the catalog's length) into a temporary file renamed into place, then the parts are removed. A merged file
  that records the parts present (or, with the parts gone, holds every row) is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.apps import fits_io
from hpc_sr.apps.inference.formats import (
    FORMATS,
    ImageSet,
    InferenceOptions,
    NotAnImage,
    Results,
    Unit,
    output_name,
)
from hpc_sr.atomic import atomic_open, fsync_dir
from hpc_sr.errors import DataError
from hpc_sr.version import __version__

NOTES = "hpc_sr"  # group of the per-row notes in the merged file
UNIT_ATTRS = ("BUNIT", "bunit", "unit", "units")


def _h5py() -> Any:
    import h5py

    return h5py


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """``path`` opened read-only without HDF5 file locking (shared, read-only catalogs on Lustre / NFS)."""
    h5py = _h5py()
    try:
        f = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read HDF5: {exc}") from None
    with f:
        yield f


def _datasets(f: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    f.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, _h5py().Dataset) else None)
    return found


def _image_like(ds: Any) -> bool:
    shape = ds.shape or ()
    layout = len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)
    return layout and min(shape[1:]) > 0 and ds.dtype.kind in "fiub"


def find_images(f: Any, wanted: str, path: Path) -> str:
    """The image dataset's path: ``wanted``, or the file's only (N, H, W) / (N, 1, H, W) numeric dataset."""
    if wanted:
        ds = f.get(wanted)
        if not isinstance(ds, _h5py().Dataset) or not _image_like(ds):
            what = "no such dataset" if ds is None else f"shape {getattr(ds, 'shape', None)}"
            raise DataError(
                f"{path}: dataset {wanted!r} is not a (N, H, W) or (N, 1, H, W) image stack ({what})"
            )
        return ds.name.lstrip("/")
    everything = _datasets(f)
    found = [name for name, ds in everything if _image_like(ds)]
    if not found:
        listing = ", ".join(f"{name} {ds.shape}" for name, ds in everything) or "no dataset"
        raise NotAnImage(f"{path}: holds no (N, H, W) or (N, 1, H, W) image dataset: {listing}")
    if len(found) > 1:
        shapes = ", ".join(f"{name} {f[name].shape}" for name in found)
        raise DataError(f"{path}: several image datasets ({shapes}); name one with --dataset")
    return found[0]


def find_ids(f: Any, images: str, n: int, path: Path) -> str | None:
    """The ``ids`` dataset beside the images (or at the root): 1-D of length ``n``; None without one."""
    parent = images.rsplit("/", 1)[0] + "/" if "/" in images else ""
    for name in dict.fromkeys((f"{parent}ids", "ids")):
        ds = f.get(name)
        if ds is not None:
            if not isinstance(ds, _h5py().Dataset) or ds.shape != (n,):
                raise DataError(
                    f"{path}: {name} of shape {getattr(ds, 'shape', None)} is not 1-D of length {n}"
                )
            return name
    return None


def _out_dtype(dtype: np.dtype) -> type:
    return fits_io.output_dtype(np.empty(0, dtype))


@dataclass
class _Rows:
    """A unit's rows as read: where they go and what the part needs."""

    rows: tuple[int, int]
    layout: int  # 3: (N, H, W); 4: (N, 1, H, W)
    dtype: type  # the output type
    ids: np.ndarray | None
    ids_dtype: Any = None  # the ids' HDF5 type (variable-length strings included)


@FORMATS.register("hdf5")
class Hdf5Format:
    """HDF5 catalogs (see the module docstring)."""

    suffixes = (".h5", ".hdf5")

    def plan(self, src: Path, rel: Path, out_dir: Path, opts: InferenceOptions) -> list[Unit]:
        if opts.catalog_rows < 1:
            raise DataError(f"catalog_rows={opts.catalog_rows}: need at least 1")
        with _open(src) as f:
            name = find_images(f, opts.dataset, src)
            shape = f[name].shape
            ids = find_ids(f, name, shape[0], src)
        if shape[0] == 0:
            raise NotAnImage(f"{src}: {name} holds no rows")
        merged = out_dir / rel.parent / output_name(rel.name, opts.suffix)
        stem = merged.name[: -len(next(e for e in (".hdf5", ".h5") if merged.name.lower().endswith(e)))]
        parts = merged.with_name(f"{stem}.parts")
        pixels = int(shape[-2]) * int(shape[-1])
        detail = {"dataset": name, "ids": ids, "total": int(shape[0]), "merged": merged, "parts": parts}
        units = []
        for a in range(0, shape[0], opts.catalog_rows):
            b = min(a + opts.catalog_rows, shape[0])
            target = parts / f"rows_{a}_{b}.h5"
            rows = {**detail, "rows": (a, b)}
            units.append(Unit(f"{rel.as_posix()}#rows={a}:{b}", src, "hdf5", target, (b - a) * pixels, rows))
        return units

    def read(self, unit: Unit, opts: InferenceOptions) -> ImageSet:
        a, b = _rows(unit)
        name, ids_name = unit.detail["dataset"], unit.detail["ids"]
        with _open(unit.src) as f:
            ds = f.get(name)
            if not isinstance(ds, _h5py().Dataset) or ds.shape[0] != unit.detail["total"]:
                raise DataError(f"{unit.src}: {name} changed since the run was planned (rows, shape)")
            block = ds[a:b]  # only this unit's rows
            ids = f[ids_name][a:b] if ids_name else None
            ids_dtype = f[ids_name].dtype if ids_name else None
            bunit = next((ds.attrs[k] for k in UNIT_ATTRS if k in ds.attrs), None)
        bunit = bunit.decode() if isinstance(bunit, bytes) else None if bunit is None else str(bunit)
        flux = fits_io.resolve_flux(opts.flux, bunit, f"{unit.src}[{name}]", warn_unknown=bunit is not None)
        planes = block[:, 0] if block.ndim == 4 else block
        labels = [f"{unit.src}[{name}][{a + i}]" for i in range(b - a)]
        if ids is not None:
            labels = [f"{label} id={_text(v)}" for label, v in zip(labels, ids, strict=True)]
        images = [np.array(p, dtype=np.float32) for p in planes]
        context = _Rows((a, b), block.ndim, _out_dtype(block.dtype), ids, ids_dtype)
        return ImageSet(unit, images, [flux] * len(images), labels, context)

    def write(self, images: ImageSet, results: Results, opts: InferenceOptions) -> list[Path]:
        rows: _Rows = images.context
        n = rows.rows[1] - rows.rows[0]
        if len(results.images) != n or len(results.notes) != n:
            raise DataError(f"{images.unit.id}: {len(results.images)} SR images / notes for {n} rows")
        with atomic_open(images.unit.target, "w+b") as fh, _h5py().File(fh, "w") as part:
            part.create_dataset("images", data=_layout(results.images, rows))
            if results.sigma is not None:
                part.create_dataset("sigma", data=_layout(results.sigma, rows))
            if rows.ids is not None:
                part.create_dataset("ids", data=rows.ids, dtype=rows.ids_dtype)
            for key, values in _note_columns(results.notes).items():
                part.create_dataset(f"notes/{key}", data=values)
            part.attrs["rows"] = rows.rows
            part.attrs["history"] = json.dumps(list(results.history))
        return [images.unit.target]

    def finish(self, units: list[Unit], opts: InferenceOptions) -> list[Path]:
        by_output: dict[Path, list[Unit]] = {}
        for u in units:
            by_output.setdefault(u.detail["merged"], []).append(u)
        return [_merge(merged, sorted(group, key=_rows), opts) for merged, group in by_output.items()]


# ----------------------------------------------------------------------------------------------- parts
def _rows(unit: Unit) -> tuple[int, int]:
    a, b = unit.detail["rows"]
    return int(a), int(b)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _layout(planes: list[np.ndarray], rows: _Rows) -> np.ndarray:
    stack = np.stack(planes).astype(rows.dtype, copy=False)
    return stack[:, None] if rows.layout == 4 else stack


def _note_columns(notes: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One array per note key (strings as UTF-8), a value per row; keys of non-scalar values left out."""
    columns = {}
    for key in dict.fromkeys(k for note in notes for k in note):
        values = [note.get(key) for note in notes]
        if all(isinstance(v, str) for v in values):
            columns[key] = np.array(values, dtype=_h5py().string_dtype())
        elif all(isinstance(v, bool | int | float | np.number) for v in values):
            columns[key] = np.asarray(values)
    return columns


# ----------------------------------------------------------------------------------------------- merge
def _listing(parts: list[Path]) -> str:
    """sha256 of the parts as they are now (name, size, mtime): what a merged file records it came from."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in parts]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _merged_rows(merged: Path, name: str) -> tuple[int, str] | None:
    """(rows, parts listing) a merged file records; None when it is missing or unreadable."""
    if not merged.is_file():
        return None
    try:
        with _open(merged) as f:
            ds = f[name]
            return int(ds.attrs["hpc_sr_rows"]), str(ds.attrs["hpc_sr_parts"])
    except (DataError, KeyError, OSError):
        return None


def _remove_parts(folder: Path, merged: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for stale in merged.parent.glob(f".{merged.name}.*.tmp"):  # a killed merge's (finish holds the lock)
        stale.unlink(missing_ok=True)
    fsync_dir(merged.parent)


def _merge(merged: Path, units: list[Unit], opts: InferenceOptions) -> Path:
    """Merge the parts of one input into ``merged`` (see the module docstring); returns its path."""
    detail = units[0].detail
    name, ids_name, total, folder = detail["dataset"], detail["ids"], detail["total"], detail["parts"]
    spans = [_rows(u) for u in units]
    if spans[0][0] != 0 or spans[-1][1] != total or any(b != c for (_, b), (c, _) in zip(spans, spans[1:])):
        raise DataError(f"{merged}: the units' rows {spans} do not cover 0:{total} once")
    parts = [u.target for u in units]
    have = [p.is_file() for p in parts]
    done = _merged_rows(merged, name)
    if all(have) and done is not None and done[1] == _listing(parts):
        _remove_parts(folder, merged)  # merged, then killed before the parts were removed
        return merged
    if not all(have):
        if done is not None and done[0] == total:
            _remove_parts(folder, merged)  # merged; the removal of the parts was interrupted
            return merged
        missing = [p.name for p, ok in zip(parts, have, strict=True) if not ok]
        raise DataError(f"{merged}: {len(missing)} part(s) missing in {folder}: {', '.join(missing[:5])}")
    listing = _listing(parts)
    with _open(units[0].src) as f:
        attrs = dict(f[name].attrs)
        ids_dtype = f[ids_name].dtype if ids_name else None
    h5py = _h5py()
    with atomic_open(merged, "w+b") as fh, h5py.File(fh, "w") as out:
        with h5py.File(parts[0], "r", locking=False) as first:
            images, sigma = first["images"], first.get("sigma")
            shape = (total, *images.shape[1:])
            chunk = (1, *images.shape[1:])
            ds = out.create_dataset(name, shape, images.dtype, chunks=chunk)
            sig = None
            if sigma is not None:
                sig_name = f"{name.rsplit('/', 1)[0]}/sigma" if "/" in name else "sigma"
                sig = out.create_dataset(sig_name, shape, sigma.dtype, chunks=chunk)
            notes = {key: first["notes"][key] for key in first.get("notes", {})}
            columns = {key: (col.dtype, col[0]) for key, col in notes.items()}
            history = json.loads(str(first.attrs.get("history", "[]")))
        ids = out.create_dataset(ids_name, (total,), ids_dtype) if ids_name else None
        common = _common_notes(parts, columns)
        per_row = {
            key: out.create_dataset(f"{NOTES}/{key}", (total,), dtype)
            for key, (dtype, _) in columns.items()
            if key not in common
        }
        for unit, path in zip(units, parts, strict=True):  # one part in memory at a time
            a, b = _rows(unit)
            with h5py.File(path, "r", locking=False) as part:
                if tuple(part.attrs["rows"]) != (a, b) or part["images"].shape[0] != b - a:
                    raise DataError(f"{path}: holds rows {tuple(part.attrs['rows'])}, expected {a}:{b}")
                ds[a:b] = part["images"][...]
                if sig is not None:
                    sig[a:b] = part["sigma"][...]
                if ids is not None:
                    ids[a:b] = part["ids"][...]
                for key, column in per_row.items():
                    column[a:b] = part["notes"][key][...]
        for key, value in attrs.items():
            ds.attrs[key] = value
        ds.attrs.update(_provenance(opts, history, common, per_row, total, listing))
    _remove_parts(folder, merged)
    return merged


def _common_notes(parts: list[Path], columns: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The notes that hold one value on every row of every part (read a column at a time)."""
    common = {key: first for key, (_, first) in columns.items()}
    for path in parts:
        if not common:
            break
        with _h5py().File(path, "r", locking=False) as part:
            for key in list(common):
                column = part["notes"][key][...]
                if not np.all(column == common[key]):
                    del common[key]
    return {
        k: v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
        for k, v in common.items()
    }


def _provenance(
    opts: InferenceOptions,
    history: list[str],
    common: dict[str, Any],
    per_row: dict[str, Any],
    total: int,
    listing: str,
) -> dict[str, Any]:
    """The ``hpc_sr_*`` attributes of the merged images."""
    attrs: dict[str, Any] = {
        "hpc_sr_version": __version__,
        "hpc_sr_upscale": int(opts.scale),
        "hpc_sr_history": history,
        "hpc_sr_rows": total,
        "hpc_sr_parts": listing,
    }
    if opts.samples:
        attrs["hpc_sr_samples"] = int(opts.samples)
    for key, value in common.items():
        attrs[f"hpc_sr_{key}"] = value
    for key in per_row:
        attrs[f"hpc_sr_{key}"] = f"per row: /{NOTES}/{key}"
    return attrs
