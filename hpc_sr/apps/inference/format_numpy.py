"""``.npy`` / ``.npz`` files: one unit per file, costed by its array bytes (planning reads no data).

Each array is an image (H, W) or (1, H, W), or a stack (N, H, W) or (N, 1, H, W); an .npz holds any number of
them (keys kept, in order). ``x.npy`` -> ``x_sr.npy`` in the same layout; float64 stays float64, every other
type comes out as float32. With samples, the per-pixel sigma goes to ``x_sr_sigma.npy`` (an .npz: key
``<key>_sigma`` beside each key). NumPy files carry no unit: the level is kept unless ``flux`` says per-pixel.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

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
    tagged_path,
)
from hpc_sr.data.sources import as_image
from hpc_sr.errors import DataError

SIGMA = "_sigma"


@dataclass(frozen=True)
class _Layout:
    """Where an array's images came from: its key, its shape's form and its type."""

    key: str
    ndim: int  # 2: (H, W); 3: (1, H, W) or (N, H, W); 4: (N, 1, H, W)
    count: int
    dtype: np.dtype

    def back(self, images: list[np.ndarray]) -> np.ndarray:
        """The SR images in this array's layout and output type."""
        stack = np.stack(images)
        out = stack[0] if self.ndim == 2 else stack[:, None] if self.ndim == 4 else stack
        return out.astype(np.float64 if self.dtype == np.float64 else np.float32, copy=False)


HEADER = 128  # bytes of a usual .npy header


def _cost(path: Path) -> int:
    """A unit's cost without reading its data: the array bytes / 4 (float32 pixels), from the file size (.npy)
    or the zip directory (.npz); NotAnImage for an .npz without arrays. A damaged .npz costs its size."""
    if path.suffix.lower() == ".npy":
        return max(1, (path.stat().st_size - HEADER) // 4)
    try:
        with zipfile.ZipFile(path) as z:
            sizes = [i.file_size for i in z.infolist() if i.filename.endswith(".npy")]
    except (OSError, zipfile.BadZipFile, ValueError):
        return max(1, path.stat().st_size // 4)  # read will name the problem
    if not sizes:
        raise NotAnImage(f"{path}: holds no arrays")
    return max(1, sum(max(0, s - HEADER) for s in sizes) // 4)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix.lower() == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many kinds for a damaged file
        raise DataError(f"{path}: cannot read: {type(exc).__name__}: {exc}") from None
    if not arrays:
        raise NotAnImage(f"{path}: holds no arrays")
    return arrays


def _images(arr: np.ndarray, label: str) -> tuple[list[np.ndarray], list[str], int]:
    """The (H, W) float32 images of one array (blank pixels NaN), their labels, and the layout's ndim."""
    a = np.asarray(arr)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[0] == 1):
        items = [(a, label)]
    elif a.ndim == 3:
        items = [(a[i], f"{label}[{i}]") for i in range(len(a))]
    elif a.ndim == 4 and a.shape[1] == 1:
        items = [(a[i, 0], f"{label}[{i}]") for i in range(len(a))]
    else:
        raise DataError(
            f"{label}: shape {a.shape} is not an image (H, W), (1, H, W) or a stack (N, H, W), (N, 1, H, W)"
        )
    if not items:
        raise DataError(f"{label}: empty stack of shape {a.shape}")
    images = []
    for img, name in items:
        blank = ~np.isfinite(img) if np.issubdtype(img.dtype, np.floating) else None
        if blank is not None and blank.any():
            images.append(np.where(blank, np.float32(np.nan), as_image(np.where(blank, 0, img), name)[0]))
        else:
            images.append(as_image(img, name)[0])
    return images, [n for _, n in items], a.ndim


@FORMATS.register("numpy")
class NumpyFormat:
    """.npy and .npz files (see the module docstring)."""

    suffixes = (".npy", ".npz")
    concurrent_io = True  # reads and writes may overlap (nothing here touches the warnings state)

    def plan(self, src: Path, rel: Path, out_dir: Path, opts: InferenceOptions) -> list[Unit]:
        target = out_dir / rel.parent / output_name(rel.name, opts.suffix)
        return [Unit(rel.as_posix(), src, "numpy", target, _cost(src))]

    def read(self, unit: Unit, opts: InferenceOptions) -> ImageSet:
        images: list[np.ndarray] = []
        labels: list[str] = []
        layouts = []
        for key, arr in _load(unit.src).items():
            label = f"{unit.src}[{key}]" if key else str(unit.src)
            found, names, ndim = _images(arr, label)
            images += found
            labels += names
            layouts.append(_Layout(key, ndim, len(found), np.asarray(arr).dtype))
        flux = fits_io.resolve_flux(opts.flux, None, str(unit.src), warn_unknown=False)
        return ImageSet(unit, images, [flux] * len(images), labels, layouts)

    def write(self, images: ImageSet, results: Results, opts: InferenceOptions) -> list[Path]:
        layouts: list[_Layout] = images.context
        arrays: dict[str, np.ndarray] = {}
        sigmas: dict[str, np.ndarray] = {}
        start = 0
        for lay in layouts:
            part = slice(start, start + lay.count)
            arrays[lay.key] = lay.back(results.images[part])
            if results.sigma is not None:
                sigmas[lay.key] = lay.back(results.sigma[part])
            start += lay.count
        unit = images.unit
        if unit.src.suffix.lower() == ".npy":
            written = []
            if results.sigma is not None:
                written.append(_save(tagged_path(unit.target, SIGMA), sigmas[""]))
            return [_save(unit.target, arrays[""]), *written]
        if sigmas:
            clash = sorted(set(arrays) & {k + SIGMA for k in sigmas})
            if clash:
                raise DataError(f"{unit.src}: key(s) {', '.join(clash)} clash with the sigma keys")
            arrays.update({k + SIGMA: v for k, v in sigmas.items()})
        with publish.output(unit.target, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return [unit.target]

    def finish(self, units: list[Unit], opts: InferenceOptions) -> list[Path]:
        return []  # one unit per file: nothing to merge


def npy_header(array: np.ndarray) -> bytes | None:
    """The header ``np.save`` writes for ``array`` when it is C-ordered plain data and its header fits
    format 1.0 (np.save's first choice), else None."""
    if not array.flags.c_contiguous or array.dtype.hasobject:
        return None
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(array))
    except ValueError:  # a header too long for 1.0: np.save picks another version
        return None
    return buf.getvalue()


def _save(path: Path, array: np.ndarray) -> Path:
    """``np.save``'s bytes: its header, then the data as stored in two writes (no copy of the data; hashed as
    written, :func:`hpc_sr.apps.inference.publish.checksums`); np.save itself for other arrays."""
    array = np.asarray(array)
    header = npy_header(array)
    with publish.output(path, "wb") as fh:
        if header is None:
            np.save(fh, array)
        else:
            fh.write(header)
            fh.write(memoryview(array.reshape(-1).view(np.uint8)))
    return path
