"""Throughput of the torch lensing simulator (HR/LR pairs per second), next to lenstronomy where installed.

Both run in this process on this machine: torch renders batches through
hpc_sr.data.lensing.LensingSimulator; lenstronomy renders the same parameters one image at a time with
ImageModel (SIE + SHEAR, SERSIC_ELLIPSE source and lens light, GAUSSIAN PSF, the same supersampling; the model
is built once per run and warmed up, which favours it), adds its Poisson and background noise and takes the
2x2 mean for LR. Prints a table and one JSON line.

Window case (``--window``, HR side, 0 skips): training pairs of one window per image, as the training stream
needs them, rendered two ways in interleaved rounds (tools.bench_common.round_robin, medians compared):
whole images (``sample``) each cropped at its own aligned offset, vs ``sample_windows`` (only the windows,
their PSF margin and the peak patches). Then the window path's normalisation check (``--peak-check`` images):
the full image's noisy maximum vs the maximum of the same noisy image over the window path's pixels
(``peak_mask``), so with the same noise; and, uncoupled, the mean of peak / clean peak of both paths.

    python tools/bench_simulate.py [--device cpu] [--num 512] [--hr-size 150] [--preset deeplense_sr]
                                   [--threads 1] [--supersample 2] [--lenstronomy-num 64]
                                   [--window 48] [--window-batch 16] [--rounds 7] [--peak-check 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator  # noqa: E402
from tools.bench_common import median, round_robin, spread  # noqa: E402


def bench_torch(sim: LensingSimulator, num: int, batch: int, seed: int) -> float:
    """Pairs per second of sim.sample over num pairs (after one warm-up batch)."""
    gen = torch.Generator(device=sim.device).manual_seed(seed)
    sim.sample(min(batch, num), gen)
    if sim.device.type == "cuda":
        torch.cuda.synchronize(sim.device)
    done, t0 = 0, time.perf_counter()
    with tqdm(total=num, desc="torch", unit="pair", leave=False) as bar:
        while done < num:
            n = min(batch, num - done)
            sim.sample(n, gen)
            done += n
            bar.update(n)
    if sim.device.type == "cuda":
        torch.cuda.synchronize(sim.device)
    return num / (time.perf_counter() - t0)


def bench_windows(
    sim: LensingSimulator, window: int, batch: int, rounds: int, window_s: float, seed: int
) -> dict[str, float]:
    """Pairs/s of whole images + crop vs window rendering (one window per image), interleaved rounds."""
    gen = torch.Generator(device=sim.device).manual_seed(seed)

    def full_crop() -> int:
        b = sim.sample(batch, gen)
        off = sim.sample_offsets(batch, window, gen).tolist()
        w, s = window, sim.scale
        torch.stack([b.hr[i, :, y : y + w, x : x + w] for i, (y, x) in enumerate(off)])
        torch.stack(
            [b.lr[i, :, y // s : (y + w) // s, x // s : (x + w) // s] for i, (y, x) in enumerate(off)]
        )
        sync(sim.device)
        return batch

    def windows() -> int:
        sim.sample_windows(batch, window, gen)
        sync(sim.device)
        return batch

    full_crop(), windows()  # warm-up
    rates = round_robin({"full_crop": full_crop, "windows": windows}, rounds, window_s)
    full, win = median(rates["full_crop"]), median(rates["windows"])
    return {
        "window_full_crop_pairs_per_s": round(full, 1),
        "window_pairs_per_s": round(win, 1),
        "window_speedup": round(win / full, 2),
        "window_spread": round(max(spread(rates["full_crop"]), spread(rates["windows"])), 2),
    }


def peak_check(sim: LensingSimulator, window: int, num: int, seed: int, chunk: int = 64) -> dict[str, float]:
    """How close the window path's normalising peak is to the full render's (see the module docstring)."""
    gen = torch.Generator(device=sim.device).manual_seed(seed)
    deficit, full_bias, win_bias = [], [], []
    for s in range(0, num, chunk):
        n = min(chunk, num - s)
        params = sim.sample_params(n, gen)
        offsets = sim.sample_offsets(n, window, gen)
        clean = sim.render(params, noise=False).amax(dim=(1, 2, 3))
        noisy = sim.render(params, noise=True, generator=gen)
        mask = sim.peak_mask(params, offsets, window)
        covered = noisy.masked_fill(~mask, -torch.inf).amax(dim=(1, 2, 3))
        full = noisy.amax(dim=(1, 2, 3))
        deficit.append(1 - covered / full)
        full_bias.append(full / clean - 1)
        peak = sim.window_pairs(params, offsets, window, noise=True, generator=gen).params[:, -1]
        win_bias.append(peak / clean - 1)
    d = torch.cat(deficit).double().cpu()
    return {
        "peak_equal": round(float((d == 0).double().mean()), 4),
        "peak_mean_deficit": round(float(d.mean()), 5),
        "peak_p99_deficit": round(float(d.quantile(0.99)), 5),
        "peak_max_deficit": round(float(d.max()), 5),
        "full_peak_over_clean": round(float(torch.cat(full_bias).double().mean()), 5),
        "window_peak_over_clean": round(float(torch.cat(win_bias).double().mean()), 5),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_lenstronomy(params: np.ndarray, hr_size: int, pixel_scale: float, supersample: int) -> float:
    """Pairs per second of lenstronomy (noisy HR, scaled to [0, 1], and its 2x2 mean) for these params."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util import image_util

    origin = -(hr_size - 1) / 2 * pixel_scale
    data = ImageData(np.zeros((hr_size, hr_size)), transform_pix2angle=np.eye(2) * pixel_scale,
                     ra_at_xy_0=origin, dec_at_xy_0=origin)  # fmt: skip
    idx = {n: i for i, n in enumerate(PARAM_NAMES)}
    psf = PSF(psf_type="GAUSSIAN", fwhm=float(np.median(params[:, idx["psf_fwhm"]])), truncation=5)
    has_ll = bool((params[:, idx["ll_amp"]] != 0).any())  # as the torch simulator: skip absent lens light
    model = ImageModel(data, psf, LensModel(["SIE", "SHEAR"]), LightModel(["SERSIC_ELLIPSE"]),
                       LightModel(["SERSIC_ELLIPSE"] if has_ll else []),
                       kwargs_numerics={"supersampling_factor": supersample})  # fmt: skip
    t0 = None
    for k, row in enumerate(tqdm(params, desc="lenstronomy", unit="pair", leave=False)):
        if k == min(2, len(params) - 1):  # the first calls compile lenstronomy's numba functions
            t0 = time.perf_counter()
        p = {n: float(row[i]) for n, i in idx.items()}
        kw_lens = [{"theta_E": p["theta_E"], "e1": p["lens_e1"], "e2": p["lens_e2"], "center_x": p["lens_x"],
                    "center_y": p["lens_y"]}, {"gamma1": p["gamma1"], "gamma2": p["gamma2"]}]  # fmt: skip
        kw_src = [{"amp": p["src_amp"], "R_sersic": p["src_R"], "n_sersic": p["src_n"], "e1": p["src_e1"],
                   "e2": p["src_e2"], "center_x": p["src_x"], "center_y": p["src_y"]}]  # fmt: skip
        kw_ll = [{"amp": p["ll_amp"], "R_sersic": p["ll_R"], "n_sersic": p["ll_n"], "e1": p["ll_e1"],
                  "e2": p["ll_e2"], "center_x": p["lens_x"], "center_y": p["lens_y"]}]  # fmt: skip
        img = model.image(kw_lens, kw_src, kw_ll if has_ll else [])
        img = img + image_util.add_poisson(img, p["exposure_time"])
        img = img + image_util.add_background(img, p["background_rms"])
        hr = np.clip(img / img.max(), 0, 1)
        _lr = hr.reshape(hr_size // 2, 2, hr_size // 2, 2).mean(axis=(1, 3))
    return (len(params) - min(2, len(params) - 1)) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num", type=int, default=512, help="torch pairs to time")
    ap.add_argument("--batch", type=int, default=256, help="pairs per sample() call")
    ap.add_argument("--hr-size", type=int, default=150)
    ap.add_argument("--preset", default="deeplense_sr")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--lenstronomy-num", type=int, default=64, help="lenstronomy pairs to time (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=48, help="HR window side of the window case (0: skip)")
    ap.add_argument("--window-batch", type=int, default=16, help="pairs per call in the window case")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the window case")
    ap.add_argument("--round-s", type=float, default=0.5, help="seconds per path per round")
    ap.add_argument("--peak-check", type=int, default=512, help="images of the normalisation check (0: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sim = LensingSimulator(args.preset, args.hr_size, supersample=args.supersample, device=args.device)
    result: dict[str, object] = {
        "preset": args.preset, "hr_size": args.hr_size, "supersample": args.supersample,
        "device": args.device, "threads": args.threads, "num": args.num, "torch": torch.__version__,
        "machine": platform.machine(),
    }  # fmt: skip
    result["torch_pairs_per_s"] = round(bench_torch(sim, args.num, args.batch, args.seed), 1)
    result["lenstronomy_pairs_per_s"] = None
    if args.lenstronomy_num > 0:
        try:
            import lenstronomy
        except ImportError:
            lenstronomy = None
        if lenstronomy is not None:
            cpu_sim = LensingSimulator(args.preset, hr_size=args.hr_size, dtype=torch.float64)
            gen = torch.Generator().manual_seed(args.seed)
            params = cpu_sim.sample_params(args.lenstronomy_num, gen).numpy()
            rate = bench_lenstronomy(params, args.hr_size, sim.preset.pixel_scale, args.supersample)
            result["lenstronomy_pairs_per_s"] = round(rate, 1)
            result["lenstronomy"] = lenstronomy.__version__
            result["speedup"] = round(result["torch_pairs_per_s"] / rate, 2)
    if args.window:
        result["window"] = args.window
        result["window_batch"] = args.window_batch
        result.update(
            bench_windows(sim, args.window, args.window_batch, args.rounds, args.round_s, args.seed)
        )
        if args.peak_check:
            result.update(peak_check(sim, args.window, args.peak_check, args.seed + 1))
    setting = f"{args.preset}, {args.hr_size}px, supersample {args.supersample}, {args.device}"
    print(f"{'simulator':<14}{'pairs/s':>10}   ({setting}, {args.threads} thread(s))")
    print(f"{'torch':<14}{result['torch_pairs_per_s']:>10}")
    if result["lenstronomy_pairs_per_s"] is not None:
        print(f"{'lenstronomy':<14}{result['lenstronomy_pairs_per_s']:>10}")
        print(f"{'ratio':<14}{result['speedup']:>10}x")
    if args.window:
        lr = args.window // sim.scale
        print(f"\nwindow HR {args.window} (LR {lr}), batch {args.window_batch}, {args.rounds} rounds")
        print(f"{'full + crop':<14}{result['window_full_crop_pairs_per_s']:>10}")
        print(f"{'windows':<14}{result['window_pairs_per_s']:>10}")
        print(f"{'ratio':<14}{result['window_speedup']:>10}x   (spread {result['window_spread']})")
        if args.peak_check:
            print(
                f"normalisation ({args.peak_check} images): window peak == full noisy max in "
                f"{100 * result['peak_equal']:.1f}%, deficit mean {100 * result['peak_mean_deficit']:.3f}%, "
                f"p99 {100 * result['peak_p99_deficit']:.2f}%, max {100 * result['peak_max_deficit']:.2f}%; "
                f"peak / clean peak - 1: full {100 * result['full_peak_over_clean']:.2f}%, "
                f"windows {100 * result['window_peak_over_clean']:.2f}%"
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
