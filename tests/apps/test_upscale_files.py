"""upscale_paths / run_upscale on real files: units, WCS, HDUs, normalisation, folders, clashes, CLI.

The model is an untrained bicubic-skip SRResNet: its output is bicubic, so every expected value is known.
"""

from __future__ import annotations

import argparse
import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

fits = pytest.importorskip("astropy.io.fits")
from astropy.wcs import WCS  # noqa: E402

import hpc_sr  # noqa: E402
from hpc_sr.apps.fits_io import UpscaleWarning  # noqa: E402
from hpc_sr.apps.upscale import (  # noqa: E402
    add_upscale_arguments,
    options_from_args,
    run_upscale,
    upscale_paths,
)
from hpc_sr.errors import DataError  # noqa: E402
from hpc_sr.models.layers import bicubic  # noqa: E402
from hpc_sr.models.registry import build_generator  # noqa: E402


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_generator("srresnet", {"channels": 4, "blocks": 1}, 2)


def bicubic_np(a: np.ndarray) -> np.ndarray:
    return bicubic(torch.from_numpy(np.asarray(a, np.float64))[None, None], 2)[0, 0].numpy()


def gaussian(
    h: int = 24, w: int = 20, sigma: float = 2.5, peak: float = 500.0, floor: float = 0.0
) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    g = np.exp(-((y - (h - 1) / 2) ** 2 + (x - (w - 1) / 2) ** 2) / (2 * sigma**2))
    return (floor + peak * g).astype(np.float32)


def tan_header(h: int, w: int) -> fits.Header:
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRVAL1"], hdr["CRVAL2"], hdr["CRPIX1"], hdr["CRPIX2"] = 30.0, -10.0, w / 2 + 0.3, h / 2 - 0.2
    hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = -5e-5, 1e-5, 1e-5, 5e-5
    return hdr


def write_fits(
    path: Path, data: np.ndarray, bunit: str | None = None, extension: bool = False, wcs: bool = True
) -> Path:
    hdr = tan_header(*data.shape[-2:]) if wcs else fits.Header()
    if bunit is not None:
        hdr["BUNIT"] = bunit
    hdr["OBSERVER"] = "test"
    if extension:
        hdus = [
            fits.PrimaryHDU(),
            fits.ImageHDU(data, header=hdr, name="SCI"),
            fits.ImageHDU(np.full_like(data, 3.0), name="ERR"),
        ]
    else:
        hdus = [fits.PrimaryHDU(data, header=hdr)]
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path)
    return path


def test_counts_conserve_total_flux_and_keep_the_header(model: torch.nn.Module, tmp_path: Path) -> None:
    src = write_fits(tmp_path / "lens.fits", gaussian(), bunit="counts")
    (out,) = upscale_paths(model, [str(src)], tmp_path / "out", scale=2, model_label="runs/a/G.pt")
    assert out == tmp_path / "out" / "lens_sr.fits"
    with fits.open(src) as a, fits.open(out) as b:
        lr, sr, hdr = a[0].data.astype(np.float64), b[0].data.astype(np.float64), b[0].header
        assert sr.shape == (48, 40)
        assert abs(sr.sum() / lr.sum() - 1) < 0.01
        np.testing.assert_allclose(sr, bicubic_np(lr) / 4, rtol=1e-4, atol=1e-3)
        assert (hdr["BUNIT"], hdr["OBSERVER"], hdr["HPCSRFLX"], hdr["HPCSRUPS"]) == (
            "counts",
            "test",
            "per-pixel",
            2,
        )
        assert (hdr["HPCSRNRM"], hdr["HPCSROFF"]) == ("max", 0.0) and hdr["HPCSRSCL"] == pytest.approx(
            lr.max()
        )
        history = "".join(str(c) for c in hdr["HISTORY"])
        assert f"hpc_sr {hpc_sr.__version__}" in history and "model srresnet" in history
        assert "runs/a/G.pt" in history
        j, i = np.mgrid[0:24, 0:20]
        world_in = np.array(WCS(a[0].header).pixel_to_world_values(i, j))
        world_out = np.array(WCS(hdr).pixel_to_world_values(2 * i + 0.5, 2 * j + 0.5))
        assert np.abs(world_in - world_out).max() < 1e-9


def test_surface_brightness_keeps_its_level(model: torch.nn.Module, tmp_path: Path) -> None:
    src = write_fits(tmp_path / "sb.fits", gaussian(floor=20.0), bunit="MJy/sr")
    (out,) = upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    lr, sr = fits.getdata(src).astype(np.float64), fits.getdata(out).astype(np.float64)
    assert abs(sr.mean() / lr.mean() - 1) < 0.01 and abs(sr.sum() / (4 * lr.sum()) - 1) < 0.01
    assert fits.getheader(out)["HPCSRFLX"] == "surface-brightness"


def test_flux_override_and_unknown_unit_warning(model: torch.nn.Module, tmp_path: Path) -> None:
    src = write_fits(tmp_path / "nounit.fits", gaussian(), bunit=None)
    with pytest.warns(UpscaleWarning, match=r"nounit\.fits\[0\]: no BUNIT; keeping the level"):
        (out,) = upscale_paths(model, [str(src)], tmp_path / "a", scale=2)
    assert fits.getheader(out)["HPCSRFLX"] == "surface-brightness"
    (out,) = upscale_paths(model, [str(src)], tmp_path / "b", scale=2, flux="per-pixel")
    assert abs(fits.getdata(out).sum() / fits.getdata(src).sum() - 1) < 0.01


def test_physical_units_come_back_in_those_units(model: torch.nn.Module, tmp_path: Path) -> None:
    lr = gaussian(peak=9e4, floor=1e3, sigma=4.0)  # 1e3 .. 1e5
    src = write_fits(tmp_path / "phys.fits", lr, bunit="MJy/sr")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UpscaleWarning)  # max normalisation: nothing out of range
        (out,) = upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    sr = fits.getdata(out).astype(np.float64)
    np.testing.assert_allclose(sr, bicubic_np(lr), rtol=1e-5)
    assert sr.min() > 900 and sr.max() < 1.1e5
    assert fits.getheader(out)["HPCSRSCL"] == pytest.approx(lr.max())


def test_negative_values_use_percentiles_and_warn_not_clip(model: torch.nn.Module, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lr = (gaussian(peak=50.0) + rng.normal(0, 5, (24, 20))).astype(np.float32)
    src = write_fits(tmp_path / "noisy.fits", lr, bunit="ADU")
    with pytest.warns(UpscaleWarning, match=r"noisy\.fits\[0\]: [\d.]+% of the pixels .*outside \[0, 1\]"):
        (out,) = upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    hdr, sr = fits.getheader(out), fits.getdata(out).astype(np.float64)
    assert hdr["HPCSRNRM"] == "percentile"
    assert hdr["HPCSROFF"] == pytest.approx(np.percentile(lr, 0.5), rel=1e-5)
    np.testing.assert_allclose(sr, bicubic_np(lr) / 4, rtol=1e-4, atol=1e-4)
    assert sr.min() < hdr["HPCSROFF"] / 4 and sr.max() > (hdr["HPCSROFF"] + hdr["HPCSRSCL"]) / 4  # unclipped


def test_forced_none_warns_with_the_fraction_and_does_not_clip(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    lr = np.full((8, 8), 0.5, np.float32)
    lr[:2] = 2.5  # a quarter of the pixels out of range
    np.save(tmp_path / "hot.npy", lr)
    with pytest.warns(UpscaleWarning, match=r"hot\.npy: 25% of the pixels"):
        (out,) = upscale_paths(
            model, [str(tmp_path / "hot.npy")], tmp_path / "out", scale=2, normalize="none"
        )
    sr = np.load(out)
    assert sr.max() > 2.5  # bicubic overshoots the step; nothing clipped to 1
    np.testing.assert_allclose(sr, bicubic_np(lr), atol=1e-5)


def test_extension_hdu_and_hdu_by_name(model: torch.nn.Module, tmp_path: Path) -> None:
    src = write_fits(tmp_path / "mef.fits", gaussian(), bunit="counts", extension=True)
    (out,) = upscale_paths(model, [str(src)], tmp_path / "a", scale=2)
    with fits.open(out) as hdul:  # v3: the input's structure; the error map is not super-resolved
        assert len(hdul) == 3 and hdul[0].data is None
        assert hdul[1].name == "SCI" and hdul[1].data.shape == (48, 40)
        assert abs(hdul[1].data.sum() / gaussian().sum() - 1) < 0.01
        assert hdul[2].name == "ERR" and hdul[2].data.shape == (24, 20)
        assert "not upscaled, copied at the input resolution: 2 ERR" in "".join(
            str(c) for c in hdul[1].header["HISTORY"]
        )
    with pytest.warns(UpscaleWarning, match="no BUNIT"):
        (out,) = upscale_paths(model, [str(src)], tmp_path / "b", scale=2, hdu="ERR")
    with fits.open(out) as hdul:  # named: upscaled; the science HDU not chosen is copied as it was
        assert hdul["ERR"].data.shape == (48, 40) and hdul["SCI"].data.shape == (24, 20)
        np.testing.assert_allclose(hdul["ERR"].data, 3.0, rtol=1e-5)
    with pytest.raises(DataError, match=r"mef\.fits: no HDU 'DQ'; HDUs: 0 PRIMARY .* 1 SCI .* 2 ERR"):
        upscale_paths(model, [str(src)], tmp_path / "c", scale=2, hdu="DQ")


def test_gzipped_fits_and_1xhxw_layout(model: torch.nn.Module, tmp_path: Path) -> None:
    src = write_fits(tmp_path / "cube.fits.gz", gaussian()[None], bunit="counts", wcs=False)
    (out,) = upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    assert out.name == "cube_sr.fits.gz" and gzip.decompress(out.read_bytes())[:6] == b"SIMPLE"
    assert fits.getdata(out).shape == (1, 48, 40)


def test_npy_and_npz_round_trips(model: torch.nn.Module, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (10, 12)).astype(np.float32)
    np.save(tmp_path / "a.npy", img)
    np.save(tmp_path / "b.npy", img[None].astype(np.float64))
    np.savez(
        tmp_path / "c.npz", lr=img, stack=np.stack([img, 2 * img, 3 * img]), ints=(img * 100).astype(np.int16)
    )
    outs = upscale_paths(
        model, [str(tmp_path / n) for n in ("a.npy", "b.npy", "c.npz")], tmp_path / "out", scale=2
    )
    assert [p.name for p in outs] == ["a_sr.npy", "b_sr.npy", "c_sr.npz"]
    a, b = np.load(outs[0]), np.load(outs[1])
    assert (a.shape, a.dtype, b.shape, b.dtype) == ((20, 24), np.float32, (1, 20, 24), np.float64)
    np.testing.assert_allclose(a, bicubic_np(img), atol=1e-5)
    with np.load(outs[2]) as z:
        assert sorted(z.files) == ["ints", "lr", "stack"]
        assert z["stack"].shape == (3, 20, 24) and z["ints"].dtype == np.float32
        np.testing.assert_allclose(z["stack"][2], 3 * bicubic_np(img), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(z["ints"], bicubic_np((img * 100).astype(np.int16)), rtol=1e-4, atol=1e-3)


def test_blank_pixels_stay_blank(model: torch.nn.Module, tmp_path: Path) -> None:
    img = gaussian(peak=1.0)
    img[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", img)
    with pytest.warns(UpscaleWarning, match=r"nan\.npy: 1 blank"):
        (out,) = upscale_paths(model, [str(tmp_path / "nan.npy")], tmp_path / "out", scale=2)
    sr = np.load(out)
    assert np.isnan(sr[6:8, 8:10]).all() and np.isfinite(sr).sum() == sr.size - 4


def test_folders_are_mirrored_and_globs_expanded(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub" / "deep").mkdir(parents=True)
    img = gaussian(12, 10, peak=1.0)
    np.save(src / "a.npy", img)
    np.savez(src / "sub" / "b.npz", x=img)
    write_fits(src / "sub" / "deep" / "c.fits", img, bunit="counts")
    (src / "notes.txt").write_text("not an image")
    outs = upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    rel = sorted(str(p.relative_to(tmp_path / "out")) for p in outs)
    assert rel == ["a_sr.npy", "sub/b_sr.npz", "sub/deep/c_sr.fits"]
    assert all(p.is_file() for p in outs)
    outs = upscale_paths(model, [str(src / "**" / "*.npz")], tmp_path / "glob", scale=2)
    assert outs == [tmp_path / "glob" / "b_sr.npz"]
    # an output folder inside the input folder: earlier outputs are not taken as inputs
    first = upscale_paths(model, [str(src)], src / "sr", scale=2)
    again = upscale_paths(model, [str(src)], src / "sr", scale=2, overwrite=True)
    assert first == again and len(again) == 3
    with pytest.raises(DataError, match=r"nothing\*\.npy: the pattern matches no file"):
        upscale_paths(model, [str(tmp_path / "nothing*.npy")], tmp_path / "g2", scale=2)


def test_two_inputs_for_one_output_are_refused(model: torch.nn.Module, tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "img.npy", np.zeros((4, 4), np.float32))
    a, b = tmp_path / "x" / "img.npy", tmp_path / "y" / "img.npy"
    with pytest.raises(DataError, match=rf"{a} and {b} would both write .*img_sr\.npy"):
        upscale_paths(model, [str(a), str(b)], tmp_path / "out", scale=2)
    assert not (tmp_path / "out").exists()  # nothing written
    # the same file named twice is one input
    assert len(upscale_paths(model, [str(a), str(a)], tmp_path / "out", scale=2)) == 1


def test_existing_outputs_and_self_overwrite(model: torch.nn.Module, tmp_path: Path) -> None:
    np.save(tmp_path / "img.npy", np.ones((4, 4), np.float32))
    (out,) = upscale_paths(model, [str(tmp_path / "img.npy")], tmp_path / "out", scale=2)
    written = out.stat().st_ino  # an atomic write is a new file
    # a rerun skips what the folder's ledger has done (it used to fail "exists")
    assert upscale_paths(model, [str(tmp_path / "img.npy")], tmp_path / "out", scale=2) == [out]
    assert out.stat().st_ino == written
    upscale_paths(model, [str(tmp_path / "img.npy")], tmp_path / "out", scale=2, overwrite=True)
    assert out.stat().st_ino != written
    # an output that no run wrote is still refused
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "img_sr.npy", np.ones(1))
    with pytest.raises(DataError, match=r"img_sr\.npy exists"):
        upscale_paths(model, [str(tmp_path / "img.npy")], tmp_path / "other", scale=2)
    with pytest.raises(DataError, match=r"img\.npy: its output .* is an input"):
        upscale_paths(model, [str(tmp_path / "img.npy")], tmp_path, scale=2, suffix="", overwrite=True)


def test_bad_file_stops_the_run_naming_it(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.ones((4, 4), np.float32))
    (src / "b.npy").write_bytes(b"garbage")
    np.save(src / "c.npy", np.ones((4, 4), np.float32))
    np.save(tmp_path / "bad_shape.npy", np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(DataError, match=r"b\.npy: cannot read"):
        upscale_paths(model, [str(src)], tmp_path / "out", scale=2)
    # the ledger and the report beside the output written before the bad file; no temp file left either
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".hpc_sr_ledger",
        "a_sr.npy",
        "upscale_report.json",
    ]
    assert not list((tmp_path / "out").rglob("*.tmp"))
    with pytest.raises(DataError, match=r"bad_shape\.npy: shape \(2, 3, 4, 5\) is not an image"):
        upscale_paths(model, [str(tmp_path / "bad_shape.npy")], tmp_path / "o2", scale=2)
    with pytest.raises(DataError, match=r"missing\.fits: no such file"):
        upscale_paths(model, [str(tmp_path / "missing.fits")], tmp_path / "o3", scale=2)


def test_cli_options_and_run(
    model: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpc_sr.models.artifacts import generator_payload

    parser = argparse.ArgumentParser(
        prog="hpc-sr upscale", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_upscale_arguments(parser)  # as `hpc-sr` builds it: every sub-command's help shows its defaults
    text = parser.format_help()
    for option in (
        "--checkpoint",
        "--out",
        "--self-ensemble",
        "--no-ema",
        "--hdu",
        "--normalize",
        "--flux",
        "--tile",
        "--overlap",
        "--batch-size",
        "--device",
        "--suffix",
        "--overwrite",
    ):
        assert option in text
    assert "(default: auto)" in text and "(default: _sr)" in text and "(default: 16)" in text
    payload = generator_payload(
        {"g": {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}}}, 2, model.state_dict(), "test", 0
    )
    torch.save(payload, tmp_path / "G.pt")
    src = write_fits(tmp_path / "in" / "lens.fits", gaussian(16, 16), bunit="e-/s")
    args = parser.parse_args(
        [
            "--checkpoint",
            str(tmp_path / "G.pt"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--tile",
            "8",
            "--overlap",
            "4",
            "--hdu",
            "0",
            str(src.parent),
        ]
    )
    assert args.durability == "batch" and options_from_args(args, 2).durability == "batch"
    assert run_upscale(args) == 0
    out = tmp_path / "out" / "lens_sr.fits"
    assert abs(fits.getdata(out).sum() / fits.getdata(src).sum() - 1) < 0.01
    by_file = parser.parse_args(["--durability", "file", "--checkpoint", str(tmp_path / "G.pt"),
                                 "--out", str(tmp_path / "out_file"), "--tile", "8", "--overlap", "4",
                                 "--hdu", "0", str(src.parent)])  # fmt: skip
    assert options_from_args(by_file, 2).durability == "file" and run_upscale(by_file) == 0
    assert (fits.getdata(tmp_path / "out_file" / "lens_sr.fits") == fits.getdata(out)).all()
    assert str(tmp_path / "G.pt") in "".join(str(c) for c in fits.getheader(out)["HISTORY"])
    assert "wrote 1 file(s)" in capsys.readouterr().err
    assert math.isclose(fits.getheader(out)["CRPIX1"], 2 * (fits.getheader(src)["CRPIX1"] - 0.5) + 0.5)


def test_cli_self_ensemble_averages_the_eight_transforms(tmp_path: Path) -> None:
    """`hpc-sr upscale --self-ensemble` through hpc_sr.cli.main: the output is the mean over the 8
    flips/rotations of a model that is not itself equivariant (random last layer), and differs from a plain
    run."""
    from hpc_sr.cli import main as cli_main
    from hpc_sr.models.artifacts import generator_payload
    from hpc_sr.models.ensemble import self_ensemble

    g = build_generator("srresnet", {"channels": 4, "blocks": 1}, 2)
    torch.manual_seed(3)
    torch.nn.init.normal_(g.tail.weight, std=0.05)  # not bicubic any more: flips change its output
    payload = generator_payload(
        {"g": {"arch": "srresnet", "options": {"channels": 4, "blocks": 1}}}, 2, g.state_dict(), "test", 0
    )
    torch.save(payload, tmp_path / "G.pt")
    img = np.random.default_rng(4).uniform(0.1, 0.9, (10, 14)).astype(np.float32)
    np.save(tmp_path / "lens.npy", img)
    base = ["upscale", "--checkpoint", str(tmp_path / "G.pt"), "--device", "cpu", str(tmp_path / "lens.npy")]
    assert cli_main([*base, "--out", str(tmp_path / "ens"), "--self-ensemble"]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "plain")]) == 0
    ens, plain = np.load(tmp_path / "ens" / "lens_sr.npy"), np.load(tmp_path / "plain" / "lens_sr.npy")
    g.eval()
    with torch.no_grad():
        x = torch.from_numpy(img)[None, None]
        want_ens, want_plain = self_ensemble(g, x)[0, 0].numpy(), g(x)[0, 0].numpy()
    assert ens.shape == (20, 28)
    np.testing.assert_allclose(ens, want_ens, rtol=0, atol=1e-5)
    np.testing.assert_allclose(plain, want_plain, rtol=0, atol=1e-5)
    assert np.abs(ens - plain).max() > 100 * 1e-5  # the flag really changed the result
