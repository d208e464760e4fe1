"""`hpc-sr evaluate --samples N`: sample-mean metrics and the calibration table of a stochastic generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_sr.apps.evaluate import EvaluateError, evaluate, format_table
from hpc_sr.errors import CheckpointError
from hpc_sr.models.artifacts import generator_payload
from hpc_sr.models.registry import generator_from_spec, generator_spec


def generator_file(tmp_path: Path, noise: int) -> Path:
    """A small RRDB G.pt whose last layer is not zero (so its samples differ), as an exported file."""
    g_cfg = {
        "arch": "rrdb",
        "options": {"channels": 8, "blocks": 1, "growth": 4},
        "lr_consistent": True,
        "noise_channels": noise,
    }
    torch.manual_seed(0)
    g = generator_from_spec(generator_spec(g_cfg), 2)
    with torch.no_grad():
        g.tail.weight.normal_(0, 0.01)
    out = tmp_path / f"G{noise}.pt"
    torch.save(generator_payload({"g": g_cfg}, 2, g.state_dict(), "test", 0), out)
    return out


def test_samples_give_the_sample_mean_and_calibration_rows(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = evaluate(generator_file(tmp_path, 1), tiny_shards, json_out=out, samples=8, quiet=True)
    saved = json.loads(out.read_text())
    cal = saved["calibration"]
    assert cal["samples"] == 8 and cal["level"] == 0.68 and cal["images"] == saved["n"] == 5
    assert [b["name"] for b in cal["bins"]] == ["background", "faint", "bright"]
    assert sum(b["pixels"] for b in cal["bins"]) == cal["overall"]["pixels"] == 5 * 32 * 32
    assert 0.0 < cal["overall"]["coverage"] <= 1.0 and cal["overall"]["width"] > 0
    assert saved["sample_mean"]["psnr"] == pytest.approx(cal["mean_psnr"], abs=1e-9)
    assert saved["sample_mean"]["psnr"] != saved["model"]["psnr"]  # the mean of 8 is not one sample
    again = evaluate(generator_file(tmp_path, 1), tiny_shards, samples=8, quiet=True)
    assert again["calibration"] == result["calibration"]  # seeded
    table = format_table(result)
    assert "sample_mean" in table and "68% coverage" in table and "background" in table
    mean_gain = saved["sample_mean"]["psnr"] - saved["bicubic"]["psnr"]
    assert f"(one sample)\nsample mean: gain over bicubic {mean_gain:+.3f} dB" in table


def test_samples_of_a_deterministic_generator_is_a_clear_error(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluateError, match=r"--samples 8: the generator is deterministic"):
        evaluate(generator_file(tmp_path, 0), tiny_shards, samples=8, quiet=True)
    with pytest.raises(EvaluateError, match=r"--samples 4: .*at least 6 samples"):
        evaluate(generator_file(tmp_path, 1), tiny_shards, samples=4, quiet=True)


def test_antithetic_samples_of_a_centred_generator_average_to_its_centre(
    tiny_shards: Path, tmp_path: Path
) -> None:
    g_cfg = {"arch": "rrdb", "options": {"channels": 8, "blocks": 1, "growth": 4}, "lr_consistent": True,
             "noise_channels": 1, "noise_centred": True}  # fmt: skip
    torch.manual_seed(0)
    g = generator_from_spec(generator_spec(g_cfg), 2)
    with torch.no_grad():
        g.tail.weight.normal_(0, 0.01)
        g.head.weight[:, 1:].normal_(0, 0.3)
    path = tmp_path / "Gc.pt"
    torch.save(generator_payload({"g": g_cfg}, 2, g.state_dict(), "test", 0), path)
    anti = evaluate(path, tiny_shards, samples=8, antithetic=True, quiet=True)
    iid = evaluate(path, tiny_shards, samples=8, quiet=True)
    assert anti["calibration"]["antithetic"] is True and iid["calibration"]["antithetic"] is False
    assert anti["calibration"]["mean_psnr_inf"] != anti["calibration"]["mean_psnr_inf"]  # NaN: undefined
    assert "antithetic pairs (z, -z)" in format_table(anti)
    # the antithetic mean is the centre G(lr, 0): no sampling noise left, unlike 8 independent draws
    assert anti["sample_mean"]["psnr"] > iid["sample_mean"]["psnr"]
    with pytest.raises(EvaluateError, match="--samples 7 --antithetic: antithetic pairs need an even number"):
        evaluate(path, tiny_shards, samples=7, antithetic=True, quiet=True)


def test_recalibrate_on_val_then_reuse_the_fitted_scales(tiny_shards: Path, tmp_path: Path) -> None:
    path = generator_file(tmp_path, 1)
    out = tmp_path / "recal.json"
    fitted = evaluate(path, tiny_shards, json_out=out, samples=8, recalibrate_on="val", quiet=True)
    plain = evaluate(path, tiny_shards, samples=8, quiet=True)
    scales = fitted["spread_scales"]
    assert scales["fitted_on"] == "the first 5 images of split 'val'"
    assert len(scales["scales"]) == len(scales["edges"]) + 1 and sum(scales["pixels"]) == 5 * 32 * 32
    assert fitted["calibration_raw"] == plain["calibration"]  # the same test draws, before scaling
    assert fitted["calibration"]["recalibrated"] is True
    assert fitted["calibration"]["overall"]["width"] != plain["calibration"]["overall"]["width"]
    # the sample mean does not move: the deviations are scaled around it
    assert fitted["sample_mean"]["psnr"] == pytest.approx(plain["sample_mean"]["psnr"], abs=1e-4)  # float32
    assert "recalibrated: spread scales per brightness bin" in format_table(fitted)
    reused = evaluate(path, tiny_shards, samples=8, spread_scales=out, quiet=True)
    assert reused["calibration"] == fitted["calibration"]
    with pytest.raises(EvaluateError, match="fit the scales on another split"):
        evaluate(path, tiny_shards, samples=8, recalibrate_on="test", quiet=True)
    with pytest.raises(EvaluateError, match="need --samples N"):
        evaluate(path, tiny_shards, recalibrate_on="val", quiet=True)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(EvaluateError, match=r"junk\.json: not a spread-scales record"):
        evaluate(path, tiny_shards, samples=8, spread_scales=tmp_path / "junk.json", quiet=True)


def test_store_calibration_puts_the_fitted_scales_in_the_generator_file(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--store-calibration` (through the CLI): the G.pt holds the scales; inference applies them."""
    from hpc_sr.apps.inference.sampling import sample_mean_and_sigma, spread_scales_of
    from hpc_sr.cli import main as cli_main
    from hpc_sr.models.artifacts import CALIBRATION_KEY, load_generator

    path = generator_file(tmp_path, 1)
    out = tmp_path / "recal.json"
    argv = ["evaluate", "--checkpoint", str(path), "--data", str(tiny_shards), "--samples", "8",
            "--recalibrate-on", "val", "--store-calibration", "--json", str(out)]
    assert cli_main(argv) == 0
    assert f"spread calibration stored: {path}" in capsys.readouterr().out
    result = json.loads(out.read_text())
    g, payload = load_generator(path)
    rec = payload[CALIBRATION_KEY]
    assert rec["format"] == "hpc_sr.spread_calibration" and result["calibration_stored"] == str(path)
    fitted = result["spread_scales"]
    assert all(rec["spread_scales"][k] == fitted[k] for k in ("edges", "scales", "pixels", "level", "block"))
    fit = rec["fit"]
    assert [fit[k] for k in ("split", "images", "samples", "antithetic", "seed")] == ["val", 5, 8, False, 0]
    assert fit["data"] == str(tiny_shards.resolve()) and fit["date"].endswith("+00:00")
    assert rec["weights"] == {"source": "test", "step": 0, "ema": False}
    assert rec["check"]["split"] == "test"
    assert rec["check"]["coverage"] == result["calibration"]["overall"]["coverage"]
    scales = spread_scales_of(rec)
    assert scales is not None and list(scales.scales) == result["spread_scales"]["scales"]
    lr = torch.rand(2, 1, 16, 16) / 10
    raw = sample_mean_and_sigma(g, lr, 8)[1]
    calibrated = sample_mean_and_sigma(g, lr, 8, rec)[1]
    torch.testing.assert_close(calibrated, raw * scales.scale_map(sample_mean_and_sigma(g, lr, 8)[0]))


def test_store_calibration_needs_a_fit_of_one_generator(tiny_shards: Path, tmp_path: Path) -> None:
    path = generator_file(tmp_path, 1)
    with pytest.raises(EvaluateError, match="--store-calibration stores the scales --recalibrate-on fits"):
        evaluate(path, tiny_shards, samples=8, store_calibration=True, quiet=True)
    with pytest.raises(EvaluateError, match="belong to no one checkpoint"):
        evaluate([path, path], tiny_shards, samples=8, recalibrate_on="val", store_calibration=True,
                 quiet=True)
    with pytest.raises(CheckpointError, match="a shipped generator is not changed"):
        evaluate("deeplense-small", tiny_shards, samples=8, recalibrate_on="val", store_calibration=True,
                 quiet=True)
