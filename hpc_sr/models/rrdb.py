"""RRDBNet generator (ESRGAN, Wang et al. 2018): ``arch: rrdb``.

Conv head, ``blocks`` residual-in-residual dense blocks (each: three residual dense blocks of five convs with
dense concatenation and LeakyReLU 0.2, every residual scaled by ``res_scale``), trunk conv + long skip,
x2 stages of nearest upsampling + conv + LeakyReLU, an HR conv + LeakyReLU and a linear last conv. No
BatchNorm; dense-block convs start at Kaiming x 0.1 (as ESRGAN). With ``bicubic_skip`` the last conv starts
at zero, so an untrained generator equals bicubic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpc_sr.models.layers import SRGenerator
from hpc_sr.models.registry import GeneratorCommon, register_generator


@dataclass
class RRDBOptions:
    channels: int = 64
    blocks: int = 23  # RRDBs in the trunk
    growth: int = 32  # channels each dense conv adds
    res_scale: float = 0.2

    @classmethod
    def tiny(cls) -> RRDBOptions:
        """A ~3.5k-parameter variant for tests and smoke runs."""
        return cls(channels=4, blocks=1, growth=2)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels={self.channels} must be >= 1")
        if self.blocks < 0:
            raise ValueError(f"blocks={self.blocks} must be >= 0")
        if self.growth < 1:
            raise ValueError(f"growth={self.growth} must be >= 1")
        if not self.res_scale > 0:
            raise ValueError(f"res_scale={self.res_scale} must be > 0")


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each fed the concatenation of the input and every earlier output; scaled residual."""

    def __init__(self, channels: int, growth: int, res_scale: float) -> None:
        super().__init__()
        self.dense = nn.ModuleList(_conv3(channels + i * growth, growth) for i in range(4))
        self.fuse = _conv3(channels + 4 * growth, channels)
        self.res_scale = res_scale
        for conv in [*self.dense, self.fuse]:  # ESRGAN's init: Kaiming scaled by 0.1 keeps deep trunks stable
            nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu")
            with torch.no_grad():
                conv.weight.mul_(0.1)
                conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.dense:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + self.res_scale * self.fuse(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Three residual dense blocks in sequence, their sum added back scaled by ``res_scale``."""

    def __init__(self, channels: int, growth: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(*[ResidualDenseBlock(channels, growth, res_scale) for _ in range(3)])
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.body(x)


class NearestConvUpsampler(nn.Module):
    """log2(scale) stages of nearest x2 + conv3x3 + LeakyReLU 0.2 (ESRGAN's upsampling)."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3(channels, channels) for _ in range(scale.bit_length() - 1))

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        return x


@register_generator("rrdb", RRDBOptions)
class RRDBNet(SRGenerator):
    """RRDBNet for ``common.in_channels``-channel images; x2 or x4."""

    def __init__(self, opts: RRDBOptions, scale: int, common: GeneratorCommon) -> None:
        super().__init__(scale, common)
        c, cin = opts.channels, common.in_channels
        self.head = _conv3(self.net_in_channels, c)
        self.body = nn.Sequential(*[RRDB(c, opts.growth, opts.res_scale) for _ in range(opts.blocks)])
        self.trunk_tail = _conv3(c, c)
        self.upsample = NearestConvUpsampler(c, scale)
        self.hr_conv = _conv3(c, c)
        self.tail = _conv3(c, cin)
        self.zero_init_if_skip(self.tail)

    def predict(self, lr: Tensor) -> Tensor:
        feat = self.head(lr)
        feat = feat + self.trunk_tail(self.body(feat))  # long skip from the head
        feat = F.leaky_relu(self.hr_conv(self.upsample(feat)), 0.2)
        return self.tail(feat)
