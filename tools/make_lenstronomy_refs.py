"""Render noise-free reference images with lenstronomy for tests/data/test_lensing.py.

Needs lenstronomy (not a project dependency): ``pip install lenstronomy``. Writes
tests/data/refs/lenstronomy_refs.npz atomically: ``params`` (N, P) in hpc_sr.data.lensing.PARAM_NAMES order,
``param_names``, ``images`` (N, H, W) float64 flux per pixel, and the grid settings ``pixel_scale``,
``supersample``, ``lenstronomy_version``.

    python tools/make_lenstronomy_refs.py [--out PATH] [--size 64] [--supersample 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from hpc_sr.data.lensing import PARAM_NAMES

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "refs" / "lenstronomy_refs.npz"

# Fixed parameter sets (name -> value); unspecified names take BASE's value.
BASE = {
    "theta_E": 1.28, "lens_e1": 0.1, "lens_e2": 0.0, "gamma1": 0.05, "gamma2": 0.0,
    "lens_x": 0.0, "lens_y": 0.0,
    "src_amp": 20.0, "src_R": 0.25, "src_n": 1.0, "src_e1": 0.05, "src_e2": -0.03,
    "src_x": 0.1, "src_y": -0.2,
    "ll_amp": 0.0, "ll_R": 0.6, "ll_n": 2.0, "ll_e1": 0.0, "ll_e2": 0.0,
    "psf_fwhm": 0.087, "exposure_time": 1000.0, "background_rms": 0.01, "hr_peak_flux": float("nan"),
}  # fmt: skip
CASES = [
    {},  # DeepLense Model I-like
    {"theta_E": 1.1, "lens_e1": -0.15, "lens_e2": 0.12, "gamma1": -0.03, "gamma2": 0.06, "lens_x": 0.04,
     "lens_y": -0.06, "src_n": 1.6, "src_R": 0.3, "src_e1": -0.2, "src_e2": 0.1, "src_x": -0.25,
     "src_y": 0.15, "psf_fwhm": 0.12},
    {"theta_E": 0.9, "lens_e1": 0.0, "lens_e2": 0.0, "gamma1": 0.0, "gamma2": 0.0, "src_n": 0.7,
     "src_x": 0.02, "src_y": 0.01, "psf_fwhm": 0.06},  # round lens, e = 0 exactly
    {"ll_amp": 4.0, "ll_R": 0.7, "ll_n": 2.5, "ll_e1": 0.1, "ll_e2": -0.05, "lens_x": -0.05, "lens_y": 0.03},
    {"theta_E": 1.45, "lens_e1": 0.25, "lens_e2": -0.2, "gamma2": -0.08, "src_amp": 35.0, "src_R": 0.15,
     "src_n": 2.5, "src_e1": 0.3, "src_e2": 0.2, "src_x": 0.3, "src_y": 0.3, "ll_amp": 2.0, "ll_R": 0.5,
     "ll_n": 1.2, "ll_e1": -0.2, "ll_e2": 0.15, "psf_fwhm": 0.1},
]  # fmt: skip


def render_lenstronomy(params: np.ndarray, size: int, pixel_scale: float, supersample: int) -> np.ndarray:
    """Noise-free lenstronomy ImageModel images (N, size, size) for params (N, P) in PARAM_NAMES order."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    origin = -(size - 1) / 2 * pixel_scale
    data = ImageData(
        image_data=np.zeros((size, size)),
        transform_pix2angle=np.eye(2) * pixel_scale,
        ra_at_xy_0=origin,
        dec_at_xy_0=origin,
    )
    lens = LensModel(["SIE", "SHEAR"])
    source = LightModel(["SERSIC_ELLIPSE"])
    lens_light = LightModel(["SERSIC_ELLIPSE"])
    numerics = {"supersampling_factor": supersample, "supersampling_convolution": False}
    out = []
    for row in params:
        p = dict(zip(PARAM_NAMES, (float(v) for v in row)))
        psf = PSF(psf_type="GAUSSIAN", fwhm=p["psf_fwhm"], truncation=5)
        model = ImageModel(data, psf, lens, source, lens_light, kwargs_numerics=numerics)
        kw_lens = [
            {"theta_E": p["theta_E"], "e1": p["lens_e1"], "e2": p["lens_e2"],
             "center_x": p["lens_x"], "center_y": p["lens_y"]},
            {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": 0.0, "dec_0": 0.0},
        ]  # fmt: skip
        kw_src = [{"amp": p["src_amp"], "R_sersic": p["src_R"], "n_sersic": p["src_n"], "e1": p["src_e1"],
                   "e2": p["src_e2"], "center_x": p["src_x"], "center_y": p["src_y"]}]  # fmt: skip
        kw_ll = [{"amp": p["ll_amp"], "R_sersic": p["ll_R"], "n_sersic": p["ll_n"], "e1": p["ll_e1"],
                  "e2": p["ll_e2"], "center_x": p["lens_x"], "center_y": p["lens_y"]}]  # fmt: skip
        out.append(model.image(kw_lens, kw_src, kw_ll))
    return np.stack(out)


def case_params() -> np.ndarray:
    """The fixed parameter sets as an (N, P) float64 array."""
    return np.array([[{**BASE, **c}[k] for k in PARAM_NAMES] for c in CASES], dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pixel-scale", type=float, default=0.05)
    ap.add_argument("--supersample", type=int, default=2)
    args = ap.parse_args(argv)
    import lenstronomy

    params = case_params()
    images = render_lenstronomy(params, args.size, args.pixel_scale, args.supersample)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(
            f, params=params, param_names=np.array(PARAM_NAMES), images=images,
            pixel_scale=args.pixel_scale, supersample=args.supersample,
            lenstronomy_version=lenstronomy.__version__,
        )  # fmt: skip
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(params)} images {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
