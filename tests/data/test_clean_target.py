"""``data.target: clean``: the noise-free HR of simulated data as the training target, for the resident
stream (re-rendered from the shards' recorded parameters) and for on-the-fly simulation (the window before
its noise); the LR input and the sample sequence stay those of ``target: hr``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.config import ConfigError, DataConfig
from hpc_sr.data.dataset import InMemoryShardDataset, noise_free_split
from hpc_sr.data.lensing import LensingSimulator
from hpc_sr.data.shards import pack_to_shards, read_split_params, simulate_to_shards
from hpc_sr.data.streams import make_train_stream
from hpc_sr.data.truth import clean_images
from hpc_sr.dist.env import DistEnv
from hpc_sr.errors import DataError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "data"
    simulate_to_shards(out, 24, hr_size=16, seed=3, shard_size=10)
    return out


def test_noise_free_split_is_the_re_rendered_clean_hr_of_each_image(shards: Path) -> None:
    clean = noise_free_split(shards, "train")
    _, hr = InMemoryShardDataset(shards, "train").arrays()
    params = torch.from_numpy(read_split_params(shards, "train"))  # type: ignore[arg-type]
    want = clean_images(params, "deeplense_sr", 16).numpy()
    assert clean.shape == hr.shape and clean.dtype == np.float32
    np.testing.assert_allclose(clean, want, atol=1e-6)
    noise = hr - clean
    assert 0 < float(np.abs(noise).mean()) < 0.2  # HR is the clean image plus noise, not the clean image


def test_resident_stream_keeps_lr_and_draws_and_swaps_the_target(shards: Path) -> None:
    base = dict(source="shards", path=str(shards), options={"loader": "memory"}, patch_size=4)
    noisy = make_train_stream(DataConfig(**base), 0, DistEnv(), CPU, 4)  # type: ignore[arg-type]
    clean = make_train_stream(DataConfig(**base, target="clean"), 0, DistEnv(), CPU, 4)  # type: ignore[arg-type]
    for _ in range(3):
        (lr_n, hr_n), (lr_c, hr_c) = next(noisy), next(clean)
        assert torch.equal(lr_n, lr_c)
        assert not torch.equal(hr_n, hr_c)
        # the same crop and transform: the clean target is the noisy one less its noise (a few % here)
        assert float((hr_n - hr_c).abs().mean()) < 0.1
        assert float((torch.nn.functional.avg_pool2d(hr_c, 2) - lr_c).abs().mean()) < 0.1


def test_simulated_stream_target_is_the_window_before_its_noise() -> None:
    data = DataConfig(source="simulate", options={"hr_size": 32}, patch_size=6, augment=False, target="clean")
    lr, hr = next(make_train_stream(data, 7, DistEnv(), CPU, 5))
    sim = LensingSimulator("deeplense_sr", hr_size=32, scale=2)
    g = torch.Generator().manual_seed(7 * 1_000_003)
    batch = sim.sample_windows(5, 12, generator=g, keep_clean=True)
    assert torch.equal(lr, batch.lr) and torch.equal(hr, batch.clean)
    # noise-free: equal to the crop of the full noise-free render with the window's peak scaling
    full = sim.render(batch.params, noise=False)
    peak = batch.params[:, -1].reshape(-1, 1, 1, 1)
    where = enumerate(batch.offsets.tolist())
    crops = torch.stack([full[i, :, y : y + 12, x : x + 12] for i, (y, x) in where])
    torch.testing.assert_close(hr, (crops / peak).clamp(0, 1), atol=1e-5, rtol=0)
    whole = DataConfig(source="simulate", options={"hr_size": 32}, patch_size=0, augment=True, target="clean")
    lr_w, hr_w = next(make_train_stream(whole, 7, DistEnv(), CPU, 2))
    assert lr_w.shape == (2, 1, 16, 16) and hr_w.shape == (2, 1, 32, 32)


def test_clean_target_names_what_is_missing(shards: Path, tmp_path: Path) -> None:
    item = DataConfig(source="shards", path=str(shards), options={"loader": "item"}, patch_size=4)
    item.target = "clean"
    with pytest.raises(ConfigError, match="data.target='clean' needs data.options.loader=memory"):
        make_train_stream(item, 0, DistEnv(), CPU, 4)
    rng = np.random.default_rng(0)
    hr = rng.random((10, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "pairs.npz", hr=hr, lr=hr.reshape(10, 1, 4, 2, 4, 2).mean((3, 5)))
    packed = tmp_path / "packed"
    pack_to_shards("npz", tmp_path / "pairs.npz", packed, shard_size=10, split=(1.0, 0.0, 0.0))
    files = DataConfig(source="shards", path=str(packed), options={"loader": "memory"}, patch_size=2)
    files.target = "clean"
    with pytest.raises(DataError, match=f"{packed}.*needs a simulated set"):
        make_train_stream(files, 0, DistEnv(), CPU, 2)
