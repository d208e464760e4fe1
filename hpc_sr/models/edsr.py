"""EDSR generator (Lim et al. 2017) for one-channel lensing images: ``arch: edsr``.

conv3x3 head, ``blocks`` residual blocks (conv3x3 - ReLU - conv3x3, scaled by ``res_scale``, no BatchNorm),
a conv3x3 closing the body, a long skip from the head, PixelShuffle x2 stages (no activation, as in the
paper) and a conv3x3 tail that starts at zero when ``bicubic_skip`` is on (untrained output == bicubic).

Differences from the paper, on purpose:

* No MeanShift (the RGB mean subtraction of DIV2K): inputs are one-channel images in [0, 1] and, with the
  bicubic skip, the network predicts a zero-mean-ish correction anyway.
* ``res_scale`` defaults to 1.0, the paper's choice for its baseline (16 blocks, 64 channels), which trains
  stably without scaling. The paper's large model (32 blocks, 256 channels) needed 0.1: set
  ``res_scale: 0.1`` with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hpc_sr.models.layers import ResidualBodySR
from hpc_sr.models.registry import GeneratorCommon, register_generator


@dataclass
class EDSROptions:
    channels: int = 64
    blocks: int = 16
    res_scale: float = 1.0  # the baseline's; use 0.1 for the large (32 x 256) model

    @classmethod
    def tiny(cls) -> EDSROptions:
        """About 1.4k parameters (x2): for tests and smoke runs."""
        return cls(channels=4, blocks=2)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels={self.channels} must be >= 1")
        if self.blocks < 0:
            raise ValueError(f"blocks={self.blocks} must be >= 0")
        if not self.res_scale > 0:
            raise ValueError(f"res_scale={self.res_scale} must be > 0")


class EDSRBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, added back scaled by ``res_scale`` (no BatchNorm)."""

    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.body(x)


@register_generator("edsr", EDSROptions)
class EDSR(ResidualBodySR):
    """EDSR; x2 (one PixelShuffle stage) or x4 (two)."""

    def __init__(self, opts: EDSROptions, scale: int, common: GeneratorCommon) -> None:
        c = opts.channels
        super().__init__(scale, common, c, lambda: [EDSRBlock(c, opts.res_scale) for _ in range(opts.blocks)])
