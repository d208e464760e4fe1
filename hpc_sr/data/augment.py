"""The one crop + flip/rot90 transform of training pairs, batched, and the one patch-size check.

    lr_p, hr_p = crop_and_augment(lr, hr, draws, patch, scale)     # (n,C,h,w), (n,C,sh,sw) -> patches

A draw is (y, x, e) per sample: the LR top-left corner of an aligned ``patch x patch`` crop (HR: ``scale*y``,
``scale*x``, ``scale*patch``) and one of the 8 dihedral transforms e = 2*k + flip (``rot90`` k times, then a
left-right flip), the same on LR and HR. The whole batch is one gather with precomputed index maps, on any
device. Lensing images have no preferred orientation, so all 8 transforms are valid augmentations.

A resident split gathered many times (the memory stream) is a :class:`ResidentPairs`: with ``copies=True``
(square images) it holds each image in the 4 orientations a row gather needs (as is, mirrored, transposed,
transposed + mirrored), so every crop + transform is one ``index_select`` of whole window rows (no per-pixel
index; 4x the memory, ~2.3x the pairs/s of the per-pixel gather on CPU, tools/bench_loader.py); otherwise it
uses the per-pixel gather of :func:`crop_and_augment`. Both give the same pixels in the same order.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from hpc_sr.errors import DataError

N_DIHEDRAL = 8


def check_patch(patch: int, lr_hw: tuple[int, int], scale: int, where: str) -> None:
    """``patch`` (LR pixels; 0 = whole images) must fit the LR images of ``where``."""
    h, w = lr_hw
    if patch < 0 or patch > min(h, w):
        raise DataError(
            f"data.patch_size={patch} (HR {patch * scale}) does not fit the LR images {h}x{w} "
            f"(HR {h * scale}x{w * scale}) of {where}"
        )


@dataclass(frozen=True)
class Draws:
    """Per-sample crop corners (LR pixels) and dihedral transform indices, as int64 tensors (n,)."""

    y: Tensor
    x: Tensor
    e: Tensor

    def to(self, device: torch.device | str) -> Draws:
        return Draws(self.y.to(device), self.x.to(device), self.e.to(device))


def draw(
    n: int, lr_hw: tuple[int, int], patch: int, augment: bool, generator: torch.Generator | None = None
) -> Draws:
    """Random crop corners (uniform over valid positions) and transforms for ``n`` samples."""
    h, w = lr_hw
    dev = generator.device if generator is not None else torch.device("cpu")
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    y = torch.randint(0, h - patch + 1, (n,), generator=generator, device=dev) if patch else zeros
    x = torch.randint(0, w - patch + 1, (n,), generator=generator, device=dev) if patch else zeros
    e = torch.randint(0, N_DIHEDRAL, (n,), generator=generator, device=dev) if augment else zeros
    return Draws(y, x, e)


def draw_numpy(rng: np.random.Generator, lr_hw: tuple[int, int], patch: int, augment: bool) -> Draws:
    """The same draw for one sample from a numpy Generator (per-item datasets: (seed, epoch, index))."""
    h, w = lr_hw
    y = int(rng.integers(0, h - patch + 1)) if patch else 0
    x = int(rng.integers(0, w - patch + 1)) if patch else 0
    e = int(rng.integers(N_DIHEDRAL)) if augment else 0
    return Draws(torch.tensor([y]), torch.tensor([x]), torch.tensor([e]))


@lru_cache(maxsize=64)
def _index_maps(h: int, w: int, device: str) -> Tensor:
    """(8, h', w') flat source offsets (row * w + col) of each dihedral transform of an h x w window."""
    idx = torch.arange(h * w).view(h, w)
    maps = []
    for k in range(4):
        for flip in (False, True):
            m = torch.rot90(idx, k, dims=(0, 1))
            maps.append(torch.flip(m, dims=(1,)) if flip else m)
    if h != w:  # rot90 by an odd k swaps the sides: only square windows take all 8 transforms
        maps = [m if m.shape == (h, w) else maps[0] for m in maps]
    return torch.stack(maps).to(device)


@lru_cache(maxsize=64)
def _image_offsets(ph: int, pw: int, width: int, device: str, dtype: torch.dtype) -> Tensor:
    """(8, ph*pw) flat offsets (row * width + col) of each transform of a ph x pw window in an image ``width``
    wide, relative to the window's top-left corner (cached: the per-batch work is one add and one gather)."""
    maps = _index_maps(ph, pw, "cpu")
    return ((maps // pw) * width + maps % pw).reshape(N_DIHEDRAL, ph * pw).to(device=device, dtype=dtype)


def _gather(img: Tensor, index: Tensor | None, y: Tensor, x: Tensor, e: Tensor, ph: int, pw: int) -> Tensor:
    """Windows of ``img[index]`` (all images when ``index`` is None) in one flat index_select, no full-image
    copies; int32 offsets while the split has fewer than 2**31 elements (measured 4-6x faster than int64
    2-D advanced indexing, tools/bench_loader.py)."""
    total, c, h, w = img.shape
    n = y.shape[0]
    rows = torch.arange(n, device=img.device) if index is None else index
    dtype = torch.int32 if img.numel() < 2**31 else torch.int64
    off = _image_offsets(ph, pw, w, str(img.device), dtype).index_select(0, e)  # (n, ph*pw)
    if c == 1:
        off = off + (rows * (h * w) + y * w + x).to(dtype).view(n, 1)
        return img.reshape(-1).index_select(0, off.reshape(-1)).view(n, 1, ph, pw)
    chan = (torch.arange(c, device=img.device) * (h * w)).to(dtype).view(1, c, 1)
    off = off.view(n, 1, ph * pw) + chan + (rows * (c * h * w) + y * w + x).to(dtype).view(n, 1, 1)
    return img.reshape(-1).index_select(0, off.reshape(-1)).view(n, c, ph, pw)


def crop_and_augment(
    lr: Tensor, hr: Tensor, d: Draws, patch: int, scale: int, index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Aligned crops (whole images when ``patch`` is 0) with each sample's dihedral transform, batched.

    With ``index`` the samples are ``lr[index]`` / ``hr[index]`` of a whole resident split, gathered directly.
    """
    if patch == 0 and not bool((d.e != 0).any()):
        return (lr, hr) if index is None else (lr[index], hr[index])
    lh, lw = (patch, patch) if patch else lr.shape[-2:]
    dev = lr.device
    y, x, e = d.y.to(dev), d.x.to(dev), d.e.to(dev)
    idx = None if index is None else index.to(dev)
    lr_out = _gather(lr, idx, y, x, e, lh, lw)
    hr_out = _gather(hr, idx, y * scale, x * scale, e, lh * scale, lw * scale)
    return lr_out, hr_out


# ------------------------------------------------------------------------------- resident split, row gather
N_COPIES = 4  # orientations held by a ResidentPairs with copies: c = 2 * transposed + mirrored


def _orient(img: Tensor, c: int) -> Tensor:
    """Orientation ``c`` of square images: transposed when c >= 2, then mirrored left-right when c is odd."""
    out = img.transpose(-2, -1) if c >= 2 else img
    return out.flip(-1) if c % 2 else out


def _row_starts(
    c: Tensor, rev: Tensor, image: Tensor, y: Tensor, x: Tensor, side: int, p: int, channels: int, n_img: int
) -> tuple[Tensor, Tensor]:
    """Flat offset of the first output row of each window, and the row step (+-side), in the 4-copy tensor.

    Copy ``c`` of image ``image`` starts at ``(c * n_img + image) * channels * side**2``; the LR window at
    (y, x) of the original is, in copy c, the window at row ``x if transposed else y`` and column ``v`` or
    ``side - p - v`` (mirrored) with ``v = y if transposed else x``; ``rev`` reads its rows bottom-up."""
    t = c >= 2
    u, v = torch.where(t, x, y), torch.where(t, y, x)
    col = torch.where(c % 2 == 1, side - p - v, v)
    row = u + rev * (p - 1)
    start = (c * n_img + image) * (channels * side * side) + row * side + col
    return start, (1 - 2 * rev) * side


@lru_cache(maxsize=1)
def _row_table() -> Tensor:
    """(8, 2) long: for each dihedral transform e, the copy and row direction (0 top-down, 1 bottom-up) whose
    plain row reads give exactly crop_and_augment's window (found by trying all 8 on a probe)."""
    side, p, y, x = 5, 3, 1, 2
    img = torch.arange(float(side * side)).view(1, 1, side, side)
    flat = torch.cat([_orient(img, c) for c in range(N_COPIES)]).reshape(-1)
    one = torch.zeros(1, dtype=torch.long)
    table = []
    for e in range(N_DIHEDRAL):
        want = _gather(img, None, one + y, one + x, one + e, p, p).reshape(p, p)
        for c, rev in ((c, r) for c in range(N_COPIES) for r in (0, 1)):
            start, step = _row_starts(one + c, one + rev, one * 0, one + y, one + x, side, p, 1, 1)
            rows = start + step * torch.arange(p)
            got = flat[(rows.view(p, 1) + torch.arange(p).view(1, p)).view(-1)].view(p, p)
            if torch.equal(got, want):
                table.append((c, rev))
                break
        else:  # pragma: no cover - the 4 orientations x 2 row directions are the 8 dihedral transforms
            raise AssertionError(f"no row read gives dihedral transform {e}")
    return torch.tensor(table)


@dataclass(frozen=True)
class Plan:
    """Samples ``index`` of a resident split with their draws; with row gathers also the flat offset of
    every window row (LR, HR: (n, C, p) int32 while the split allows, else int64), computed once for the
    whole plan (an epoch) so a gather only slices."""

    index: Tensor
    draws: Draws
    patch: int
    lr_rows: Tensor | None = None
    hr_rows: Tensor | None = None


class ResidentPairs:
    """A resident LR/HR split that gathers crops + dihedral transforms of many samples at once.

        pairs = ResidentPairs(lr, hr, scale, copies=True)     # (N,C,s,s), (N,C,S,S) on any device
        plan = pairs.plan(index, draws, patch)                 # once per epoch
        lr_p, hr_p = pairs.gather(plan, lo, hi)               # samples lo:hi of the plan

    ``copies=True`` keeps the 4 orientations (square images only; else it falls back to one copy; in host
    memory on transparent huge pages unless ``huge_pages=False``) and reads whole window rows;
    ``copies=False`` keeps one copy and gathers per pixel (crop_and_augment). ``lr``/``hr`` are the split as
    given (a view of the first copy). ``out`` buffers of ``gather`` receive the result.
    """

    def __init__(self, lr: Tensor, hr: Tensor, scale: int, copies: bool, huge_pages: bool = True) -> None:
        self.scale, self.n = scale, int(lr.shape[0])
        self.copies = copies and self.square(tuple(lr.shape), tuple(hr.shape))
        if self.copies:
            self._lr4, self._hr4 = _four_copies(lr, huge_pages), _four_copies(hr, huge_pages)
            self.lr, self.hr = self._lr4[: self.n], self._hr4[: self.n]
        else:
            self.lr, self.hr = lr, hr

    @staticmethod
    def square(lr_shape: tuple[int, ...], hr_shape: tuple[int, ...]) -> bool:
        return lr_shape[-1] == lr_shape[-2] and hr_shape[-1] == hr_shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes held (all copies)."""
        held = (self._lr4, self._hr4) if self.copies else (self.lr, self.hr)
        return sum(t.numel() * t.element_size() for t in held)

    def plan(self, index: Tensor, d: Draws, patch: int) -> Plan:
        """The gather plan of samples ``index`` with draws ``d`` (tensors on the split's device)."""
        if not self.copies:
            return Plan(index, d, patch)
        c_rev = _row_table().to(index.device).index_select(0, d.e)
        c, rev = c_rev[:, 0], c_rev[:, 1]
        _, ch, s, _ = self.lr.shape
        p = patch or s
        lr_rows = _row_offsets(self._lr4, *_row_starts(c, rev, index, d.y, d.x, s, p, ch, self.n), p)
        k, ch_hr = self.scale, self.hr.shape[1]  # LR may carry more channels than HR (its LR blur)
        hr_first = _row_starts(c, rev, index, d.y * k, d.x * k, s * k, p * k, ch_hr, self.n)
        return Plan(index, d, patch, lr_rows, _row_offsets(self._hr4, *hr_first, p * k))

    def gather(
        self, plan: Plan, lo: int, hi: int, out: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Patches of plan samples ``lo:hi``: (hi-lo, C, p, p) LR and (hi-lo, C, sp, sp) HR."""
        if not self.copies:
            d = plan.draws
            sub = Draws(d.y[lo:hi], d.x[lo:hi], d.e[lo:hi])
            lr, hr = crop_and_augment(self.lr, self.hr, sub, plan.patch, self.scale, index=plan.index[lo:hi])
            if out is None:
                return lr, hr
            out[0].copy_(lr)
            out[1].copy_(hr)
            return out
        assert plan.lr_rows is not None and plan.hr_rows is not None
        lr_out, hr_out = (None, None) if out is None else out
        return _rows(self._lr4, plan.lr_rows[lo:hi], lr_out), _rows(self._hr4, plan.hr_rows[lo:hi], hr_out)


HUGE_PAGE_MIN_BYTES = 8 << 20  # host tensors from this size are backed by transparent huge pages (Linux)


def empty_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``torch.empty(shape, dtype=dtype)`` in host memory advised for transparent huge pages.

    A resident split is read at random windows: with 4 KiB pages every window row is a likely TLB miss
    over a split of GBs, with 2 MiB pages the whole split stays within the TLB's reach. On Linux with THP
    in ``madvise`` or ``always`` mode the tensor is a private anonymous mapping advised MADV_HUGEPAGE before
    its first touch (the tensor keeps the mapping alive); elsewhere, or below ``HUGE_PAGE_MIN_BYTES``, a
    plain ``torch.empty``.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_PAGE_MIN_BYTES or advise is None or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # THP off in this kernel: ordinary pages, same tensor
        buf.madvise(advise)
    with warnings.catch_warnings():  # frombuffer warns about buffers it cannot tell are writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=dtype).view(shape)


def _four_copies(img: Tensor, huge_pages: bool = True, block: int = 256) -> Tensor:
    """(4N, C, s, s) contiguous: the N images in the 4 orientations, written in blocks (small temporaries);
    in host memory on transparent huge pages (:func:`empty_huge_pages`) with ``huge_pages``."""
    n = img.shape[0]
    shape = (N_COPIES * n, *img.shape[1:])
    if img.device.type == "cpu" and huge_pages:
        out = empty_huge_pages(shape, img.dtype)
    else:
        out = torch.empty(shape, dtype=img.dtype, device=img.device)
    for c in range(N_COPIES):
        for i in range(0, n, block):
            j = min(n, i + block)
            out[c * n + i : c * n + j].copy_(_orient(img[i:j], c))
    return out


def _row_offsets(copies: Tensor, start: Tensor, step: Tensor, p: int) -> Tensor:
    """(n, C, p) flat offsets of the ``p`` rows of each window (first row ``start``, row step ``step``) in
    every channel of ``copies``; int32 while the split has fewer than 2**31 elements (half the index
    reads)."""
    n, ch = start.shape[0], copies.shape[1]
    rows = torch.addcmul(start.view(n, 1, 1), step.view(n, 1, 1), torch.arange(p, device=start.device))
    if ch > 1:
        rows = rows + (torch.arange(ch, device=start.device) * copies[0, 0].numel()).view(1, ch, 1)
    return rows.to(torch.int32 if copies.numel() < 2**31 else torch.int64)


def _rows(copies: Tensor, rows: Tensor, out: Tensor | None) -> Tensor:
    """Windows (n, C, p, p) as one index_select of the n * C * p rows (offsets ``rows``) of p elements."""
    n, ch, p = rows.shape
    view = copies.as_strided((copies.numel() - p + 1, p), (1, 1))
    if out is None:
        return view.index_select(0, rows.reshape(-1)).view(n, ch, p, p)
    torch.index_select(view, 0, rows.reshape(-1), out=out.view(n * ch * p, p))
    return out
