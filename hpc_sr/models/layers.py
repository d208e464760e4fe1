"""Layers every generator shares: the bicubic skip, the exact LR-consistency projection, the base classes.

    class MyNet(SRGenerator):
        def __init__(self, opts, scale, common):
            super().__init__(scale, common)
            ...
            self.head = nn.Conv2d(self.net_in_channels, c, 3, padding=1)   # LR (+ noise) channels
            self.tail = nn.Conv2d(c, common.in_channels, 3, padding=1)
            self.zero_init_if_skip(self.tail)    # untrained model == bicubic
        def predict(self, x): ...                # (N,C[+K],h,w) -> (N,C,s*h,s*w)

``SRGenerator.forward`` adds bicubic(LR) when ``bicubic_skip`` and projects onto the LR-consistent images when
``lr_consistent``; it holds no parameters, so state_dict keys are the arch's own.

A stochastic generator (``noise_channels`` K > 0) gets K channels of N(0, 1) noise at LR resolution beside
the LR channels (``forward(lr, noise=None)`` draws them when not given): each call is one sample. The bicubic
skip and the projection use the real LR channels only, so every sample is exactly LR-consistent. With
``noise_centred`` a sample is ``P(lr, 0) + (P(lr, z) - P(lr, -z)) / 2`` (P the network, one batched pass over
the three inputs): odd in z around the centre ``forward(lr, zeros)``, so the samples' mean is the centre in
expectation and exactly for antithetic pairs (z, -z) (``eval.uncertainty.draw_samples(antithetic=True)``).

A generator with ``lr_blur_input`` is told how blurred its LR is: it takes LR with one more channel, each
image's LR blur (``hpc_sr.imaging.with_lr_blur``: the FWHM in LR pixels of the Gaussian that takes HR's PSF
to LR's, 0 where LR is the block mean of HR), so one model serves sharp and seeing-blurred LR alike. The
network sees that channel times ``BLUR_INPUT_SCALE``; the skip uses the image channels, and with
``lr_consistent`` the projection applies to the images whose blur is 0 (the only ones whose LR is a mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpc_sr.imaging import lr_projection
from hpc_sr.models.registry import GeneratorCommon

SUPPORTED_SCALES = (2, 4)
BLUR_INPUT_SCALE = 0.25  # the LR-blur channel as the network sees it: FWHM in LR pixels / 4 (order 1)


def bicubic(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling, ``align_corners=False`` (the baseline every metric compares against)."""
    return F.interpolate(lr, scale_factor=float(scale), mode="bicubic", align_corners=False)


def lr_consistency_projection(sr: Tensor, lr: Tensor, scale: int) -> Tensor:
    """The closest image (in L2) to ``sr`` whose ``scale x scale`` block means equal ``lr`` exactly.

    Subtracts each block's mean error from its pixels, so the total flux equals ``scale**2 * sum(lr)``.
    """
    return lr_projection(sr, lr, scale)


class SRGenerator(nn.Module):
    """Base of every generator: subclasses build their layers and implement :meth:`predict`."""

    arch = "base"

    def __init__(self, scale: int, common: GeneratorCommon) -> None:
        super().__init__()
        if scale not in SUPPORTED_SCALES:
            raise ValueError(
                f"{type(self).__name__}: scale={scale!r} is not supported; "
                f"valid scales: {list(SUPPORTED_SCALES)}"
            )
        self.scale = scale
        self.in_channels = common.in_channels
        self.bicubic_skip = common.bicubic_skip
        self.lr_consistent = common.lr_consistent
        self.noise_channels = int(common.noise_channels)
        if self.noise_channels < 0:
            raise ValueError(f"{type(self).__name__}: noise_channels={self.noise_channels} must be >= 0")
        self.noise_centred = bool(common.noise_centred)
        if self.noise_centred and self.noise_channels == 0:
            raise ValueError(f"{type(self).__name__}: noise_centred needs noise_channels > 0")
        self.lr_blur_input = bool(common.lr_blur_input)

    @property
    def input_channels(self) -> int:
        """Channels ``forward`` takes: the image's, plus the LR-blur channel (``lr_blur_input``)."""
        return self.in_channels + int(self.lr_blur_input)

    @property
    def net_in_channels(self) -> int:
        """Channels the network's first layer takes: the input's, plus the noise channels."""
        return self.input_channels + self.noise_channels

    def _split_input(self, lr: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(image channels, what the network reads before the noise, each image's blur or None)."""
        if lr.dim() != 4 or lr.shape[1] != self.input_channels:
            need = (f"{self.in_channels} image channel(s) and the LR-blur channel (imaging.with_lr_blur)"
                    if self.lr_blur_input else f"{self.in_channels} channel(s)")  # fmt: skip
            raise ValueError(f"{type(self).__name__}: expected LR (N, C, h, w) with {need}, got shape "
                             f"{tuple(lr.shape)}")  # fmt: skip
        if not self.lr_blur_input:
            return lr, lr, None
        img, blur = lr[:, : self.in_channels], lr[:, self.in_channels :]
        return img, torch.cat([img, blur * BLUR_INPUT_SCALE], dim=1), blur[:, 0, 0, 0]

    def zero_init_if_skip(self, layer: nn.Module) -> None:
        """Zero the last layer's weights and bias when the bicubic skip is on: untrained output == bicubic."""
        if self.bicubic_skip:
            for p in layer.parameters():
                nn.init.zeros_(p)

    def predict(self, lr: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, lr: Tensor, noise: Tensor | None = None, pair: bool = False) -> Tensor:
        """One SR image per LR image; a stochastic generator's sample for ``noise`` (drawn when None).

        ``pair`` (centred generators): both samples of each antithetic pair from the same three passes,
        ``cat([sample(z), sample(-z)])`` (2N images), half the work of two calls.
        """
        if pair and not self.noise_centred:
            raise ValueError(f"{type(self).__name__}: pair=True needs a centred generator (noise_centred)")
        lr, x, blur = self._split_input(lr)
        if self.noise_channels > 0:
            if noise is None:
                shape = (lr.shape[0], self.noise_channels, lr.shape[2], lr.shape[3])
                noise = torch.randn(shape, device=lr.device, dtype=lr.dtype)
            noise = noise.to(lr.dtype)
            if self.noise_centred:  # one batched pass over (z, -z, 0): centre + the odd part in z
                zs = (noise, -noise, torch.zeros_like(noise))
                x = torch.cat([torch.cat([x, z], dim=1) for z in zs], dim=0)
                plus, minus, centre = self.predict(x).chunk(3, dim=0)
                odd = (plus - minus) * 0.5
                out = torch.cat([centre + odd, centre - odd]) if pair else centre + odd
                if pair:
                    lr = torch.cat([lr, lr])
                    blur = None if blur is None else torch.cat([blur, blur])
            else:
                out = self.predict(torch.cat([x, noise], dim=1))
        else:
            out = self.predict(x)
        return self._finish(out, lr, blur)

    def _finish(self, out: Tensor, lr: Tensor, blur: Tensor | None = None) -> Tensor:
        if self.bicubic_skip:
            out = out + bicubic(lr, self.scale)
        if self.lr_consistent:
            projected = lr_consistency_projection(out, lr, self.scale)
            out = projected if blur is None else torch.where((blur == 0).view(-1, 1, 1, 1), projected, out)
        return out

    def antithetic_pairs(self, lr: Tensor, noises: Tensor) -> Tensor:
        """A centred generator's samples for the pairs (z_k, -z_k): ``noises`` (K, N, k, h, w) -> (2K, N,
        ...), samples 2k and 2k+1 = forward(lr, z_k) and forward(lr, -z_k), from 1 + 2K passes (the centre
        once) instead of 6K."""
        if not self.noise_centred:
            raise ValueError(f"{type(self).__name__}: antithetic_pairs needs a centred generator "
                             "(noise_centred)")
        lr, x, blur = self._split_input(lr)
        noises = noises.to(lr.dtype)
        centre = self.predict(torch.cat([x, torch.zeros_like(noises[0])], dim=1))
        out = []
        for z in noises:
            plus, minus = self.predict(torch.cat([torch.cat([x, z], 1), torch.cat([x, -z], 1)])).chunk(2)
            odd = (plus - minus) * 0.5
            out += [self._finish(centre + odd, lr, blur), self._finish(centre - odd, lr, blur)]
        return torch.stack(out)


def pixel_shuffle_upsampler(
    channels: int, scale: int, act: Callable[[], nn.Module] | None = None
) -> nn.Sequential:
    """log2(scale) stages of conv3x3 (4x channels) + PixelShuffle(2) [+ a new activation from ``act()``]."""
    layers: list[nn.Module] = []
    for _ in range(scale.bit_length() - 1):
        layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
        if act is not None:
            layers.append(act())
    return nn.Sequential(*layers)


class ResidualBodySR(SRGenerator):
    """head conv3x3 -> body (``blocks()``, then a conv3x3) with a long skip from the head -> PixelShuffle x2
    stages (no activation) -> tail conv3x3, zeroed when ``bicubic_skip`` is on (EDSR, RCAN).

    ``blocks`` is called after the head is created (then the closing conv, the upsampler and the tail), so the
    parameters are created in that order: the state_dict keys are ``head``, ``body``, ``upsample``, ``tail``.
    """

    def __init__(
        self, scale: int, common: GeneratorCommon, channels: int, blocks: Callable[[], list[nn.Module]]
    ) -> None:
        super().__init__(scale, common)
        c = channels
        self.head = nn.Conv2d(self.net_in_channels, c, 3, padding=1)
        self.body = nn.Sequential(*blocks(), nn.Conv2d(c, c, 3, padding=1))
        self.upsample = pixel_shuffle_upsampler(c, scale, act=None)
        self.tail = nn.Conv2d(c, common.in_channels, 3, padding=1)
        self.zero_init_if_skip(self.tail)

    def predict(self, lr: Tensor) -> Tensor:
        feat = self.head(lr)
        feat = feat + self.body(feat)  # long skip from the head
        return self.tail(self.upsample(feat))
