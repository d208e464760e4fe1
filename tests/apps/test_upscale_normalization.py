"""``normalize=auto`` gives a model what it was trained on: a generator trained on noisy pairs whose LR dips
below 0 (sky-subtracted images) records its training values, and the CLI default equals the model applied to
the raw values. A model without a record falls back to a per-file guess that tolerates sky noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_sr.apps import fits_io
from hpc_sr.cli import main
from hpc_sr.config import load_config
from hpc_sr.data.shards import pack_to_shards
from hpc_sr.dist.env import DistEnv
from hpc_sr.models.artifacts import export_generator, load_generator
from hpc_sr.models.checkpoint_layout import atomic_torch_save
from hpc_sr.train.trainer import Trainer
from tests.conftest import tiny_overrides


def sky_subtracted_pairs(root: Path, n: int = 20, side: int = 16) -> Path:
    """DeepLense-layout pairs: a bright blob on a zero sky with Gaussian noise (negative pixels), LR the 2x2
    mean of HR plus its own noise."""
    rng = np.random.default_rng(0)
    (root / "HR").mkdir(parents=True)
    (root / "LR").mkdir()
    yy, xx = np.mgrid[:side, :side]
    for i in range(n):
        cy, cx = rng.uniform(4, side - 4, 2)
        hr = 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0) + rng.normal(0, 0.03, (side, side))
        lr = hr.reshape(side // 2, 2, side // 2, 2).mean(axis=(1, 3)) + rng.normal(
            0, 0.01, (side // 2, side // 2)
        )
        np.save(root / "HR" / f"p{i:03d}.npy", hr.astype(np.float32))
        np.save(root / "LR" / f"p{i:03d}.npy", lr.astype(np.float32))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    tmp = tmp_path_factory.mktemp("norm")
    data = tmp / "shards"
    pack_to_shards("deeplense", sky_subtracted_pairs(tmp / "src"), data, shard_size=8)
    overrides = tiny_overrides(data, tmp / "runs", steps=2, pretrain=2)
    overrides = [o for o in overrides if not o.startswith(("data.hr_size", "data.options.hr_size"))]
    Trainer(load_config(None, overrides), DistEnv(), torch.device("cpu")).run()
    lr = np.load(sorted((tmp / "src" / "LR").glob("*.npy"))[0])
    assert lr.min() < 0 < lr.max() <= 1  # the case the per-file guess used to stretch
    return tmp / "runs" / "tiny", lr


def test_the_run_records_its_training_values_and_exports_keep_them(
    trained: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    run, _ = trained
    _, payload = load_generator(run)
    values = payload["data_values"]
    assert values["normalize"] == "none" and values["lr"]["min"] < 0 < values["lr"]["negative_fraction"] < 0.5
    _, exported = load_generator(export_generator(run, tmp_path / "g.pt"))
    assert exported["data_values"] == values


def test_cli_default_equals_the_model_on_the_raw_values(
    trained: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, lr = trained
    np.save(tmp_path / "lens.npy", lr)
    assert (
        main(["upscale", "--checkpoint", str(run), str(tmp_path / "lens.npy"), "--out", str(tmp_path / "o")])
        == 0
    )
    assert "the model's training convention: raw values" in capsys.readouterr().err
    g, _ = load_generator(run)
    with torch.no_grad():
        want = g(torch.from_numpy(lr)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "o" / "lens_sr.npy"), want, rtol=0, atol=1e-6)


def test_a_model_without_a_record_guesses_per_file_and_says_so(
    trained: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, lr = trained
    _, payload = load_generator(run)
    payload.pop("data_values")
    atomic_torch_save(payload, tmp_path / "old.pt")
    np.save(tmp_path / "lens.npy", lr)
    assert main(["upscale", "--checkpoint", str(tmp_path / "old.pt"), str(tmp_path / "lens.npy"),
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    assert "records no training value range; chosen per image" in capsys.readouterr().err
    g, _ = load_generator(tmp_path / "old.pt")
    with torch.no_grad():  # sky noise below 0 is tolerated: still the raw values
        want = g(torch.from_numpy(lr)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "o" / "lens_sr.npy"), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("values", "method"),
    [
        (np.linspace(0.0, 1.0, 1000), "none"),
        (np.concatenate([np.linspace(-0.03, 0.0, 300), np.linspace(0, 0.9, 700)]), "none"),  # sky noise
        (np.concatenate([np.linspace(-30.0, 0.0, 300), np.linspace(0, 900, 700)]), "max"),  # counts
        (np.linspace(1000.0, 1200.0, 1000), "max"),  # non-negative: divided by the peak, as in v2
        (np.concatenate([np.linspace(-5.0, 0.0, 500), np.linspace(0, 1.0, 500)]), "percentile"),
    ],
)
def test_per_file_guess(values: np.ndarray, method: str) -> None:
    assert fits_io.choose_normalization(values, "auto", "x").method == method


def test_a_record_overrides_the_guess_and_warns_far_outside_its_range() -> None:
    trained = {"normalize": "none", "lr": {"min": -0.05, "max": 1.0}}
    assert (
        fits_io.choose_normalization(
            np.linspace(1000, 1200, 10), "auto", "x.fits", {"normalize": "none"}
        ).method
        == "none"
    )
    with pytest.warns(fits_io.UpscaleWarning, match=r"x\.fits: values span .* far outside the LR range"):
        fits_io.choose_normalization(np.linspace(0, 40, 10), "auto", "x.fits", trained)
    assert fits_io.choose_normalization(np.linspace(0, 40, 10), "max", "x.fits", trained).method == "max"


def test_the_shipped_model_records_its_training_values() -> None:
    _, payload = load_generator("deeplense-small")
    assert payload["data_values"]["normalize"] == "none"
    assert payload["data_values"]["lr"]["min"] >= 0 and payload["data_values"]["lr"]["max"] <= 1
