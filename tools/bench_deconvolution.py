"""The classical deconvolution baselines (hpc_sr.eval.deconvolution) on a ground-to-space look-alike.

Synthetic pairs, made here with the simulator's forward model (no dependency on hpc_sr.data): a lens galaxy
(elliptical exponential/de Vaucouleurs-like profile), a lensed ring broken into arcs and a few compact
sources on an HR grid of 0.05"/px; HR = blur(S, 0.10" FWHM Gaussian) + noise, LR = avg_pool(blur(S, seeing
0.45-0.75" FWHM Gaussian (9-15 HR px) shifted by U(-1, 1) HR px), 2) + noise with ~5x HR's sigma; both in
HR-peak units, clipped to [0, 1]. Noise: variance ``bg^2 + a * signal`` (Poisson + background).

Prints PSNR/SSIM vs HR and vs the noise-free HR for bicubic, Wiener and Richardson-Lucy and the seconds per
image; with ``--sweep`` also RL over its iteration count and Wiener over k / noise variance. ``--preset
ground_space`` takes the simulator's two-instrument preset instead of the look-alike.

    OMP_NUM_THREADS=1 python tools/bench_deconvolution.py [--num 32] [--size 128] [--seed 0] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_sr.eval import deconvolution as dc  # noqa: E402
from hpc_sr.eval.metrics import bicubic_upscale, per_image_metrics  # noqa: E402
from hpc_sr.imaging import fft_blur, psf_kernels_2d  # noqa: E402

# HR noise variance bg^2 + a * signal, background- or Poisson-limited (noise-free HR vs HR ~47-48 dB)
NOISE = {"background": (0.004, 1.0e-4), "poisson": (0.001, 4.0e-4)}


def make_pairs(
    num: int, size: int, seed: int, noise: str = "poisson", noise_ratio: float = 5.0
) -> dict[str, torch.Tensor]:
    """num look-alike pairs, float64: sky, hr, hr_clean, lr, psf_lr, psf_hr, var_lr (N,1,h,w)."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (num,)), generator=g, dtype=torch.float64)

    yy, xx = torch.meshgrid(*(torch.arange(size, dtype=torch.float64) - (size - 1) / 2,) * 2, indexing="ij")
    sky = torch.zeros(num, 1, size, size, dtype=torch.float64)
    for i in range(num):
        cy, cx = u(-4, 4, 2).tolist()
        q, phi = u(0.6, 1.0, 1).item(), u(0, math.pi, 1).item()
        y, x = yy - cy, xx - cx
        xr = x * math.cos(phi) + y * math.sin(phi)
        yr = -x * math.sin(phi) + y * math.cos(phi)
        rell = torch.sqrt(xr**2 / q + yr**2 * q + 1.0)
        re, n = u(5, 15, 1).item(), u(0.8, 2.5, 1).item()
        bn = 2 * n - 1 / 3
        lens = u(0.3, 1.0, 1).item() * torch.exp(-bn * ((rell / re) ** (1 / n) - 1)).clamp(max=50)
        r, th = torch.hypot(x, y), torch.atan2(y, x)
        ring = torch.zeros_like(r)
        r0 = u(0.2, 0.36, 1).item() * size
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            th0, width = u(-math.pi, math.pi, 1).item(), u(1.5, 4.0, 1).item()
            span = u(0.4, 1.5, 1).item()
            dth = torch.angle(torch.exp(1j * (th - th0)))
            arc = torch.exp(-((r - r0) ** 2) / (2 * width**2) - dth**2 / (2 * span**2))
            ring += u(0.2, 0.8, 1).item() * arc
        blobs = torch.zeros_like(r)
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            by, bx = u(-0.4, 0.4, 2).tolist()
            s = u(1.0, 3.0, 1).item()
            d2 = (yy - by * size) ** 2 + (xx - bx * size) ** 2
            blobs += u(0.1, 0.6, 1).item() * torch.exp(-d2 / (2 * s**2))
        sky[i, 0] = lens / lens.max() + ring + blobs
    zeros = torch.zeros(num, dtype=torch.float64)
    psf_hr = psf_kernels_2d(torch.full((num,), 2.0, dtype=torch.float64), zeros)  # 0.10" / 0.05"/px
    shift = u(-1, 1, num, 2)
    psf_lr = psf_kernels_2d(u(9, 15), zeros, shift)
    hr_clean = fft_blur(sky, psf_hr)
    peak = hr_clean.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    sky, hr_clean = sky / peak, hr_clean / peak
    lr_clean = F.avg_pool2d(fft_blur(sky, psf_lr), 2)
    bg, a = NOISE[noise]
    bg2 = bg * bg
    var_hr = bg2 + a * hr_clean
    var_lr = noise_ratio**2 * (bg2 + a * lr_clean)
    hr = (hr_clean + var_hr.sqrt() * torch.randn(hr_clean.shape, generator=g, dtype=hr_clean.dtype)).clamp(
        0, 1
    )
    lr = (lr_clean + var_lr.sqrt() * torch.randn(lr_clean.shape, generator=g, dtype=lr_clean.dtype)).clamp(
        0, 1
    )
    return {
        "sky": sky,
        "hr": hr,
        "hr_clean": hr_clean,
        "lr": lr,
        "psf_lr": psf_lr,
        "psf_hr": psf_hr,
        "var_lr": var_lr,
        "read_var_lr": torch.full((num,), noise_ratio**2 * bg2, dtype=torch.float64),
    }


def preset_pairs(num: int, size: int, seed: int, preset: str = "ground_space") -> dict[str, torch.Tensor]:
    """num pairs of the simulator's two-instrument preset (float64), in make_pairs' layout, its kernels and
    LR noise variance (HR units) from the recorded parameters."""
    from hpc_sr.data.lensing import _IDX, LensingSimulator, lr_kernels, noise_free_hr

    sim = LensingSimulator(preset, hr_size=size, dtype=torch.float64)
    b = sim.sample(num, torch.Generator().manual_seed(seed))
    p, ps, s = b.params, sim.preset.pixel_scale, sim.scale
    fwhm = p[:, _IDX["psf_fwhm"]] / ps
    peak = p[:, _IDX["hr_peak_flux"]].reshape(-1, 1, 1, 1)
    lr_clean = sim.render_lr(p, noise=False) / peak
    t = p[:, _IDX["lr_exposure_time"]].reshape(-1, 1, 1, 1)
    bkg2 = (p[:, _IDX["lr_background_rms"]].reshape(-1, 1, 1, 1) / (s * s * peak)) ** 2
    var_lr = lr_clean.abs() / (s * s * peak * t) + bkg2  # flux/t + bkg^2 per LR pixel, in HR units
    return {
        "hr": b.hr,
        "hr_clean": noise_free_hr(p, preset, size),
        "lr": b.lr,
        "psf_lr": lr_kernels(p, ps, s),
        "psf_hr": psf_kernels_2d(fwhm, torch.zeros_like(fwhm)),
        "var_lr": var_lr,
        "read_var_lr": bkg2.reshape(-1),
    }


def score(sr: torch.Tensor, d: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean PSNR/SSIM vs HR and vs the noise-free HR."""
    m, mc = per_image_metrics(sr, d["hr"]), per_image_metrics(sr, d["hr_clean"])
    return {
        "psnr": m["psnr"].mean().item(),
        "ssim": m["ssim"].mean().item(),
        "psnr_clean": mc["psnr"].mean().item(),
        "ssim_clean": mc["ssim"].mean().item(),
        "flux_err": mc["flux_err"].mean().item(),
    }


def fmt(r: dict[str, float]) -> str:
    clean = f"vs noise-free {r['psnr_clean']:.2f} {r['ssim_clean']:.3f}"
    return f"PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f} | {clean}"


def timed(fn, *args, **kw) -> tuple[torch.Tensor, float]:  # noqa: ANN001
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", choices=sorted(NOISE), default="poisson")
    ap.add_argument("--noise-ratio", type=float, default=5.0, help="LR / HR noise sigma (look-alike)")
    ap.add_argument("--preset", default="", help="use this simulator preset (e.g. ground_space) instead")
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args(argv)
    d = (
        preset_pairs(args.num, args.size, args.seed, args.preset)
        if args.preset
        else make_pairs(args.num, args.size, args.seed, args.noise, args.noise_ratio)
    )
    lr, kl, kh, n = d["lr"], d["psf_lr"], d["psf_hr"], args.num
    rows = {}
    out, t = timed(lambda: bicubic_upscale(lr, 2).clamp(0, 1))
    rows["bicubic"] = {**score(out, d), "s_per_image": t / n}
    out, t = timed(dc.wiener, lr, kl, kh, noise_var=d["var_lr"])
    rows[f"wiener (k={dc.WIENER_K_PER_NOISE_VAR:g} var)"] = {**score(out, d), "s_per_image": t / n}
    out, t = timed(dc.wiener, lr, kl, kh)
    rows["wiener (estimated var)"] = {**score(out, d), "s_per_image": t / n}
    out, t = timed(dc.richardson_lucy, lr, kl, kh, noise_var=d["read_var_lr"])
    rows[f"richardson_lucy ({dc.RL_ITERATIONS} it)"] = {**score(out, d), "s_per_image": t / n}
    rows["noise-free HR"] = score(d["hr_clean"], d)
    print(f"{'method':28s} {'PSNR':>7s} {'SSIM':>6s} {'PSNR*':>7s} {'SSIM*':>6s} {'flux':>6s} {'s/img':>7s}")
    for name, r in rows.items():
        print(
            f"{name:28s} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['psnr_clean']:7.2f} {r['ssim_clean']:6.3f} "
            f"{r['flux_err']:6.3f} {r.get('s_per_image', 0):7.3f}"
        )
    print("(* vs the noise-free HR)")
    if args.sweep:
        for mult in (7, 10, 14, 20, 28, 40, 56):
            k = mult * d["var_lr"].flatten(1).mean(1)
            print(f"wiener k = {mult:3d} x var: " + fmt(score(dc.wiener(lr, kl, kh, k=k), d)), flush=True)
        marks = (10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500)
        path = dc.richardson_lucy_path(lr, kl, kh, marks, noise_var=d["read_var_lr"])
        for it, out in zip(marks, path):
            print(f"richardson_lucy {it:4d} it: " + fmt(score(out, d)), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
