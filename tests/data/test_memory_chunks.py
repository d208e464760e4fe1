"""The chunked resident stream: the 4-orientation row gather, chunk-independent exact resume, rank-disjoint
epochs, per-epoch draws on the split's device and the staging buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_sr.config import DataConfig
from hpc_sr.data.augment import Draws, ResidentPairs, crop_and_augment, draw
from hpc_sr.data.memory_stream import MemoryStream, Staging
from hpc_sr.data.shards import simulate_to_shards
from hpc_sr.data.source_shards import ShardsOptions, shard_source
from hpc_sr.data.streams import batch_seed
from hpc_sr.dist.env import DistEnv

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chunks") / "data"
    simulate_to_shards(out, 30, hr_size=16, seed=5, shard_size=16)
    return out


def _data(path: Path, **kw: object) -> DataConfig:
    base = dict(source="shards", path=str(path), patch_size=5, augment=True)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def _take(stream: MemoryStream, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(stream) for _ in range(n)]


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("patch", [0, 4])
def test_row_gather_of_four_orientations_equals_the_per_pixel_gather(channels: int, patch: int) -> None:
    g = torch.Generator().manual_seed(channels * 10 + patch)
    lr, hr = torch.rand(6, channels, 9, 9, generator=g), torch.rand(6, channels, 18, 18, generator=g)
    pairs = ResidentPairs(lr, hr, 2, copies=True)
    assert pairs.copies and torch.equal(pairs.lr, lr) and torch.equal(pairs.hr, hr)
    assert pairs.nbytes == 4 * (lr.numel() + hr.numel()) * 4
    index = torch.randint(0, 6, (40,), generator=g)
    d = draw(40, (9, 9), patch, True, g)
    assert set(d.e.tolist()) == set(range(8))  # every transform is exercised
    plan = pairs.plan(index, d, patch)
    lo, hi = 3, 37
    want = crop_and_augment(lr, hr, Draws(d.y[lo:hi], d.x[lo:hi], d.e[lo:hi]), patch, 2, index=index[lo:hi])
    got = pairs.gather(plan, lo, hi)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    bufs = (torch.full_like(want[0], -1.0), torch.full_like(want[1], -1.0))
    into = pairs.gather(plan, lo, hi, out=bufs)
    assert into[0] is bufs[0] and torch.equal(bufs[0], want[0]) and torch.equal(bufs[1], want[1])


def test_non_square_images_keep_one_copy_and_the_same_pixels() -> None:
    lr, hr = torch.rand(4, 1, 6, 8), torch.rand(4, 1, 12, 16)
    pairs = ResidentPairs(lr, hr, 2, copies=True)
    assert not pairs.copies and pairs.nbytes == (lr.numel() + hr.numel()) * 4
    d = Draws(torch.tensor([0, 2]), torch.tensor([1, 4]), torch.tensor([5, 2]))
    index = torch.tensor([3, 0])
    got = pairs.gather(pairs.plan(index, d, 4), 0, 2)
    want = crop_and_augment(lr, hr, d, 4, 2, index=index)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_batches_do_not_depend_on_chunking_or_layout(shards: Path) -> None:
    streams = [
        MemoryStream(
            _data(shards), 4, DistEnv(), CPU, 4, chunk_samples=1, copies=False
        ),  # one batch a gather
        MemoryStream(_data(shards), 4, DistEnv(), CPU, 4, chunk_samples=16),  # 4 batches; epoch of 6: 4+2
        MemoryStream(_data(shards), 4, DistEnv(), CPU, 4),  # the whole epoch at once
    ]
    assert [s.chunk for s in streams] == [1, 4, 128] and streams[0].batches_per_epoch == 6
    assert not streams[0].pairs.copies and streams[1].pairs.copies
    runs = [_take(s, 14) for s in streams]  # crosses two epoch boundaries
    assert _same(runs[0], runs[1]) and _same(runs[0], runs[2])
    assert all(lr.is_contiguous() and hr.is_contiguous() for lr, hr in runs[1])


def test_resume_mid_chunk_is_exact_with_another_chunk_size(shards: Path) -> None:
    s = MemoryStream(_data(shards), 0, DistEnv(), CPU, 4, chunk_samples=12)
    _take(s, 5)  # inside the second chunk of 3
    state = s.state_dict()
    assert state == {"epoch": 0, "position": 5}
    expected = _take(s, 6)  # crosses the epoch boundary
    for chunk in (4, 8, 512):
        resumed = MemoryStream(_data(shards), 0, DistEnv(), CPU, 4, chunk_samples=chunk)
        resumed.load_state_dict(state)
        assert _same(_take(resumed, 6), expected)
        assert resumed.state_dict()["epoch"] == 1


def _key(img: torch.Tensor) -> tuple[float, ...]:
    return tuple(sorted(img.flatten().tolist()))  # the same for all 8 flips/rotations of an image


def test_ranks_see_disjoint_images_with_chunks_and_transforms(shards: Path) -> None:
    whole = _data(shards, patch_size=0, augment=True)
    seen = []
    for rank in (0, 1):
        s = MemoryStream(whole, 2, DistEnv(rank=rank, world_size=2), CPU, 3, chunk_samples=6)
        keys = [_key(img) for _, hr in _take(s, s.batches_per_epoch) for img in hr]
        assert len(set(keys)) == len(keys) == s.n // 2 == 12  # each of its share once
        seen.append(set(keys))
    assert not seen[0] & seen[1]


@pytest.mark.parametrize("loader", ["memory", "device"])
def test_epoch_draws_follow_the_documented_seeds(shards: Path, loader: str) -> None:
    """Micro-batch p of epoch 0 = samples order[p*m:(p+1)*m] with the draws p*m.. of the generator seeded
    by (seed, 0, rank) on the split's device (loader=device: the training device, here the CPU)."""
    data, on_device = _data(shards), loader == "device"
    s = MemoryStream(data, 7, DistEnv(rank=1, world_size=2), CPU, 4, chunk_samples=8, on_device=on_device)
    got = _take(s, 3)
    perm = torch.randperm(s.n, generator=torch.Generator().manual_seed(batch_seed(7, 0)))
    order = perm[1::2][: s.batches_per_epoch * 4]
    g = torch.Generator(device=CPU).manual_seed(batch_seed(7, 0, 1))
    d = draw(len(order), (8, 8), 5, True, g)
    for p, (lr, hr) in enumerate(got):
        sl = slice(4 * p, 4 * p + 4)
        want = crop_and_augment(s.lr, s.hr, Draws(d.y[sl], d.x[sl], d.e[sl]), 5, 2, index=order[sl])
        assert torch.equal(lr, want[0]) and torch.equal(hr, want[1])
    again = _take(MemoryStream(data, 7, DistEnv(rank=1, world_size=2), CPU, 4, on_device=on_device), 3)
    assert _same(again, got)
    other = _take(MemoryStream(data, 8, DistEnv(rank=1, world_size=2), CPU, 4, on_device=on_device), 1)
    assert not torch.equal(other[0][1], got[0][1])


def test_staging_alternates_two_buffers_and_uploads_fresh_tensors() -> None:
    st = Staging(6, (1, 2, 2), (1, 4, 4), pin=False)  # pin=False: the CPU stand-in of the pinned path
    ptrs = []
    outs = []
    for i in range(5):
        lr_buf, hr_buf = st.buffers(6 if i % 2 else 4)
        assert lr_buf.shape == (6 if i % 2 else 4, 1, 2, 2) and hr_buf.shape[1:] == (1, 4, 4)
        ptrs.append(lr_buf.data_ptr())
        lr_buf.fill_(i)
        hr_buf.fill_(-i)
        lr, hr = st.upload(lr_buf, hr_buf, CPU)
        assert lr.data_ptr() != lr_buf.data_ptr() and hr.data_ptr() != hr_buf.data_ptr()
        outs.append((lr, hr))
    assert len(set(ptrs)) == 2 and ptrs[0] == ptrs[2] == ptrs[4] != ptrs[1] == ptrs[3]
    assert all(bool((lr == i).all()) and bool((hr == -i).all()) for i, (lr, hr) in enumerate(outs))
    assert st.waits == 0 and not st.bufs[0][0].is_pinned()  # no CUDA events on CPU


def test_staged_stream_gives_the_same_batches_and_kept_batches_stay_valid(shards: Path) -> None:
    plain = MemoryStream(_data(shards), 1, DistEnv(), CPU, 4, chunk_samples=8)
    staged = MemoryStream(_data(shards), 1, DistEnv(), CPU, 4, chunk_samples=8, staging=True)
    assert plain.staging is None and staged.staging is not None
    assert staged.staging.bufs[0][0].shape == (8, 1, 5, 5) and staged.staging.bufs[0][1].shape == (
        8,
        1,
        10,
        10,
    )
    kept = _take(staged, 3)
    copies = [(lr.clone(), hr.clone()) for lr, hr in kept]
    later = _take(staged, 9)  # 4+ more chunks through the same two buffers
    assert _same(kept, copies)  # the batches handed out were never overwritten
    assert _same(_take(plain, 12), kept + later)


def test_config_keys_choose_layout_and_chunk_and_name_bad_values(shards: Path) -> None:
    from hpc_sr.errors import DataError

    env, data = DistEnv(), _data(shards)
    one = shard_source(data, ShardsOptions("memory", memory_copies=1, chunk_samples=8), 0, env, CPU, 4)
    four = shard_source(data, ShardsOptions("memory", memory_copies=4, chunk_samples=64), 0, env, CPU, 4)
    assert isinstance(one, MemoryStream) and isinstance(four, MemoryStream)
    assert (one.chunk, four.chunk) == (2, 16) and (one.pairs.copies, four.pairs.copies) == (False, True)
    assert _same(_take(one, 5), _take(four, 5))  # same samples whatever the layout and chunk
    with pytest.raises(DataError, match=r"data\.options\.memory_copies=3"):
        shard_source(data, ShardsOptions("memory", memory_copies=3), 0, env, CPU, 4)
    with pytest.raises(DataError, match=r"data\.options\.chunk_samples=0"):
        shard_source(data, ShardsOptions("memory", chunk_samples=0), 0, env, CPU, 4)


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    return []


def test_resident_copies_live_on_huge_page_advised_memory_and_stay_valid() -> None:
    from hpc_sr.data.augment import HUGE_PAGE_MIN_BYTES, empty_huge_pages

    shape = (HUGE_PAGE_MIN_BYTES // 4 // 64 + 1, 1, 8, 8)
    t = empty_huge_pages(shape, torch.float32)
    assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(0.25)
    part = t[5:7]
    del t  # the view keeps the mapping alive
    assert float(part.sum()) == 0.25 * part.numel()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert "hg" in _vm_flags(part.data_ptr())  # advised MADV_HUGEPAGE
    # below the threshold: a plain tensor, no mapping of its own (the flags of the heap page it lands on
    # depend on other allocations: numpy advises large heap blocks MADV_HUGEPAGE; a VmFlags check was flaky)
    small = empty_huge_pages((4, 4), torch.float32)
    assert small._base is None and part._base is not None
    lr = torch.rand(40, 1, 6, 6)
    pairs = ResidentPairs(lr, torch.rand(40, 1, 12, 12), 2, copies=True)
    plain = ResidentPairs(lr, pairs.hr.clone(), 2, copies=True, huge_pages=False)
    d = draw(16, (6, 6), 3, True, torch.Generator().manual_seed(0))
    index = torch.randperm(40)[:16]
    got, want = pairs.gather(pairs.plan(index, d, 3), 0, 16), plain.gather(plain.plan(index, d, 3), 0, 16)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
