"""HDF5 shards + manifest.json: write (simulate / pack), load, verify.

A dataset directory holds ``shard-00000.h5, shard-00001.h5, ...`` and ``manifest.json``. Each shard has
datasets ``hr`` (N, 1, H, W) float32, ``lr`` (N, 1, h, w) float32, optionally ``params`` (N, P) float32
(attribute ``param_names``) and ``names`` (source file stem per pair), chunked one image per chunk, and file
attributes ``format_version``, ``source``, ``scale``, ``created``.

The manifest records the shards (file, count, bytes, sha256), the shapes, the scale, the total count, the
train/val/test split and the provenance. The split is a permutation of the global indices (shard order,
then position in the shard) drawn from ``numpy.random.default_rng(seed)``: the first ``round(f_train * N)``
permuted indices are train, the next ``round(f_val * N)`` val, the rest test; each split is stored as a
sorted index list. It does not depend on the order in which files were listed on disk.

Writes are atomic: every shard is written under a temporary name (``.shard-00000.h5.tmp``) and renamed when
complete, and the manifest is written last, so a half-written shard is never listed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.atomic import fsync_dir
from hpc_sr.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
COMPRESSIONS = ("none", "lzf", "gzip")


# ----------------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ShardInfo:
    file: str
    count: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """The parsed manifest.json of a shard directory (``root``)."""

    root: Path
    count: int
    scale: int
    hr_shape: tuple[int, int, int]
    lr_shape: tuple[int, int, int]
    shards: list[ShardInfo]
    split: dict[str, np.ndarray]
    split_seed: int
    split_fractions: dict[str, float]
    param_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def starts(self) -> np.ndarray:
        """Global index of the first pair of each shard (length = shards + 1, last = count)."""
        return np.concatenate([[0], np.cumsum([s.count for s in self.shards])]).astype(np.int64)

    def shard_path(self, i: int) -> Path:
        return self.root / self.shards[i].file

    def split_indices(self, name: str) -> np.ndarray:
        """Sorted global indices (int64) of split ``name`` (train | val | test)."""
        if name not in self.split:
            raise DataError(f"{self.root / MANIFEST}: no split {name!r}; splits are {sorted(self.split)}")
        return self.split[name]

    def locate(self, index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, position in shard) of global indices."""
        idx = np.asarray(index, dtype=np.int64)
        starts = self.starts
        shard = np.searchsorted(starts, idx, side="right") - 1
        return shard, idx - starts[shard]

    def to_json(self) -> str:
        d = {
            "format_version": self.format_version,
            "count": self.count,
            "scale": self.scale,
            "hr_shape": list(self.hr_shape),
            "lr_shape": list(self.lr_shape),
            "param_names": list(self.param_names),
            "shards": [vars(s) for s in self.shards],
            "split": {"seed": self.split_seed, "fractions": self.split_fractions,
                      "sizes": {k: int(len(v)) for k, v in self.split.items()},
                      "indices": {k: f"@@{k}@@" for k in self.split}},
            "provenance": self.provenance,
        }
        text = json.dumps(d, indent=2)
        for k, v in self.split.items():  # index lists on one line each, not one number per line
            text = text.replace(f'"@@{k}@@"', json.dumps([int(x) for x in v], separators=(",", ":")))
        return text + "\n"


def make_split(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Seeded split of ``range(n)`` into train/val/test: sorted index arrays, disjoint and covering."""
    fr = check_fractions(fractions)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fr["val"] * n))
    n_test = min(int(round(fr["test"] * n)), n - n_val)
    n_train = n - n_val - n_test
    cuts = [0, n_train, n_train + n_val, n]
    return {name: np.sort(perm[cuts[i]:cuts[i + 1]]).astype(np.int64) for i, name in enumerate(SPLITS)}


def check_fractions(fractions: Sequence[float]) -> dict[str, float]:
    fr = [float(x) for x in fractions]
    if len(fr) != 3 or any(not np.isfinite(x) or x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"split fractions train,val,test must be three numbers >= 0 summing to 1; got {fr}")
    return dict(zip(SPLITS, fr))


def _fail(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: {msg}")


def load_manifest(root: str | Path) -> Manifest:
    """Read and validate ``root/manifest.json``; raise DataError naming the file and the problem."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: {root} is not a shard directory (see `hpc-sr simulate`/`pack`)")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(path, f"unreadable manifest: {exc}") from exc
    if not isinstance(d, dict):
        raise _fail(path, "not a JSON object")
    if d.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format_version {d.get('format_version')!r}; this hpc_sr reads {FORMAT_VERSION}")
    try:
        shards = [ShardInfo(str(s["file"]), int(s["count"]), int(s["bytes"]), str(s["sha256"]))
                  for s in d["shards"]]
        split = {k: np.asarray(v, dtype=np.int64) for k, v in d["split"]["indices"].items()}
        m = Manifest(root=root, count=int(d["count"]), scale=int(d["scale"]),
                     hr_shape=tuple(int(x) for x in d["hr_shape"]),  # type: ignore[arg-type]
                     lr_shape=tuple(int(x) for x in d["lr_shape"]),  # type: ignore[arg-type]
                     shards=shards, split=split, split_seed=int(d["split"]["seed"]),
                     split_fractions={k: float(v) for k, v in d["split"]["fractions"].items()},
                     param_names=[str(x) for x in d.get("param_names", [])],
                     provenance=dict(d.get("provenance", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"malformed manifest ({type(exc).__name__}: {exc})") from exc
    _validate(m, path)
    return m


def _validate(m: Manifest, path: Path) -> None:
    if sum(s.count for s in m.shards) != m.count:
        raise _fail(path, f"shard counts sum to {sum(s.count for s in m.shards)}, the count is {m.count}")
    if len(m.hr_shape) != 3 or len(m.lr_shape) != 3 or \
            m.hr_shape[1:] != (m.lr_shape[1] * m.scale, m.lr_shape[2] * m.scale):
        raise _fail(path, f"hr_shape {m.hr_shape} is not scale {m.scale} x lr_shape {m.lr_shape}")
    if set(m.split) != set(SPLITS):
        raise _fail(path, f"split names {sorted(m.split)}; expected {list(SPLITS)}")
    allidx = np.concatenate([m.split[k] for k in SPLITS])
    if len(allidx) != m.count or (m.count and (allidx.min() < 0 or allidx.max() >= m.count)) or \
            len(np.unique(allidx)) != m.count:
        raise _fail(path, "the split index lists are not a disjoint cover of range(count)")


# ----------------------------------------------------------------------------------------------- writing
def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _compression_kwargs(compression: str) -> dict[str, Any]:
    if compression not in COMPRESSIONS:
        raise DataError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    return {"none": {}, "lzf": {"compression": "lzf"},
            "gzip": {"compression": "gzip", "compression_opts": 4}}[compression]


class ShardWriter:
    """Append batches of pairs; shards of ``shard_size`` pairs are written under temp names and renamed."""

    def __init__(self, out: str | Path, shard_size: int, compression: str = "none", source: str = "",
                 scale: int = 2, param_names: Sequence[str] | None = None, with_names: bool = False,
                 with_lr_blur: bool = False) -> None:
        if shard_size < 1:
            raise DataError(f"shard_size must be >= 1, got {shard_size}")
        self.out = Path(out)
        self.shard_size = shard_size
        self.comp = _compression_kwargs(compression)
        self.source, self.scale = source, scale
        self.param_names = list(param_names or [])
        self.with_names, self.with_lr_blur = with_names, with_lr_blur
        self.shards: list[ShardInfo] = []
        self.hr_shape: tuple[int, ...] | None = None
        self.lr_shape: tuple[int, ...] | None = None
        self._f: Any = None
        self._tmp: Path | None = None
        self._n = 0

    def add(self, hr: np.ndarray, lr: np.ndarray, params: np.ndarray | None = None,
            names: Sequence[str] | None = None, lr_blur: np.ndarray | None = None) -> None:
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        lr = np.ascontiguousarray(lr, dtype=np.float32)
        if self.hr_shape is None:
            self.hr_shape, self.lr_shape = hr.shape[1:], lr.shape[1:]
        if hr.shape[1:] != self.hr_shape or lr.shape[1:] != self.lr_shape or len(hr) != len(lr):
            raise DataError(f"batch shapes {hr.shape}/{lr.shape} differ from {self.hr_shape}/{self.lr_shape}")
        if (bool(self.param_names) != (params is not None) or self.with_names != (names is not None)
                or self.with_lr_blur != (lr_blur is not None)):
            raise DataError("every batch must carry params/names/lr_blur when the writer was made with them")
        done = 0
        while done < len(hr):
            if self._f is None:
                self._open()
            k = min(len(hr) - done, self.shard_size - self._n)
            sl = slice(done, done + k)
            self._append("hr", hr[sl])
            self._append("lr", lr[sl])
            if params is not None:
                self._append("params", np.asarray(params[sl], dtype=np.float32))
            if names is not None:
                self._append("names", np.asarray(list(names[sl]), dtype=object))
            if lr_blur is not None:
                self._append("lr_blur", np.asarray(lr_blur[sl], dtype=np.float32))
            self._n += k
            done += k
            if self._n == self.shard_size:
                self._finish()

    def close(self) -> list[ShardInfo]:
        if self._f is not None and self._n:
            self._finish()
        self.abort()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temp file); finished shards stay."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def _open(self) -> None:
        import h5py

        name = f"shard-{len(self.shards):05d}.h5"
        self._tmp = self.out / f".{name}.tmp"
        f = h5py.File(self._tmp, "w")
        assert self.hr_shape is not None and self.lr_shape is not None
        f.attrs.update(format_version=FORMAT_VERSION, source=self.source, scale=self.scale,
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        for key, shp in (("hr", self.hr_shape), ("lr", self.lr_shape)):
            f.create_dataset(key, shape=(0, *shp), maxshape=(None, *shp), dtype="f4", chunks=(1, *shp),
                             **self.comp)
        if self.param_names:
            p = f.create_dataset("params", shape=(0, len(self.param_names)),
                                 maxshape=(None, len(self.param_names)), dtype="f4", chunks=True)
            p.attrs["param_names"] = self.param_names
        if self.with_names:
            f.create_dataset("names", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True)
        if self.with_lr_blur:  # each pair's LR blur (hpc_sr.data.lr_blur): FWHM in LR pixels
            f.create_dataset("lr_blur", shape=(0,), maxshape=(None,), dtype="f4", chunks=True)
        self._f, self._n = f, 0

    def _append(self, key: str, arr: np.ndarray) -> None:
        ds = self._f[key]
        n = ds.shape[0]
        ds.resize(n + len(arr), axis=0)
        ds[n:] = arr

    def _finish(self) -> None:
        assert self._tmp is not None
        self._f.close()
        self._f = None
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        name = self._tmp.name[1:-len(".tmp")]
        info = ShardInfo(name, self._n, self._tmp.stat().st_size, sha256_file(self._tmp))
        os.replace(self._tmp, self.out / name)
        fsync_dir(self.out)
        self._tmp = None
        self.shards.append(info)


def _prepare_out(out: Path) -> None:
    if (out / MANIFEST).exists():
        raise DataError(f"{out} already holds a dataset ({MANIFEST}); remove it or choose another output")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.h5.tmp"):  # left by a run that was killed
        stale.unlink()


def _provenance(command: str, **extra: Any) -> dict[str, Any]:
    from hpc_sr.version import __version__

    return {"command": command, "argv": list(sys.argv), "package_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}


def _write_manifest(out: Path, writer: ShardWriter, split: Sequence[float], seed: int,
                    provenance: dict[str, Any]) -> Manifest:
    from hpc_sr.config import atomic_write_text

    count = sum(s.count for s in writer.shards)
    if count == 0 or writer.hr_shape is None or writer.lr_shape is None:
        raise DataError(f"{out}: no pairs were written")
    m = Manifest(root=out, count=count, scale=writer.scale, hr_shape=tuple(writer.hr_shape),  # type: ignore
                 lr_shape=tuple(writer.lr_shape), shards=writer.shards,  # type: ignore[arg-type]
                 split=make_split(count, split, seed), split_seed=seed,
                 split_fractions=check_fractions(split), param_names=writer.param_names,
                 provenance=provenance)
    _validate(m, out / MANIFEST)
    atomic_write_text(out / MANIFEST, m.to_json())
    return m


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", dynamic_ncols=True, mininterval=1.0)


def simulate_to_shards(out: str | Path, num: int, preset: str = "deeplense_sr", seed: int = 0,
                       shard_size: int = 4096, device: str = "cpu", hr_size: int = 150,
                       compression: str = "none", split: Sequence[float] = (0.8, 0.1, 0.1),
                       batch_size: int = 256, scale: int = 2) -> Manifest:
    """Simulate ``num`` lensing pairs in batches with LensingSimulator and write them as shards."""
    import torch

    from hpc_sr.data.lensing import LensingSimulator
    from hpc_sr.data.lr_relation import preset_lr_relation

    if num < 1:
        raise DataError(f"num must be >= 1, got {num}")
    check_fractions(split)
    out = Path(out)
    _prepare_out(out)
    sim = LensingSimulator(preset=preset, hr_size=hr_size, scale=scale, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    writer = ShardWriter(out, shard_size, compression, source=f"simulate:{preset}", scale=scale,
                         param_names=sim.param_names)
    try:
        with _progress(num, "simulate") as bar:
            for start in range(0, num, batch_size):
                b = sim.sample(min(batch_size, num - start), generator=gen)
                hr, lr = b.hr.detach().cpu().numpy(), b.lr.detach().cpu().numpy()
                ok = np.isfinite(hr).all(axis=(1, 2, 3)) & np.isfinite(lr).all(axis=(1, 2, 3))
                bad = np.flatnonzero(~ok)
                if len(bad):
                    raise DataError(f"simulator preset {preset!r} (seed {seed}) made non-finite images at "
                                    f"indices {(bad + start).tolist()[:10]}; no manifest written ({out})")
                writer.add(hr, lr, params=b.params.detach().cpu().numpy())
                bar.update(len(b.hr))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    prov = _provenance("simulate", preset=preset, seed=seed, hr_size=hr_size, device=device, num=num,
                       lr_relation=preset_lr_relation(preset).to_json())
    return _write_manifest(out, writer, split, seed, prov)


def pack_to_shards(kind: str, src: str | Path, out: str | Path, shard_size: int = 4096, seed: int = 0,
                   scale: int = 2, compression: str = "none", split: Sequence[float] = (0.8, 0.1, 0.1),
                   skip_bad: bool = False, batch_size: int = 64) -> Manifest:
    """Read the pairs of ``src`` (see hpc_sr.data.sources) and write them as shards with their names.

    A ``src``/lr_blur.csv (``name,lr_blur`` rows: each pair's file name or stem and its LR blur, the FWHM in
    LR pixels of the kernel from HR's PSF to LR's) is packed as each pair's ``lr_blur`` row, for a generator
    told its LR's blur (``data.lr_blur=data``); a pair it does not list is a DataError naming both."""
    from hpc_sr.data.lr_blur import LR_BLUR_KEY, read_lr_blur_csv
    from hpc_sr.data.lr_relation import measure_lr_relation
    from hpc_sr.data.sources import open_source

    check_fractions(split)
    source = open_source(kind, src, scale=scale, skip_bad=skip_bad)
    table_path = Path(src) / f"{LR_BLUR_KEY}.csv"
    table = read_lr_blur_csv(table_path) if Path(src).is_dir() and table_path.is_file() else None
    if table is not None:  # rows may name a pair by its file name or by its stem (the packed name)
        table = {**{Path(k).stem: v for k, v in table.items()}, **table}
    out = Path(out)
    _prepare_out(out)
    writer = ShardWriter(out, shard_size, compression, source=f"{kind}:{Path(src).resolve()}", scale=scale,
                         with_names=True, with_lr_blur=table is not None)
    relation = None
    try:
        with _progress(source.candidates, f"pack {kind}") as bar:
            for batch in _batched(source, batch_size):
                hr, lr = np.stack([p.hr for p in batch]), np.stack([p.lr for p in batch])
                names = [p.name for p in batch]
                blur = None if table is None else _blur_rows(table, names, table_path)
                writer.add(hr, lr, names=names, lr_blur=blur)
                if relation is None:  # measured once, on the first batch, and recorded in the manifest
                    relation = measure_lr_relation(hr, lr, scale, f"{src} (first pairs packed)")
                bar.update(len(batch))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if source.skipped:
        print(f"skipped {len(source.skipped)} bad pair(s) of {source.candidates + len(source.skipped)}",
              file=sys.stderr)
    prov = _provenance("pack", kind=kind, source_dir=str(Path(src).resolve()), seed=seed,
                       skipped=[{"file": f, "reason": r} for f, r in source.skipped],
                       lr_relation=None if relation is None else relation.to_json())
    if relation is not None and relation.is_mean is False:
        print(f"note: {relation.describe()}: the LR-consistency layer and loss are refused on this set, and "
              "metrics that assume the mean are computed through an LR model or left out", file=sys.stderr)
    return _write_manifest(out, writer, split, seed, prov)


def _blur_rows(table: dict[str, float], names: Sequence[str], where: Path) -> np.ndarray:
    """The LR blur of each pair ``names`` from an lr_blur.csv table."""
    out = []
    for name in names:
        value = table.get(name)
        if value is None:
            raise DataError(f"{where}: no lr_blur row for pair {name!r} (rows are 'name,lr_blur')")
        out.append(value)
    return np.asarray(out, np.float32)


def _batched(items: Iterable[Any], n: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------- checking
def check_shard_file(m: Manifest, i: int, hash_it: bool = True) -> None:
    """Raise DataError naming shard ``i`` if it is missing, of another size, or (hash_it) another sha256."""
    info, path = m.shards[i], m.shard_path(i)
    if not path.is_file():
        raise DataError(f"shard {path} listed in {m.root / MANIFEST} is missing")
    size = path.stat().st_size
    if size != info.bytes:
        raise DataError(f"shard {path} is {size} bytes, the manifest says {info.bytes} (truncated/changed)")
    if hash_it and sha256_file(path) != info.sha256:
        raise DataError(f"shard {path} fails its sha256 check (corrupt or changed since it was written)")


def verify_shards(root: str | Path, quiet: bool = False) -> Manifest:
    """Recheck every shard against the manifest (presence, size, sha256, counts, shapes); print a summary."""
    import h5py

    m = load_manifest(root)
    for i, info in enumerate(m.shards):
        check_shard_file(m, i)
        path = m.shard_path(i)
        try:
            with h5py.File(path, "r") as f:
                got = {k: f[k].shape for k in ("hr", "lr")}
                want = {"hr": (info.count, *m.hr_shape), "lr": (info.count, *m.lr_shape)}
                if m.param_names:
                    got["params"], want["params"] = f["params"].shape, (info.count, len(m.param_names))
                if "names" in f:
                    got["names"], want["names"] = f["names"].shape, (info.count,)
                if got != want:
                    raise DataError(f"shard {path}: dataset shapes {got}, the manifest implies {want}")
                if f.attrs.get("format_version") != FORMAT_VERSION:
                    raise DataError(f"shard {path}: format_version {f.attrs.get('format_version')!r}")
        except (OSError, KeyError) as exc:
            raise DataError(f"shard {path} cannot be read as a shard: {exc}") from exc
    if not quiet:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in m.split.items())
        print(f"{m.root}: ok, {m.count} pairs in {len(m.shards)} shard(s), hr {m.hr_shape} lr {m.lr_shape}, "
              f"split {sizes}")
    return m


def read_rows(m: Manifest, key: str, indices: np.ndarray) -> np.ndarray | None:
    """Per-pair dataset ``key`` (``params``, ``lr_blur``, ...) of the pairs at global ``indices``, in their
    order and the stored dtype; None if a shard they live in (any shard, for no indices) lacks it."""
    import h5py

    idx = np.asarray(indices, np.int64)
    if len(idx) == 0:
        with h5py.File(m.shard_path(0), "r", locking=False) as f:
            return np.empty((0, *f[key].shape[1:]), f[key].dtype) if key in f else None
    shard, local = m.locate(idx)
    out: np.ndarray | None = None
    for s in np.unique(shard):
        sel = np.flatnonzero(shard == s)
        lo, hi = int(local[sel].min()), int(local[sel].max()) + 1
        with h5py.File(m.shard_path(int(s)), "r", locking=False) as f:
            if key not in f:
                return None
            block = np.asarray(f[key][lo:hi])
        if out is None:
            out = np.empty((len(idx), *block.shape[1:]), block.dtype)
        out[sel] = block[local[sel] - lo]
    return out


def read_params(m: Manifest, indices: np.ndarray) -> np.ndarray | None:
    """The recorded simulator parameters (n, len(param_names)), float64, of the pairs at global ``indices``
    in their order; None if the set carries none (packed from files)."""
    rows = read_rows(m, "params", indices) if m.param_names else None
    return None if rows is None else rows.astype(np.float64)


def read_split_params(root: str | Path, split: str) -> np.ndarray | None:
    """The recorded simulator parameters (n, len(param_names)) of ``split`` in split order, None if the set
    carries none (packed from files)."""
    m = load_manifest(root)
    return read_params(m, m.split_indices(split))
