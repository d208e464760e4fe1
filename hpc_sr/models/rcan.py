"""RCAN generator (Zhang et al. 2018) for one-channel lensing images: ``arch: rcan``.

conv3x3 head; ``groups`` residual groups, each ``blocks`` RCABs and a conv3x3 with the group's own skip;
a conv3x3 closing the body and a long skip from the head; PixelShuffle x2 stages (no activation); a conv3x3
tail that starts at zero when ``bicubic_skip`` is on (untrained output == bicubic).

RCAB: conv3x3 - ReLU - conv3x3 - channel attention, added back scaled by ``res_scale``. Channel attention:
global average pool -> conv1x1 down to ``max(1, channels // reduction)`` -> ReLU -> conv1x1 up -> sigmoid,
multiplying the features channel by channel. The squeeze keeps at least one channel, so small test models
(``channels < reduction``) still build. No MeanShift: one-channel images in [0, 1] (see ``edsr``).

The attention convs act on a 1x1 map: their FLOPs are a constant per image, so the FLOP count of RCAN is
``a * pixels + b`` with a small ``b``, not exactly proportional to the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hpc_sr.models.layers import ResidualBodySR
from hpc_sr.models.registry import GeneratorCommon, register_generator


@dataclass
class RCANOptions:
    channels: int = 64
    groups: int = 10
    blocks: int = 20  # RCABs per group
    reduction: int = 16  # channel-attention squeeze ratio
    res_scale: float = 1.0

    @classmethod
    def tiny(cls) -> RCANOptions:
        """About 2.4k parameters (x2): for tests and smoke runs."""
        return cls(channels=4, groups=2, blocks=2, reduction=2)

    def __post_init__(self) -> None:
        for name in ("channels", "reduction"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("groups", "blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.res_scale > 0:
            raise ValueError(f"res_scale={self.res_scale} must be > 0")

    @property
    def squeeze(self) -> int:
        """Channels inside the attention bottleneck (at least 1)."""
        return max(1, self.channels // self.reduction)


class ChannelAttention(nn.Module):
    """x * sigmoid(up(relu(down(mean over pixels of x)))): one weight per channel and image."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeeze, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeeze, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class RCAB(nn.Module):
    """Residual channel-attention block: conv-ReLU-conv-CA, added back scaled by ``res_scale``."""

    def __init__(self, channels: int, squeeze: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            ChannelAttention(channels, squeeze),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.body(x)


class ResidualGroup(nn.Module):
    """``blocks`` RCABs and a conv3x3, with the group's own skip."""

    def __init__(self, channels: int, blocks: int, squeeze: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *[RCAB(channels, squeeze, res_scale) for _ in range(blocks)],
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


@register_generator("rcan", RCANOptions)
class RCAN(ResidualBodySR):
    """RCAN; x2 (one PixelShuffle stage) or x4 (two)."""

    def __init__(self, opts: RCANOptions, scale: int, common: GeneratorCommon) -> None:
        c = opts.channels
        super().__init__(
            scale,
            common,
            c,
            lambda: [ResidualGroup(c, opts.blocks, opts.squeeze, opts.res_scale) for _ in range(opts.groups)],
        )
