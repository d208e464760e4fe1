"""Throughput of the torch lensing simulator (HR/LR pairs per second), next to lenstronomy where installed.

Both run in this process on this machine: torch renders batches through
hpc_sr.data.lensing.LensingSimulator; lenstronomy renders the same parameters one image at a time with
ImageModel (SIE + SHEAR, SERSIC_ELLIPSE source and lens light, GAUSSIAN PSF, the same supersampling; the model
is built once per run and warmed up, which favours it), adds its Poisson and background noise and takes the
2x2 mean for LR. Prints a table and one JSON line.

    python tools/bench_simulate.py [--device cpu] [--num 512] [--hr-size 150] [--preset deeplense_sr]
                                   [--threads 1] [--supersample 2] [--lenstronomy-num 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from hpc_sr.data.lensing import PARAM_NAMES, LensingSimulator


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
    setting = f"{args.preset}, {args.hr_size}px, supersample {args.supersample}, {args.device}"
    print(f"{'simulator':<14}{'pairs/s':>10}   ({setting}, {args.threads} thread(s))")
    print(f"{'torch':<14}{result['torch_pairs_per_s']:>10}")
    if result["lenstronomy_pairs_per_s"] is not None:
        print(f"{'lenstronomy':<14}{result['lenstronomy_pairs_per_s']:>10}")
        print(f"{'ratio':<14}{result['speedup']:>10}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
