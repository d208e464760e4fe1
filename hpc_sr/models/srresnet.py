"""SRResNet generator (Ledig et al. 2017) for one-channel lensing images: ``arch: srresnet``.

9x9 head + PReLU, residual blocks (optional BatchNorm, off by default; residual scaling), long skip,
PixelShuffle x2 stages with PReLU, 9x9 linear tail. With ``bicubic_skip`` (the default) the network predicts
a correction on top of bicubic and its tail starts at zero, so an untrained generator equals bicubic exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hpc_sr.models.layers import SRGenerator, pixel_shuffle_upsampler
from hpc_sr.models.registry import GeneratorCommon, register_generator


@dataclass
class SRResNetOptions:
    channels: int = 64
    blocks: int = 16
    batch_norm: bool = False
    res_scale: float = 0.1

    @classmethod
    def tiny(cls) -> SRResNetOptions:
        """A few-hundred-parameter variant for tests and smoke runs."""
        return cls(channels=4, blocks=1)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.blocks < 0:
            raise ValueError(f"channels={self.channels} must be >= 1 and blocks={self.blocks} >= 0")


class ResidualBlock(nn.Module):
    """conv3x3 - [BN] - PReLU - conv3x3 - [BN], added back scaled by ``res_scale``."""

    def __init__(self, channels: int, batch_norm: bool, res_scale: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        layers += [nn.PReLU(channels), nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(channels))
        self.body = nn.Sequential(*layers)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.body(x)


@register_generator("srresnet", SRResNetOptions)
class SRResNet(SRGenerator):
    """SRResNet; x2 (one PixelShuffle stage) or x4 (two)."""

    def __init__(self, opts: SRResNetOptions, scale: int, common: GeneratorCommon) -> None:
        super().__init__(scale, common)
        c, bn = opts.channels, opts.batch_norm
        self.head = nn.Sequential(nn.Conv2d(self.net_in_channels, c, 9, padding=4), nn.PReLU(c))
        self.body = nn.Sequential(*[ResidualBlock(c, bn, opts.res_scale) for _ in range(opts.blocks)])
        trunk: list[nn.Module] = [nn.Conv2d(c, c, 3, padding=1, bias=not bn)]
        if bn:
            trunk.append(nn.BatchNorm2d(c))
        self.trunk_tail = nn.Sequential(*trunk)
        # one nn.Sequential per x2 stage (state_dict keys upsample.<stage>.<layer>, as v1 wrote them)
        self.upsample = nn.Sequential(
            *[pixel_shuffle_upsampler(c, 2, act=lambda: nn.PReLU(c)) for _ in range(scale.bit_length() - 1)]
        )
        self.tail = nn.Conv2d(c, common.in_channels, 9, padding=4)
        self.zero_init_if_skip(self.tail)

    def predict(self, lr: Tensor) -> Tensor:
        feat = self.head(lr)
        feat = feat + self.trunk_tail(self.body(feat))  # long skip from the head
        return self.tail(self.upsample(feat))
