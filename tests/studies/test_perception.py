"""The perception-distortion study: noise baseline, high-band ratio, HF correlation, summaries, verdict, and
the command end to end on a tiny simulated set with two tiny generators."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpc_sr.data.lensing import simulate
from hpc_sr.data.truth import clean_images, noise_rms_from_params, noise_variance
from hpc_sr.eval.spectra import band_powers
from hpc_sr.models.artifacts import generator_payload
from hpc_sr.models.registry import build_generator
from hpc_sr.studies.common import StudyArgumentError, parse_named
from hpc_sr.studies.perception import (
    CEILING,
    SAMPLE,
    BaselineCurve,
    hf_correlation,
    high_band_ratio,
    high_pass,
    judge,
    main,
    noise_baseline,
    parse_scales,
    pd_metrics,
    summarize,
)

TINY = {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}}


@pytest.fixture(scope="module")
def sim() -> dict[str, torch.Tensor]:
    """4 simulated 32x32 pairs, their noise-free images and per-pixel noise rms."""
    b = simulate(4, "deeplense_sr", seed=3, hr_size=32)
    clean = clean_images(b.params, "deeplense_sr", 32)
    return {"hr": b.hr.double(), "lr": b.lr.double(), "params": b.params, "clean": clean,
            "sigma": noise_variance(b.params, clean).sqrt()}  # fmt: skip


def test_noise_baseline_high_band_power_grows_with_scale_and_keeps_lr(sim: dict[str, torch.Tensor]) -> None:
    sr, hr, band = sim["clean"], sim["hr"], ((0.25, 0.5),)
    ratios, added = [], []
    for s in (0.0, 0.5, 1.0, 2.0):
        out = noise_baseline(sr, sim["sigma"], s, torch.Generator().manual_seed(0), lr_scale=2)
        assert out.dtype == torch.float64
        # the block means are untouched: an LR-consistent SR stays LR-consistent
        torch.testing.assert_close(F.avg_pool2d(out, 2), F.avg_pool2d(sr, 2))
        ratios.append(high_band_ratio(out, hr))
        added.append(band_powers(out - sr, band)[:, 0])
    assert torch.equal(noise_baseline(sr, sim["sigma"], 0.0), sr)
    for lo, hi in zip(ratios, ratios[1:]):  # the image's own high band is large here (32-pixel crops of arcs)
        assert bool((hi > lo).all()), (lo, hi)
    torch.testing.assert_close(added[3], 4 * added[2])  # the same noise: its power goes as scale^2
    assert float(added[0].max()) == 0.0 and bool((added[2] > 0).all())
    # plain noise: variance scale^2 sigma^2 (per image sigma here); block-mean-free: 3/4 of it
    flat = torch.zeros(2, 1, 64, 64, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    plain = noise_baseline(flat, torch.tensor([0.1, 0.2]), 0.5, g)
    assert plain.flatten(1).std(1).tolist() == pytest.approx([0.05, 0.1], rel=0.05)
    free = noise_baseline(flat, 0.1, 1.0, g, lr_scale=2)
    assert float(free.var()) == pytest.approx(0.75 * 0.01, rel=0.05)
    with pytest.raises(ValueError, match="scale"):
        noise_baseline(flat, 0.1, -1.0)
    with pytest.raises(ValueError, match="3 values for 2 images"):
        noise_baseline(flat, torch.ones(3), 1.0)


def test_high_band_ratio_of_hr_with_itself_is_one(sim: dict[str, torch.Tensor]) -> None:
    hr = sim["hr"]
    torch.testing.assert_close(high_band_ratio(hr, hr), torch.ones(4, dtype=torch.float64))
    # the noise-free image has much less power above the LR Nyquist than noisy HR; bicubic even less
    bic = F.interpolate(sim["lr"], scale_factor=2, mode="bicubic", align_corners=False)
    r_clean, r_bic = high_band_ratio(sim["clean"], hr), high_band_ratio(bic, hr)
    assert bool((r_clean < 1).all()) and bool((r_bic < 1).all())
    # SR is clamped to [0, 1] first: values above 1 do not add power
    torch.testing.assert_close(high_band_ratio(hr * 0 + 2.0, hr), torch.zeros(4, dtype=torch.float64))


def test_hf_correlation_one_with_itself_zero_with_noise(sim: dict[str, torch.Tensor]) -> None:
    clean = sim["clean"]
    torch.testing.assert_close(hf_correlation(clean, clean), torch.ones(4, dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    noise = 0.5 + 0.1 * torch.randn(4, 1, 32, 32, generator=g, dtype=torch.float64)
    big = F.interpolate(clean, size=(96, 96), mode="bilinear", align_corners=False)
    noise_big = 0.5 + 0.1 * torch.randn(big.shape, generator=g, dtype=torch.float64)
    assert float(hf_correlation(noise_big, big).abs().max()) < 0.1
    # over a mask: the Pearson correlation of the masked high-pass pixels (numpy as the oracle)
    mask = clean > clean.flatten(1).median(1).values.reshape(-1, 1, 1, 1)
    got = hf_correlation(noise, clean, mask)
    a, b = high_pass(noise.clamp(0, 1)), high_pass(clean)
    for i in range(4):
        m = mask[i, 0].numpy()
        want = np.corrcoef(a[i, 0].numpy()[m], b[i, 0].numpy()[m])[0, 1]
        assert float(got[i]) == pytest.approx(want, abs=1e-9)
    empty = torch.zeros_like(mask)
    assert bool(torch.isnan(hf_correlation(noise, clean, empty)).all())
    # a constant image has no high frequencies
    assert float(high_pass(torch.full((1, 1, 8, 8), 0.3)).abs().max()) < 1e-12


def test_pd_metrics_and_summarize(sim: dict[str, torch.Tensor]) -> None:
    hr, clean = sim["hr"], sim["clean"]
    per = pd_metrics(clean, hr, clean, noise_rms_from_params(sim["params"]))
    assert set(per) == {"psnr", "mse", "ssim", "flux_err", "high_band_ratio", "arc_psnr", "hf_corr"}
    assert all(v.shape == (4,) and v.dtype == torch.float64 for v in per.values())
    torch.testing.assert_close(per["hf_corr"], torch.ones(4, dtype=torch.float64))
    s = summarize(per)
    assert s["n"] == 4 and s["psnr"] == pytest.approx(float(per["psnr"].mean()))
    assert s["psnr_pooled"] == pytest.approx(10 * math.log10(1 / float(per["mse"].mean())))
    assert s["high_band_ratio"] == pytest.approx(float(per["high_band_ratio"].log().mean().exp()))
    per["arc_psnr"][0] = math.nan  # an empty arc mask is left out of the mean
    assert summarize(per)["arc_psnr"] == pytest.approx(float(per["arc_psnr"][1:].mean()))
    with pytest.raises(ValueError, match="hf_corr"):
        summarize({k: v for k, v in per.items() if k != "hf_corr"})


CURVE = BaselineCurve(scales=(0.0, 0.5, 1.0), ratio=(0.2, 0.5, 1.0), psnr=(42.0, 41.0, 39.0),
                      arc_psnr=(36.0, 35.0, 33.0))  # fmt: skip
BICUBIC = {"psnr": 41.2, "ssim": 0.970}


def test_baseline_curve_interpolates_and_extrapolates() -> None:
    assert CURVE.at(0.35) == pytest.approx((41.5, 35.5, "inside"))
    p, a, where = CURVE.at(1.25)  # beyond scale 1: the last segment continued
    assert (p, a, where) == (pytest.approx(38.0), pytest.approx(32.0), "above")
    assert CURVE.at(0.1) == (42.0, 36.0, "below")  # less sharp than the PSNR model: its own values
    with pytest.raises(ValueError, match="rise with scale"):
        BaselineCurve((0.0, 1.0), (0.5, 0.4), (1.0, 0.0), (1.0, 0.0))
    with pytest.raises(ValueError, match=">= 2 points"):
        BaselineCurve((0.0,), (0.5,), (1.0,), (1.0,))
    rows = {1.0: {"high_band_ratio": 1.0, "psnr": 39.0, "arc_psnr": 33.0},
            0.0: {"high_band_ratio": 0.2, "psnr": 42.0, "arc_psnr": 36.0}}  # fmt: skip
    assert BaselineCurve.from_rows(rows).scales == (0.0, 1.0)


def test_judge_gives_both_outcomes() -> None:
    point = {"high_band_ratio": 0.35, "psnr": 41.7, "arc_psnr": 35.6, "ssim": 0.972}
    good = judge("G", point, CURVE, BICUBIC)
    assert good.earns and good.failures == () and good.where == "inside"
    assert good.baseline_psnr == pytest.approx(41.5) and "earns its place" in good.text()
    assert "+0.200" in good.text() and "1.750 x the PSNR model's" in good.text()
    # higher PSNR than the baseline but a worse arc region, and SSIM below bicubic's
    bad = judge("G", {"high_band_ratio": 0.35, "psnr": 41.7, "arc_psnr": 35.4, "ssim": 0.969}, CURVE, BICUBIC)
    assert not bad.earns and len(bad.failures) == 2
    assert "does not earn its place" in bad.text() and "arc PSNR 35.400 <= baseline 35.500" in bad.text()
    assert "SSIM 0.9690 < bicubic 0.9700" in bad.text()
    # sharper than noise at x1, above the baseline there, but below bicubic's PSNR
    low = judge("G", {"high_band_ratio": 1.25, "psnr": 40.0, "arc_psnr": 34.0, "ssim": 0.975}, CURVE, BICUBIC)
    assert not low.earns and low.where == "above" and low.failures == ("PSNR 40.000 < bicubic 41.200 dB",)
    assert "extrapolated" in low.text()
    # above the baseline, but by staying where the PSNR model is: no place earned
    near = {"high_band_ratio": 0.205, "psnr": 42.0, "arc_psnr": 36.0, "ssim": 0.975}
    still = judge("G", near, CURVE, BICUBIC)
    assert not still.earns and still.failures == (
        "high-band power only 1.025 x the PSNR model's (< 1.05): it stays at the PSNR model's point",
    )


# ----------------------------------------------------------------------------------------------- command
def save_tiny(path: Path, seed: int | None) -> Path:
    """A tiny x2 generator file; with ``seed`` its last layer is random (not bicubic any more)."""
    g = build_generator(TINY["arch"], TINY["options"], 2)
    if seed is not None:
        torch.manual_seed(seed)
        torch.nn.init.normal_(g.tail.weight, std=0.05)
    torch.save(generator_payload({"g": TINY}, 2, g.state_dict(), "test", 0), path)
    return path


def test_command_writes_table_verdicts_and_pictures(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    psnr, gan = save_tiny(tmp_path / "psnr.pt", None), save_tiny(tmp_path / "gan.pt", 5)
    out = tmp_path / "pd"
    rc = main([str(tiny_shards), "--psnr", f"P={psnr}", "--gan", f"G={gan}", "--scales", "0.5,1",
               "--batch", "2", "--grid", "2", "--crop", "24", "--out", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "pd.json").read_text())
    rows = doc["rows"]
    assert list(rows) == ["bicubic", "P", "P + noise x0.5", "P + noise x1", "G", CEILING, SAMPLE]
    assert doc["n"] == 5 and all(r["n"] == 5 for r in rows.values())  # the 5 test images
    assert doc["scales"] == [0.0, 0.5, 1.0] and doc["noise"] == "LR-block-mean-free" and doc["ema"] is True
    assert [rows[k]["kind"] for k in ("bicubic", "P", "P + noise x1", "G", CEILING)] == [
        "bicubic", "baseline", "baseline", "gan", "reference"]  # fmt: skip
    base = doc["baseline"]
    assert base["high_band_ratio"][0] < base["high_band_ratio"][1] < base["high_band_ratio"][2]
    assert base["psnr"][0] > base["psnr"][2]  # noise costs PSNR
    assert base["psnr"][0] == pytest.approx(rows["P"]["psnr"])
    # a sample of HR given LR has about the HR's high-band power and about twice the ceiling's MSE
    assert rows[SAMPLE]["mse"] > 1.5 * rows[CEILING]["mse"]
    assert rows[SAMPLE]["high_band_ratio"] > rows[CEILING]["high_band_ratio"]
    (verdict,) = doc["verdicts"]
    assert verdict["name"] == "G" and isinstance(verdict["earns"], bool)
    md = (out / "pd.md").read_text()
    assert "| P + noise x0.5 |" in md and "| G |" in md and "5 images (LR-block-mean-free" in md
    assert ("**G: earns its place.**" in md) == verdict["earns"] == (not verdict["failures"])
    assert verdict["text"] in md and verdict["text"] in capsys.readouterr().out
    for png in ("pd.png", "grid.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_rejects_bad_arguments(tiny_shards: Path, tmp_path: Path) -> None:
    assert parse_scales("1, 0.5,0.5") == (0.0, 0.5, 1.0)
    assert parse_named("runs/G1e2", "--gan") == ("G1e2", "runs/G1e2")
    with pytest.raises(ValueError, match="needs at least one scale > 0"):
        parse_scales("0")
    with pytest.raises(ValueError, match=">= 0"):
        parse_scales("-1")
    with pytest.raises(StudyArgumentError, match="--psnr '=x': expected NAME=RUN"):
        parse_named("=x", "--psnr")
    psnr = save_tiny(tmp_path / "psnr.pt", None)
    with pytest.raises(SystemExit):
        main([str(tiny_shards), "--psnr", f"bicubic={psnr}", "--out", str(tmp_path / "o")])
    missing = tmp_path / "missing.pt"
    assert main([str(tiny_shards), "--psnr", f"P={missing}", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
