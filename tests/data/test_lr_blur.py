"""Each pair's LR blur (hpc_sr.data.lr_blur): from simulated instruments, packed lr_blur rows, or one value;
carried as one more LR channel by every loader, aligned through crops and flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpc_sr.config import ConfigError
from hpc_sr.data.augment import ResidentPairs, draw
from hpc_sr.data.dataset import BlockShardDataset, InMemoryShardDataset, ShardDataset
from hpc_sr.data.lensing import MIN_INSTRUMENT_BLUR, lr_blur_pairs, mean_lr_pairs, param_names_of
from hpc_sr.data.lr_blur import attach_lr_blur, lr_blur_setting, pair_lr_blur, read_lr_blur_csv
from hpc_sr.data.presets import resolve_preset
from hpc_sr.data.shards import load_manifest, pack_to_shards, read_split_params
from hpc_sr.errors import DataError
from hpc_sr.imaging import lr_image, with_lr_blur


def test_setting_parses_and_names_the_key() -> None:
    assert lr_blur_setting("") is None and lr_blur_setting(None) is None
    assert lr_blur_setting("data") == "data"
    assert lr_blur_setting("1.5") == 1.5 and lr_blur_setting(0) == 0.0
    for bad in ("-1", "nan", "blurry"):
        with pytest.raises(ConfigError, match="data.lr_blur"):
            lr_blur_setting(bad)


def test_blur_of_simulated_pairs_follows_their_instrument(tiny_randomized: Path) -> None:
    m = load_manifest(tiny_randomized)
    params = torch.from_numpy(read_split_params(tiny_randomized, "train").astype(np.float64))
    blur = pair_lr_blur(tiny_randomized, m.split_indices("train"), "data")
    mean = mean_lr_pairs(params).numpy()
    assert 0 < mean.sum() < len(mean)  # both kinds present
    assert (blur[mean] == 0).all() and (blur[~mean] >= MIN_INSTRUMENT_BLUR).all()
    names = param_names_of("randomized")
    lr_fwhm, hr_fwhm = params[:, names.index("lr_psf_fwhm")], params[:, names.index("psf_fwhm")]
    expect = (lr_fwhm**2 - hr_fwhm**2).clamp_min(0).sqrt() / (resolve_preset("randomized").pixel_scale * 2)
    np.testing.assert_allclose(blur[~mean], expect.clamp_min(MIN_INSTRUMENT_BLUR).numpy()[~mean], rtol=1e-5)
    assert (pair_lr_blur(tiny_randomized, m.split_indices("val"), 2.5) == 2.5).all()
    from hpc_sr.apps.inspect import inspect_dataset

    told = inspect_dataset(tiny_randomized, quiet=True)["lr_blur"]
    assert told["recorded"] and told["zero_fraction"] == pytest.approx(mean.mean())


def test_blur_of_a_block_mean_set_is_zero(tiny_shards: Path) -> None:
    idx = load_manifest(tiny_shards).split_indices("train")
    assert (pair_lr_blur(tiny_shards, idx, "data") == 0).all()
    params = torch.from_numpy(read_split_params(tiny_shards, "train"))
    assert (lr_blur_pairs(params, 0.05, 2) == 0).all()  # no instrument columns: every pair is a mean


def _export(src: Path, out: Path) -> list[str]:
    """Write a packed set's pairs as HR/*.npy, LR/*.npy; returns the pair names."""
    import h5py

    m = load_manifest(src)
    names = []
    for d in ("HR", "LR"):
        (out / d).mkdir(parents=True, exist_ok=True)
    with h5py.File(m.shard_path(0), "r") as f:
        for i in range(f["hr"].shape[0]):
            np.save(out / "HR" / f"p{i:03d}.npy", f["hr"][i, 0])
            np.save(out / "LR" / f"p{i:03d}.npy", f["lr"][i, 0])
            names.append(f"p{i:03d}")
    return names


def test_pack_keeps_an_lr_blur_csv_and_refuses_gaps(tiny_randomized: Path, tmp_path: Path) -> None:
    names = _export(tiny_randomized, tmp_path / "src")
    values = {n: 0.25 * k for k, n in enumerate(names)}
    (tmp_path / "src" / "lr_blur.csv").write_text(
        "name,lr_blur\n" + "".join(f"{n}.npy,{v}\n" if k % 2 else f"{n},{v}\n" for k, (n, v) in
                                   enumerate(values.items()))  # fmt: skip
    )
    pack_to_shards("deeplense", tmp_path / "src", tmp_path / "packed", split=(1.0, 0.0, 0.0))
    m = load_manifest(tmp_path / "packed")
    idx = m.split_indices("train")
    ds = ShardDataset(tmp_path / "packed", "train")
    got = pair_lr_blur(tmp_path / "packed", idx, "data")
    want = [values[Path(ds.item_name(i) or "").stem] for i in range(len(ds))]
    np.testing.assert_allclose(got, want)
    # a pair the table leaves out, and a malformed line, are errors naming the file
    (tmp_path / "src" / "lr_blur.csv").write_text("name,lr_blur\n" + f"{names[0]},1.0\n")
    with pytest.raises(DataError, match=r"lr_blur\.csv: no lr_blur row for pair 'p001"):
        pack_to_shards("deeplense", tmp_path / "src", tmp_path / "gap")
    (tmp_path / "bad.csv").write_text("name,lr_blur\np000,-2\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: lr_blur must be a FWHM >= 0"):
        read_lr_blur_csv(tmp_path / "bad.csv")


def test_a_blurred_set_without_blur_records_is_a_clear_error(tiny_randomized: Path, tmp_path: Path) -> None:
    """Pairs packed from files (no instrument parameters, no csv) whose LR is not the block mean of HR."""
    from hpc_sr.data.lensing import LensingSimulator

    sim = LensingSimulator("ground_space", hr_size=32)
    batch = sim.sample(8, generator=torch.Generator().manual_seed(0))
    for d, imgs in (("HR", batch.hr), ("LR", batch.lr)):
        (tmp_path / "src" / d).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(imgs):
            np.save(tmp_path / "src" / d / f"g{i}.npy", img[0].numpy())
    pack_to_shards("deeplense", tmp_path / "src", tmp_path / "packed", split=(1.0, 0.0, 0.0))
    idx = load_manifest(tmp_path / "packed").split_indices("train")
    with pytest.raises(DataError, match=r"packed: data.lr_blur=data needs each pair's LR blur.*lr_blur=<"):
        pair_lr_blur(tmp_path / "packed", idx, "data")
    assert (pair_lr_blur(tmp_path / "packed", idx, 1.25) == 1.25).all()
    from hpc_sr.apps.inspect import inspect_dataset

    assert "data.lr_blur=<FWHM" in inspect_dataset(tmp_path / "packed", quiet=True)["lr_blur"]["statement"]


@pytest.mark.parametrize("cls", [ShardDataset, InMemoryShardDataset])
def test_datasets_attach_the_blur_channel(tiny_randomized: Path, cls: type) -> None:
    ds = cls(tiny_randomized, "train", patch_size=4, augment=True, lr_blur="data")
    plain = cls(tiny_randomized, "train", patch_size=4, augment=True)
    blur = pair_lr_blur(tiny_randomized, load_manifest(tiny_randomized).split_indices("train"), "data")
    for i in range(len(ds)):
        lr, hr = ds[i]
        lr0, hr0 = plain[i]
        assert lr.shape == (2, 4, 4) and hr.shape == (1, 8, 8)
        assert torch.equal(lr[:1], lr0) and torch.equal(hr, hr0)  # the same crop and transform
        assert torch.all(lr[1] == float(blur[i]))


def test_block_dataset_attaches_the_blur_channel(tiny_randomized: Path) -> None:
    ds = BlockShardDataset(tiny_randomized, "train", block_size=4, shuffle=False, rank=0, world_size=1,
                           lr_blur="data")  # fmt: skip
    blur = pair_lr_blur(tiny_randomized, load_manifest(tiny_randomized).split_indices("train"), "data")
    got = [float(lr[1, 0, 0]) for lr, _ in ds]
    np.testing.assert_allclose(got, blur)


@pytest.mark.parametrize("copies", [True, False])
def test_resident_crops_keep_lr_hr_and_blur_aligned(copies: bool) -> None:
    """LR (with its blur channel) and HR crops come from the same place under every dihedral transform."""
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(12, 1, 16, 16, generator=g)
    lr = with_lr_blur(F.avg_pool2d(hr, 2), torch.arange(12.0))
    pairs = ResidentPairs(lr, hr, 2, copies=copies, huge_pages=False)
    index = torch.tensor([5, 0, 11, 3, 7, 7])
    d = draw(len(index), (8, 8), 4, True, g)
    lo, hi = pairs.gather(pairs.plan(index, d, 4), 0, len(index))
    assert lo.shape == (6, 2, 4, 4) and hi.shape == (6, 1, 8, 8)
    torch.testing.assert_close(F.avg_pool2d(hi, 2), lr_image(lo, 1))
    assert torch.equal(lo[:, 1], index.float().view(-1, 1, 1).expand(-1, 4, 4))


def test_attach_and_with_lr_blur_agree_and_check_values() -> None:
    lr = np.random.default_rng(0).random((3, 1, 5, 5), dtype=np.float32)
    want = with_lr_blur(torch.from_numpy(lr), torch.tensor([0.0, 1, 2])).numpy()
    np.testing.assert_array_equal(attach_lr_blur(lr, np.array([0, 1, 2], np.float32)), want)
    assert attach_lr_blur(lr[0], 0.5).shape == (2, 5, 5)
    with pytest.raises(ValueError, match="2 values for 3 LR images"):
        with_lr_blur(torch.from_numpy(lr), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite FWHMs >= 0"):
        with_lr_blur(torch.from_numpy(lr), -1.0)


def test_the_recorded_lr_range_ignores_the_blur_channel() -> None:
    """Checkpoints record the training LR's value range (upscale --normalize auto follows it): image pixels
    only."""
    from hpc_sr.data.values import summarize_lr

    lr, hr = torch.rand(3, 1, 6, 6) * 0.5, torch.rand(3, 1, 12, 12)
    told = summarize_lr([(with_lr_blur(lr, torch.tensor([0.0, 4.0, 9.0])), hr)])
    assert told == summarize_lr([(lr, hr)]) and told is not None and told["max"] <= 0.5
    one = torch.from_numpy(attach_lr_blur(lr[0].numpy(), 4.0))  # one pair, (C, h, w)
    assert summarize_lr([(one, hr[0])]) == summarize_lr([(lr[0], hr[0])])
