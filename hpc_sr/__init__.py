"""hpc_sr: distributed super-resolution of strong gravitational-lensing images (SRResNet, EDSR, RCAN, RRDB,
SwinIR generators; SRGAN and U-Net discriminators).

The Python API in five lines (docs/API.md)::

    import hpc_sr
    g = hpc_sr.load_generator("deeplense-small")          # or a checkpoint / run dir / exported G.pt
    sr = hpc_sr.upscale(g, lr)                             # numpy (H,W) | (N,H,W) | (N,1,H,W) or a tensor
    print(hpc_sr.evaluate_arrays(sr, hr, lr=lr))           # PSNR/SSIM/MSE/flux, bicubic beside
    hpc_sr.pretrained_names()                              # shipped generators

Importing hpc_sr imports nothing heavy (torch is loaded by the first call) and never changes a matplotlib
backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_sr.version import __version__

__all__ = ["__version__", "evaluate_arrays", "load_generator", "pretrained_names", "upscale"]

if TYPE_CHECKING:
    import numpy as np
    import torch

def pretrained_names() -> list[str]:
    """Names of the generators shipped inside the package (``load_generator(name)``)."""
    from hpc_sr.models.artifacts import pretrained_names as names

    return names()


def load_generator(source: str | Path, ema: bool = True, device: str | None = None) -> torch.nn.Module:
    """A generator in eval mode from a pretrained name, an exported G.pt, a checkpoint or a run directory.

    ``ema``: the EMA weights when the checkpoint has them. The module has ``.scale`` and ``.arch``.
    """
    from hpc_sr.models.artifacts import load_generator as _load

    model, _ = _load(source, ema=ema)
    return model.to(device) if device else model


def upscale(
    model: torch.nn.Module,
    lr: np.ndarray | torch.Tensor,
    *,
    tile: int = 0,
    overlap: int = 8,
    batch_size: int = 16,
    device: str | None = None,
    ensemble: bool = False,
    clamp: bool = False,
    lr_blur: Any = None,
) -> Any:
    """Upscale ``lr`` (values as the model was trained on, [0, 1] for the shipped models) by ``model.scale``.

    Accepts (H,W), (N,H,W) or (N,C,H,W), numpy or torch; returns the same kind and layout. ``tile`` > 0 runs
    overlapping tiles (seamlessly blended) for images too large for memory. A generator told its LR's blur
    (``model.lr_blur_input``) needs ``lr_blur``: one value or one per image, the FWHM in LR pixels of the
    Gaussian that takes HR's PSF to LR's (0 where LR is the 2x2 mean of an HR-like image).
    """
    import numpy as np
    import torch

    from hpc_sr.apps.tiling import upscale_array
    from hpc_sr.imaging import with_lr_blur

    is_numpy = isinstance(lr, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)) if is_numpy else lr
    ndim = t.ndim
    if ndim == 2:
        t = t[None, None]
    elif ndim == 3:
        t = t[:, None]
    elif ndim != 4:
        raise ValueError(f"upscale: expected (H,W), (N,H,W) or (N,C,H,W), got shape {tuple(t.shape)}")
    t = t.float()
    if getattr(model, "lr_blur_input", False):
        if lr_blur is None:
            raise ValueError(
                "upscale: this generator is told its LR's blur (lr_blur_input): pass lr_blur=, the FWHM in "
                "LR pixels of the Gaussian that takes HR's PSF to LR's (0 where LR is the 2x2 mean), one "
                "value or one per image"
            )
        t = with_lr_blur(t, torch.as_tensor(np.asarray(lr_blur, dtype=np.float32)))
    elif lr_blur is not None:
        raise ValueError("upscale: lr_blur= is for a generator told its LR's blur; this one is not "
                         "(lr_blur_input false)")
    out = upscale_array(
        model,
        t,
        int(model.scale),
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        ensemble=ensemble,
    )
    if clamp:
        out = out.clamp(0, 1)
    out = out[0, 0] if ndim == 2 else out[:, 0] if ndim == 3 else out
    return out.cpu().numpy() if is_numpy else out


def evaluate_arrays(
    sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, lr: np.ndarray | torch.Tensor | None = None
) -> dict[str, Any]:
    """DeepLense metrics of ``sr`` against ``hr`` (per image, data_range 1, SR clamped to [0, 1]): mean PSNR,
    pooled PSNR, SSIM, MSE, flux error; with ``lr`` also bicubic's on the same images."""
    import numpy as np
    import torch

    from hpc_sr.eval.metrics import MetricAccumulator, bicubic_upscale

    def as4d(x: Any) -> torch.Tensor:
        t = (
            torch.from_numpy(np.asarray(x, dtype=np.float64))
            if not isinstance(x, torch.Tensor)
            else x.double()
        )
        return t[None, None] if t.ndim == 2 else t[:, None] if t.ndim == 3 else t

    s, h = as4d(sr), as4d(hr)
    if s.shape != h.shape:
        raise ValueError(f"evaluate_arrays: sr {tuple(s.shape)} and hr {tuple(h.shape)} differ")
    acc = MetricAccumulator()
    acc.update(s, h)
    result: dict[str, Any] = {"model": acc.compute()}
    if lr is not None:
        low = as4d(lr)
        bic = MetricAccumulator()
        bic.update(bicubic_upscale(low, h.shape[-1] // low.shape[-1]), h)
        result["bicubic"] = bic.compute()
        result["gain_db"] = result["model"]["psnr"] - result["bicubic"]["psnr"]
    return result
