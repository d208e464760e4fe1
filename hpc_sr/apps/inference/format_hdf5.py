"""HDF5 catalogs of cutouts (.h5 / .hdf5): an image dataset (N, H, W) or (N, 1, H, W), and optional ids.

- The images: the dataset ``opts.dataset`` names, else the file's one dataset of that shape (several: an
  error lists them; none: :class:`NotAnImage`). The ids: a 1-D dataset of length N named ``ids`` beside it
  (or at the root); without one the ids are the row numbers. A ``BUNIT`` / ``unit(s)`` attribute of the
  images gives their flux mode (none: the level is kept unless ``flux`` says per-pixel).
- Units: ``opts.catalog_rows`` rows each (id ``<rel>#rows=a:b``); a unit reads only its rows. Its SR images
  (and ``sigma``) go straight into their rows of one data file per input,
  ``<out>/<stem><suffix>.parts/data_<key>.h5``: an HDF5 file of the output's layout (contiguous datasets,
  allocated when the file is created; the first rank to need it creates it, atomically: a hard link of a
  complete temporary file, so exactly one creator wins), written with ``pwritev`` at the rows' byte offsets
  and fdatasync'ed (``durability="batch"``: once per batch of units, before any of its parts is published,
  :mod:`~hpc_sr.apps.inference.publish`): disjoint byte ranges, so the ranks write side by side without
  HDF5 in between. The unit then publishes a small part file ``rows_<a>_<b>.h5`` (its ids; one value per row
  of each normalisation note; the run's provenance; the data file's name and nonce; the sha256 of the rows'
  image and sigma bytes), whose checksum the ledger records. A unit redone (killed before its record) writes
  the same bytes again.
- ``finish``: once every part is there, the data file becomes the output ``<out>/<stem><suffix>.<ext>``: the
  ids written at their path in the same order, attributes ``hpc_sr_*`` on the images (the run's provenance as
  plain values: version, model source, arch, spec and weights sha256, engine, normalisation asked for and
  what it means, flux rule, tiling, sigma calibration; factor, run history, each note common to all rows; a
  note that varies is a per-row dataset ``hpc_sr/<note>``), the input dataset's attributes; then it is
  renamed into place and the parts folder removed. No image byte is copied (before: a merge copied every part
  into a new file). The bytes of the data file outside its image and sigma data (its HDF5 metadata, a few
  KiB) are saved first, so a finish killed half-way is undone by the next one (HDF5 files are not crash-safe
  while they are modified). A merged file that records the parts
  present (or, with the parts gone, holds every row) is left as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.apps import fits_io
from hpc_sr.apps.inference import publish
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
NONCE = "hpc_sr_data_nonce"  # root attribute of a data file: which file a part's rows went into
IOV = 512  # buffers per pwritev call (the system's IOV_MAX is 1024 or more)


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
            shape, dtype = f[name].shape, f[name].dtype
            ids = find_ids(f, name, shape[0], src)
        if shape[0] == 0:
            raise NotAnImage(f"{src}: {name} holds no rows")
        merged = out_dir / rel.parent / output_name(rel.name, opts.suffix)
        stem = merged.name[: -len(next(e for e in (".hdf5", ".h5") if merged.name.lower().endswith(e)))]
        parts = merged.with_name(f"{stem}.parts")
        pixels = int(shape[-2]) * int(shape[-1])
        s = int(opts.scale)
        row = (*shape[1:-2], s * int(shape[-2]), s * int(shape[-1]))  # an output row in the input's layout
        detail = {
            **{"dataset": name, "ids": ids, "total": int(shape[0]), "merged": merged, "parts": parts},
            **{"row": tuple(int(n) for n in row), "dtype": np.dtype(_out_dtype(dtype)).newbyteorder("<").str},
        }
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
        context = _Rows((a, b), ids, ids_dtype)
        return ImageSet(unit, images, [flux] * len(images), labels, context)

    def write(self, images: ImageSet, results: Results, opts: InferenceOptions) -> list[Path]:
        rows: _Rows = images.context
        unit, (a, b) = images.unit, rows.rows
        n = b - a
        if len(results.images) != n or len(results.notes) != n:
            raise DataError(f"{unit.id}: {len(results.images)} SR images / notes for {n} rows")
        data = data_file(unit, results.sigma is not None)
        digests = {}
        fd = os.open(data.path, os.O_RDWR)
        try:
            for key, planes in (("images", results.images), ("sigma", results.sigma)):
                if planes is not None:
                    digests[key] = _pwrite_rows(fd, data, key, a, planes, unit)
            publish.written_in_place(fd, data.path)  # the rows are on disk before the part that says so
        finally:
            os.close(fd)
        with publish.output(unit.target, "w+b") as fh, _h5py().File(fh, "w") as part:
            if rows.ids is not None:
                part.create_dataset("ids", data=rows.ids, dtype=rows.ids_dtype)
            for key, values in _note_columns(results.notes).items():
                part.create_dataset(f"notes/{key}", data=values)
            part.attrs["rows"] = rows.rows
            part.attrs["history"] = json.dumps(list(results.history))
            part.attrs["provenance"] = json.dumps(results.provenance, sort_keys=True)
            part.attrs["data_file"] = data.path.name
            part.attrs[NONCE] = data.nonce
            for key, digest in digests.items():
                part.attrs[f"{key}_sha256"] = digest
        return [unit.target]

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


@dataclass(frozen=True)
class DataFile:
    """The data file of one input as a unit sees it: where each dataset's rows start, in bytes."""

    path: Path
    nonce: str
    offsets: dict[str, int]  # "images" / "sigma" -> byte offset of row 0
    row: tuple[int, ...]
    dtype: str  # little-endian numpy type string ("<f4", "<f8")

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _data_path(unit: Unit, sigma: bool) -> Path:
    """``parts/data_<key>.h5``, the key naming the layout (another layout, another file)."""
    d = unit.detail
    layout = [d["dataset"], d["total"], list(d["row"]), d["dtype"], sigma]
    key = hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]
    return Path(d["parts"]) / f"data_{key}.h5"


def _sigma_name(name: str) -> str:
    return f"{name.rsplit('/', 1)[0]}/sigma" if "/" in name else "sigma"


def data_file(unit: Unit, sigma: bool) -> DataFile:
    """The data file of ``unit``'s input, created when missing (module docstring)."""
    d = unit.detail
    path = _data_path(unit, sigma)
    if not path.is_file():
        _create_data_file(path, d["dataset"], (d["total"], *d["row"]), d["dtype"], sigma)
    with _open(path) as f:  # read each time (~1 ms a unit): the file may have been replaced meanwhile
        offsets = {"images": f[d["dataset"]].id.get_offset()}
        if sigma:
            offsets["sigma"] = f[_sigma_name(d["dataset"])].id.get_offset()
        nonce = str(f.attrs[NONCE])
    if any(v is None for v in offsets.values()):
        raise DataError(f"{path}: a data file without allocated storage (not written by hpc_sr?)")
    return DataFile(path, nonce, offsets, tuple(d["row"]), d["dtype"])


def _create_data_file(path: Path, name: str, shape: tuple[int, ...], dtype: str, sigma: bool) -> None:
    """An HDF5 file with ``name`` (and its sigma) of ``shape``: contiguous, its storage allocated now and
    never filled (a sparse file until the rows arrive), under ``path`` unless another rank made it first."""
    h5py = _h5py()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        with h5py.File(tmp, "w") as f:
            for key in [name, _sigma_name(name)] if sigma else [name]:
                f.create_dataset(key, shape, np.dtype(dtype), dcpl=dcpl)
            f.attrs[NONCE] = uuid.uuid4().hex
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # exactly one creator wins; the others use its file
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _pwrite_rows(fd: int, data: DataFile, key: str, a: int, planes: list[np.ndarray], unit: Unit) -> str:
    """Write ``planes`` (rows a, a+1, ...) at their offsets of ``key``; the sha256 of their bytes."""
    want = data.row[-2:]
    h = hashlib.sha256()
    buffers = []
    for i, plane in enumerate(planes):
        if tuple(plane.shape) != want:
            raise DataError(f"{unit.id}: SR row {a + i} of shape {tuple(plane.shape)}, expected {want}")
        buf = np.ascontiguousarray(plane, dtype=data.dtype)
        h.update(buf)
        buffers.append(buf)
    offset = data.offsets[key] + a * data.row_bytes
    for lo in range(0, len(buffers), IOV):
        chunk = buffers[lo : lo + IOV]
        size = sum(buf.nbytes for buf in chunk)
        done = os.pwritev(fd, chunk, offset)
        if done != size:  # a short write (a full disk, a signal): write the rest the plain way
            rest = b"".join(bytes(memoryview(buf).cast("B")) for buf in chunk)[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + done)
                rest, done = rest[n:], done + n
        offset += size
    return h.hexdigest()


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
    """Turn the data file of one input into ``merged`` (see the module docstring); returns its path."""
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
    h5py = _h5py()
    with h5py.File(parts[0], "r", locking=False) as first:
        data_name, nonce = str(first.attrs["data_file"]), str(first.attrs[NONCE])
        columns = {key: (col.dtype, col[0]) for key, col in first.get("notes", {}).items()}
        history = json.loads(str(first.attrs.get("history", "[]")))
        about = json.loads(str(first.attrs.get("provenance", "{}")))  # parts of older runs: none
    data = folder / data_name
    for unit, path in zip(units, parts, strict=True):
        with h5py.File(path, "r", locking=False) as part:
            if tuple(part.attrs["rows"]) != _rows(unit):
                raise DataError(f"{path}: holds rows {tuple(part.attrs['rows'])}, expected {_rows(unit)}")
            if (str(part.attrs["data_file"]), str(part.attrs[NONCE])) != (data_name, nonce):
                raise DataError(
                    f"{merged}: the rows of {path.name} went into another data file than those of "
                    f"{parts[0].name}; rerun with --overwrite"
                )
    with _open(units[0].src) as f:
        attrs = dict(f[name].attrs)
        ids_dtype = f[ids_name].dtype if ids_name else None
    backup = _restore_or_save(data, name)
    try:
        with h5py.File(data, "r+", locking=False) as out:
            if str(out.attrs.get(NONCE)) != nonce:
                raise DataError(
                    f"{data}: not the data file the parts were written into; rerun with --overwrite"
                )
            ds = out[name]
            common = _common_notes(parts, columns)
            ids = out.create_dataset(ids_name, (total,), ids_dtype) if ids_name else None
            per_row = {
                key: out.create_dataset(f"{NOTES}/{key}", (total,), dtype)
                for key, (dtype, _) in columns.items()
                if key not in common
            }
            for unit, path in zip(units, parts, strict=True):  # one part's ids and notes at a time
                a, b = _rows(unit)
                with h5py.File(path, "r", locking=False) as part:
                    if ids is not None:
                        ids[a:b] = part["ids"][...]
                    for key, column in per_row.items():
                        column[a:b] = part["notes"][key][...]
            for key, value in attrs.items():
                ds.attrs[key] = value
            ds.attrs.update(_provenance(opts, history, about, common, per_row, total, listing))
            del out.attrs[NONCE]
        with open(data, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        _restore(data, backup)  # as it was before: the next finish starts from the same file
        raise
    os.replace(data, merged)
    fsync_dir(merged.parent)
    _remove_parts(folder, merged)
    return merged


def _restore_or_save(data: Path, name: str) -> Path:
    """The backup of ``data``'s bytes outside its image and sigma data (its HDF5 metadata): restored into it
    when a finish was killed after saving it, else saved now (atomically). Returns the backup's path."""
    backup = data.with_name(data.name + ".meta")
    if backup.is_file() and _restore(data, backup):
        return backup
    with _open(data) as f:
        spans = [(f[key].id.get_offset(), f[key].id.get_storage_size()) for key in (name, _sigma_name(name))
                 if key in f]  # fmt: skip
    size = data.stat().st_size
    keep, pos = [], 0
    for start, length in sorted(spans):
        keep.append((pos, start - pos))
        pos = start + length
    keep.append((pos, size - pos))
    with open(data, "rb") as fh:
        pieces = [(start, os.pread(fh.fileno(), length, start)) for start, length in keep if length > 0]
    head = {"inode": data.stat().st_ino, "size": size, "pieces": [[s, len(b)] for s, b in pieces]}
    with atomic_open(backup, "wb") as out:
        out.write(json.dumps(head).encode() + b"\n")
        for _, chunk in pieces:
            out.write(chunk)
    return backup


def _restore(data: Path, backup: Path) -> bool:
    """Put the saved metadata bytes back into ``data`` and cut it to its saved size; False (nothing done)
    when the backup is of another file (``data`` was made anew since)."""
    with open(backup, "rb") as fh:
        head = json.loads(fh.readline())
        pieces = [(start, fh.read(length)) for start, length in head["pieces"]]
    if head.get("inode") != data.stat().st_ino:
        return False
    fd = os.open(data, os.O_RDWR)
    try:
        for start, chunk in pieces:
            os.pwrite(fd, chunk, start)
        os.ftruncate(fd, int(head["size"]))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


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
    about: dict[str, Any],
    common: dict[str, Any],
    per_row: dict[str, Any],
    total: int,
    listing: str,
) -> dict[str, Any]:
    """The ``hpc_sr_*`` attributes of the merged images: the run's provenance (``Results.provenance``, as the
    first part recorded it: version, model, model_arch, model_spec, model_sha256, engine, normalize_option,
    normalization, flux_option, tile, overlap, self_ensemble, sigma_calibration, ...), the factor, the
    history lines, the notes and the rows."""
    attrs: dict[str, Any] = {f"hpc_sr_{key}": value for key, value in about.items() if value is not None}
    attrs.setdefault("hpc_sr_version", __version__)
    attrs.update(
        {
            "hpc_sr_upscale": int(opts.scale),
            "hpc_sr_history": history,
            "hpc_sr_rows": total,
            "hpc_sr_parts": listing,
        }
    )
    if opts.samples:
        attrs["hpc_sr_samples"] = int(opts.samples)
    for key, value in common.items():
        attrs[f"hpc_sr_{key}"] = value
    for key in per_row:
        attrs[f"hpc_sr_{key}"] = f"per row: /{NOTES}/{key}"
    return attrs
