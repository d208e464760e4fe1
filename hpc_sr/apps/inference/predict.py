"""A batch of normalised images through the generator: (N, H, W) float32 -> (N, sH, sW) [+ sigma].

    predict = Predictor(model, opts, calibration=payload.get("spread_calibration"))
    sr, sigma = predict(batch)                     # sigma None unless opts.samples > 0

Tiling, self-ensemble and device placement are :func:`hpc_sr.apps.tiling.upscale_array`'s. A batch smaller
than ``batch_size`` is padded to it: CPU and GPU kernels choose their algorithm by batch size, so every image
runs at the same one and a unit's output does not depend on which units shared its batch (an interrupted
and resumed run writes the same bytes as an uninterrupted one). On CUDA: pinned host memory, non-blocking
copies, channels_last and bf16 autocast; ``opts.compile`` wraps the model in ``torch.compile``. With
``opts.samples`` the batch is one unit's and its noise comes from ``seed`` (no padding, no autocast). The
onnx engine (:mod:`~hpc_sr.apps.inference.onnx_engine`) runs the same batches through onnxruntime.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from hpc_sr.apps.inference.formats import InferenceOptions
from hpc_sr.apps.tiling import upscale_array
from hpc_sr.imaging import with_lr_blur


class Predictor:
    """The generator on ``opts.device``, ready for batches (see the module docstring).

    ``net``: what runs the batches instead of ``model`` (the onnx engine's
    :class:`~hpc_sr.apps.inference.onnx_engine.OnnxGenerator`: host tensors in and out, no autocast)."""

    def __init__(
        self,
        model: nn.Module,
        opts: InferenceOptions,
        calibration: Any = None,
        label: str = "",
        net: nn.Module | None = None,
    ) -> None:
        self.opts, self.calibration, self.label = opts, calibration, label
        self.device = torch.device(opts.device)
        self.scale = int(opts.scale)
        self.cuda = self.device.type == "cuda" and net is None
        self.model = model
        if net is not None:
            self.net: nn.Module = net
            return
        model.to(self.device).eval()
        if self.cuda:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.net = torch.compile(model) if opts.compile else model  # type: ignore[assignment]

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        if self.opts.lr_blur is not None:  # a generator told its LR's blur: one more channel
            t = with_lr_blur(t, self.opts.lr_blur)
        if not self.cuda:
            return t
        t = t.pin_memory().to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """SR (and sigma with samples) of the normalised images ``x`` (N, H, W), in model units."""
        n = len(x)
        if self.opts.samples > 0:
            from hpc_sr.apps.inference.sampling import sample_mean_and_sigma

            mean, sigma = sample_mean_and_sigma(
                self.model,
                self._to_device(x),
                self.opts.samples,
                self.calibration,
                seed=seed,
                label=self.label,
            )
            return _host(mean), _host(sigma)
        if n < self.opts.batch_size:
            x = np.concatenate([x, np.zeros((self.opts.batch_size - n, *x.shape[1:]), np.float32)])
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        with amp:
            sr = upscale_array(
                self.net,
                self._to_device(x),
                self.scale,
                tile=self.opts.tile,
                overlap=self.opts.overlap,
                batch_size=self.opts.batch_size,
                ensemble=self.opts.ensemble,
            )
        return _host(sr)[:n], None


def _host(t: torch.Tensor) -> np.ndarray:
    return t[:, 0].float().cpu().numpy()
