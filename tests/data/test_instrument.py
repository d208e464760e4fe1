"""The LR instrument of two-instrument presets (ground_space, randomized): PSFs, noise, misalignment, the
same physics on whole images and windows, and what the data record about LR vs HR."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from hpc_sr.config import ConfigError, load_config
from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator, lr_kernels, param_names_of
from hpc_sr.data.lr_relation import MEAN_TOLERANCE, lr_relation, measure_lr_relation
from hpc_sr.data.presets import INSTRUMENT_NAMES, PRESETS, Instrument, Prior
from hpc_sr.data.shards import pack_to_shards, simulate_to_shards
from hpc_sr.data.truth import lr_model_kernels, mean_lr_pairs, noise_ceiling_estimate
from hpc_sr.errors import DataError
from hpc_sr.eval.physics import per_image_physics
from hpc_sr.imaging import fft_blur, instrument_view, psf_kernels_2d
from hpc_sr.train.components import check_config

D = torch.float64
COL = {n: i for i, n in enumerate((*PARAM_NAMES, *INSTRUMENT_NAMES))}


# ----------------------------------------------------------------------------------------------- kernels
def test_an_unshifted_gaussian_psf_blurs_as_scipy() -> None:
    img = torch.rand(2, 1, 40, 40, dtype=D)
    fwhm = torch.tensor([3.0, 7.5], dtype=D)
    out = fft_blur(img, psf_kernels_2d(fwhm, torch.zeros(2, dtype=D)))
    for k in range(2):
        sigma = float(fwhm[k]) / (2 * np.sqrt(2 * np.log(2)))
        ref = gaussian_filter(img[k, 0].numpy(), sigma, mode="nearest", truncate=5.0)
        np.testing.assert_allclose(out[k, 0].numpy(), ref, rtol=0, atol=1e-12)


def test_fft_blur_is_a_direct_convolution_and_a_shift_moves_the_centroid() -> None:
    img = torch.rand(3, 1, 30, 30, dtype=D)
    k = psf_kernels_2d(
        torch.tensor([4.0, 6.0, 5.0], dtype=D),
        torch.tensor([0.0, 3.0, 2.5], dtype=D),
        torch.tensor([[0.0, 0.0], [0.7, -1.2], [2.0, 3.0]], dtype=D),
    )
    r = (k.shape[-1] - 1) // 2
    padded = F.pad(img, (r, r, r, r), mode="replicate")
    direct = torch.cat([F.conv2d(padded[i : i + 1], k[i].flip(-1, -2)[None, None]) for i in range(3)])
    torch.testing.assert_close(fft_blur(img, k), direct, rtol=0, atol=1e-12)
    delta = torch.zeros(3, 1, 61, 61, dtype=D)
    delta[:, :, 30, 30] = 1.0
    out = fft_blur(delta, k)[:, 0]
    grid = torch.arange(61, dtype=D)
    rows = (out.sum(-1) * grid).sum(-1) / out.sum((-1, -2))
    cols = (out.sum(-2) * grid).sum(-1) / out.sum((-1, -2))
    torch.testing.assert_close(rows - 30, torch.tensor([0.0, 0.7, 2.0], dtype=D), atol=1e-3, rtol=0)
    torch.testing.assert_close(cols - 30, torch.tensor([0.0, -1.2, 3.0], dtype=D), atol=1e-3, rtol=0)


@pytest.mark.parametrize("beta", [0.0, 2.5, 4.0])
def test_a_psf_has_the_fwhm_it_was_asked_for(beta: float) -> None:
    k = psf_kernels_2d(torch.tensor([9.0], dtype=D), torch.tensor([beta], dtype=D), radius=40)[0]
    profile = k[40, 40:] / k[40, 40]  # the centre row, from the peak outwards
    i = int((profile < 0.5).nonzero()[0, 0])
    half = (i - 1) + (profile[i - 1] - 0.5) / (profile[i - 1] - profile[i])  # linear interpolation
    assert abs(2 * float(half) - 9.0) < 0.15
    assert abs(float(k.sum()) - 1.0) < 1e-12


# ----------------------------------------------------------------------------------------------- presets
def test_instrument_draws_come_after_the_lens_draws() -> None:
    with_inst = PRESETS["ground_space"]
    without = dataclasses.replace(with_inst, lr_instrument=None)
    a = LensingSimulator(with_inst, hr_size=32).sample_params(6, torch.Generator().manual_seed(4))
    b = LensingSimulator(without, hr_size=32).sample_params(6, torch.Generator().manual_seed(4))
    assert a.shape == (6, len(PARAM_NAMES) + len(INSTRUMENT_NAMES)) and b.shape == (6, len(PARAM_NAMES))
    torch.testing.assert_close(a[:, : -1 - len(INSTRUMENT_NAMES)], b[:, :-1], rtol=0, atol=0)
    assert param_names_of("ground_space") == (*PARAM_NAMES, *INSTRUMENT_NAMES)
    assert param_names_of("deeplense_sr") == PARAM_NAMES
    inst = with_inst.lr_instrument
    assert inst is not None
    lo, hi = inst.psf_fwhm.support
    fwhm = a[:, COL["lr_psf_fwhm"]]
    assert bool(((fwhm >= lo) & (fwhm <= hi)).all())


def test_instrument_and_lr_mode_errors_name_the_value() -> None:
    with pytest.raises(DataError, match="moffat_fraction=1.5 must lie in"):
        Instrument(psf_fwhm=Prior(0.5, 0.7), moffat_fraction=1.5)
    with pytest.raises(DataError, match="psf_beta prior .* must stay > 1"):
        Instrument(psf_fwhm=Prior(0.5, 0.7), psf_beta=Prior(0.5, 2.0), moffat_fraction=0.5)
    with pytest.raises(DataError, match="lr_mode='instrument' needs a preset .*ground_space"):
        LensingSimulator("deeplense_sr", lr_mode="instrument")


@pytest.mark.parametrize("preset", ["ground_space", "randomized"])
def test_windows_render_the_same_lr_as_whole_images(preset: str) -> None:
    sim = LensingSimulator(preset, hr_size=48, dtype=D)
    params = sim.sample_params(8, torch.Generator().manual_seed(7))
    offsets = torch.tensor([[0, 0], [0, 32], [32, 0], [32, 32], [16, 16], [8, 24], [24, 8], [2, 30]])
    whole = sim.render_lr(params, noise=False)  # HR units (flux per LR pixel / 4)
    win = sim.window_pairs(params, offsets, 16, noise=False)
    peak = win.params[:, COL["hr_peak_flux"]].reshape(-1, 1, 1, 1)
    crops = torch.stack([whole[i, :, y // 2 : y // 2 + 8, x // 2 : x // 2 + 8] for i, (y, x) in
                         enumerate(offsets.tolist())])  # fmt: skip
    mean_pairs = mean_lr_pairs(params)
    inst = ~mean_pairs
    torch.testing.assert_close((win.lr * peak)[inst], crops[inst], rtol=0, atol=1e-12 * float(whole.max()))
    hr_whole = sim.render(params, noise=False)
    hr_crops = torch.stack(
        [hr_whole[i, :, y : y + 16, x : x + 16] for i, (y, x) in enumerate(offsets.tolist())]
    )
    torch.testing.assert_close(win.hr * peak, hr_crops, rtol=0, atol=1e-12 * float(hr_whole.max()))
    if bool(mean_pairs.any()):  # randomized: pairs left as the block mean of HR
        torch.testing.assert_close(win.lr[mean_pairs], F.avg_pool2d(win.hr[mean_pairs], 2), rtol=0, atol=0)


def test_lr_is_blurred_misaligned_and_as_noisy_as_the_model_says() -> None:
    sim = LensingSimulator("ground_space", hr_size=64, dtype=D)
    gen = torch.Generator().manual_seed(3)
    params = sim.sample_params(24, gen)
    clean = sim.render_lr(params, noise=False)
    noisy = sim.render_lr(params, noise=True, generator=gen)
    flux4 = clean * 4  # flux per LR pixel
    t = params[:, COL["lr_exposure_time"]].reshape(-1, 1, 1, 1)
    bkg = params[:, COL["lr_background_rms"]].reshape(-1, 1, 1, 1)
    predicted = (flux4 / t + bkg**2) / 16  # variance of flux / 4
    z = (noisy - clean) / predicted.sqrt()
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    # the batch's LR is not the block mean of its HR, and says so
    batch = sim.sample(16, generator=gen)
    rel = measure_lr_relation(batch.hr.numpy(), batch.lr.numpy(), 2, "ground_space batch")
    assert rel.is_mean is False and rel.residual is not None and rel.residual > 10 * MEAN_TOLERANCE


def test_the_lr_model_predicts_lr_from_the_noise_free_hr() -> None:
    """The chi^2 check: the noise-free HR seen through lr_model_kernels is the noise-free LR (interior),
    which catches a wrong PSF, shift sign or pixel response; without the shift it is visibly worse."""
    sim = LensingSimulator("ground_space", hr_size=96, dtype=D)
    params = sim.sample_params(6, torch.Generator().manual_seed(5))
    hr = sim.render(params, noise=False)
    lr = sim.render_lr(params, noise=False)
    kernels = lr_model_kernels(params, "ground_space", 2)
    assert kernels is not None
    pred = instrument_view(hr, kernels, 2)
    inner = (..., slice(12, -12), slice(12, -12))
    err = (pred - lr)[inner].abs().amax() / lr.amax()
    assert float(err) < 2e-3
    unshifted = params.clone()
    unshifted[:, COL["lr_shift_x"]] = 0.0
    unshifted[:, COL["lr_shift_y"]] = 0.0
    wrong = lr_model_kernels(unshifted, "ground_space", 2)
    assert wrong is not None
    err_wrong = (instrument_view(hr, wrong, 2) - lr)[inner].abs().amax() / lr.amax()
    assert float(err_wrong) > 5 * float(err)


def test_physics_lr_residual_and_ceiling_go_through_the_lr_model() -> None:
    sim = LensingSimulator("ground_space", hr_size=64)
    batch = sim.sample(8, generator=torch.Generator().manual_seed(9))
    params = batch.params.double()
    clean = noise_ceiling_estimate(batch.lr, params, "ground_space", 2)
    from hpc_sr.data.truth import clean_images

    truth = clean_images(params, "ground_space", 64)
    torch.testing.assert_close(clean, truth, rtol=0, atol=0)  # instrument LR: no projection
    kernels = lr_model_kernels(params, "ground_space", 2)
    up = F.interpolate(batch.lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    through = per_image_physics(truth, batch.hr, batch.lr, 2, lr_kernels=kernels)["lr_residual"]
    naive = per_image_physics(truth, batch.hr, batch.lr, 2)["lr_residual"]
    bicubic = per_image_physics(up, batch.hr, batch.lr, 2, lr_kernels=kernels)["lr_residual"]
    assert float(through.mean()) < float(naive.mean()) and float(through.mean()) < float(bicubic.mean())
    # without LR's noise the true HR agrees with LR through the model only (the block mean misses by far)
    peak = params[:, COL["hr_peak_flux"]].reshape(-1, 1, 1, 1)
    lr_clean = (sim.render_lr(params, noise=False).double() / peak).clamp(0, 1).float()
    through = per_image_physics(truth, batch.hr, lr_clean, 2, lr_kernels=kernels)["lr_residual"]
    naive = per_image_physics(truth, batch.hr, lr_clean, 2)["lr_residual"]
    assert float(through.mean()) < 0.1 * float(naive.mean())
    # LR kernels of a pair left as a mean are a delta: the block mean is its whole LR model
    rnd = LensingSimulator("randomized", hr_size=32).sample_params(32, torch.Generator().manual_seed(1))
    k = lr_kernels(rnd.double(), 0.05, 2)
    mean_pairs = mean_lr_pairs(rnd)
    assert 0 < int(mean_pairs.sum()) < 32
    assert bool((k[mean_pairs].amax(dim=(1, 2)) == 1.0).all())


# ----------------------------------------------------------------------------------------------- records
def test_manifests_record_the_lr_relation_and_training_refuses_lr_consistency(tmp_path: Path) -> None:
    gs = simulate_to_shards(tmp_path / "gs", num=12, preset="ground_space", seed=0, hr_size=32)
    assert gs.param_names == [*PARAM_NAMES, *INSTRUMENT_NAMES]
    rec = gs.provenance["lr_relation"]
    assert rec["is_mean"] is False and "ground_space" in rec["source"]
    assert lr_relation(tmp_path / "gs").is_mean is False
    mean = simulate_to_shards(tmp_path / "mean", num=12, preset="deeplense_sr", seed=0, hr_size=32)
    assert mean.provenance["lr_relation"]["is_mean"] is True

    def plan(path: Path, *extra: str) -> object:
        return check_config(load_config(None, [f"data.path={path}", "train.steps=4", "train.pretrain_steps=4",
                                               *extra]))  # fmt: skip

    plan(tmp_path / "mean", "model.g.lr_consistent=true")
    plan(tmp_path / "gs")
    with pytest.raises(ConfigError, match=r"model\.g\.lr_consistent=true .*NOT the block mean"):
        plan(tmp_path / "gs", "model.g.lr_consistent=true")
    terms = "train.losses=[{term: pixel}, {term: lr_consistency, weight: 0.1}]"
    with pytest.raises(ConfigError, match="the lr_consistency term"):
        plan(tmp_path / "gs", terms)
    with pytest.raises(ConfigError, match="simulator preset 'randomized'"):
        check_config(load_config(None, ["data.source=simulate", "data.options.preset=randomized",
                                        "model.g.lr_consistent=true", "train.steps=4",
                                        "train.pretrain_steps=4"]))  # fmt: skip


def test_pack_measures_the_relation_of_a_two_instrument_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    for name, blur in (("mean", 0.0), ("blurred", 2.0)):
        src = tmp_path / name
        (src / "HR").mkdir(parents=True)
        (src / "LR").mkdir()
        for i in range(6):
            hr = gaussian_filter(rng.random((32, 32)), 1.5).astype(np.float32)
            lr = hr.reshape(16, 2, 16, 2).mean(axis=(1, 3))
            if blur:
                lr = gaussian_filter(lr, blur) + rng.normal(0, 0.01, lr.shape)
            np.save(src / "HR" / f"p{i}.npy", hr)
            np.save(src / "LR" / f"p{i}.npy", lr.astype(np.float32))
        m = pack_to_shards("deeplense", src, tmp_path / f"{name}_out", shard_size=4)
        rel = m.provenance["lr_relation"]
        assert rel["is_mean"] is (name == "mean"), rel
    assert "NOT the block mean" in capsys.readouterr().err
    from hpc_sr.apps.inspect import format_report, inspect_dataset

    report = inspect_dataset(tmp_path / "blurred_out", quiet=True)
    text = format_report(report)
    assert "LR vs HR: LR is NOT the block mean of HR" in text and "refused" in text
    saved = json.loads((tmp_path / "blurred_out" / "manifest.json").read_text())
    assert saved["provenance"]["lr_relation"]["residual"] > MEAN_TOLERANCE


def test_evaluate_leaves_the_block_mean_residual_out_of_a_packed_two_instrument_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A packed set whose LR is not the block mean of HR records no instrument to model LR with: evaluate
    reports no lr_residual there and says why; on a simulated two-instrument set it is computed through the
    recorded instrument."""
    from hpc_sr.apps.evaluate import evaluate

    sim = LensingSimulator("ground_space", hr_size=32)
    batch = sim.sample(10, generator=torch.Generator().manual_seed(2))
    src = tmp_path / "pairs"
    (src / "HR").mkdir(parents=True)
    (src / "LR").mkdir()
    for i in range(10):
        np.save(src / "HR" / f"p{i}.npy", batch.hr[i, 0].numpy())
        np.save(src / "LR" / f"p{i}.npy", batch.lr[i, 0].numpy())
    pack_to_shards("deeplense", src, tmp_path / "packed", shard_size=8, split=(0.5, 0.0, 0.5))
    capsys.readouterr()
    packed = evaluate("deeplense-small", tmp_path / "packed", split="test")
    assert "lr_residual" not in packed["physics"]["model"]
    assert "NOT the block mean" in packed["physics_notes"]["lr_residual"]
    assert "lr_residual: absent" in capsys.readouterr().out
    simulate_to_shards(
        tmp_path / "sim", num=10, preset="ground_space", seed=0, hr_size=32, split=(0.5, 0.0, 0.5)
    )
    simulated = evaluate("deeplense-small", tmp_path / "sim", split="test", quiet=True)
    assert "lr_residual" in simulated["physics"]["model"] and "physics_notes" not in simulated


def test_an_old_packed_set_is_measured_on_its_first_non_empty_split(tmp_path: Path) -> None:
    """A set packed before the relation was recorded is measured on read, also when it has no train split."""
    rng = np.random.default_rng(1)
    src = tmp_path / "pairs"
    (src / "HR").mkdir(parents=True)
    (src / "LR").mkdir()
    for i in range(4):
        hr = rng.random((16, 16)).astype(np.float32)
        np.save(src / "HR" / f"p{i}.npy", hr)
        np.save(src / "LR" / f"p{i}.npy", gaussian_filter(hr.reshape(8, 2, 8, 2).mean(axis=(1, 3)), 1.0))
    m = pack_to_shards("deeplense", src, tmp_path / "test_only", shard_size=4, split=(0.0, 0.0, 1.0))
    manifest = tmp_path / "test_only" / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["provenance"]["lr_relation"]  # as written before this record existed
    manifest.write_text(json.dumps(doc))
    rel = lr_relation(tmp_path / "test_only")
    assert m.count == 4 and rel.is_mean is False and "(test split)" in rel.source
