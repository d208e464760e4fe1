"""U-Net discriminator with spectral norm (Real-ESRGAN style): per-pixel logits, ``arch: unet``.

    d = build_discriminator("unet", {"channels": 64})
    logits = d(hr)                            # (N,1,H,W) -> (N,1,H,W), any H, W >= 1
    logits, feats = d.forward_features(hr)    # feats: the 5 decoder maps (feature matching)

Encoder: conv3x3 (c) + LeakyReLU(0.2), three conv3x3 stride 2 (2c, 4c, 8c) + LeakyReLU. Decoder: three
stages of bilinear upsampling **to the size of the matching encoder map**, conv3x3 (4c, 2c, c) + LeakyReLU,
plus that encoder map when ``skip_connections``; then two conv3x3 (c) + LeakyReLU and a conv3x3 to one
logit per pixel. The strided convs are 3x3 with padding 1 (Real-ESRGAN uses 4x4), so each halves the size
rounding up (ceil(H/2) >= 1) and, with upsampling to the skip's exact size, any H, W works without padding.

``spectral_norm`` wraps every conv except the first and the last (as in Real-ESRGAN) in
``torch.nn.utils.parametrizations.spectral_norm``; those convs have no bias. The logits suit every loss in
``hpc_sr.models.losses`` (they average over all elements, here pixels too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from hpc_sr.models.registry import register_discriminator


@dataclass
class UNetDiscriminatorOptions:
    channels: int = 64
    spectral_norm: bool = True
    skip_connections: bool = True

    @classmethod
    def tiny(cls) -> UNetDiscriminatorOptions:
        """About 3k parameters: for tests and smoke runs."""
        return cls(channels=2)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels={self.channels} must be >= 1")


@register_discriminator("unet", UNetDiscriminatorOptions)
class UNetDiscriminator(nn.Module):
    """U-Net discriminator: (N,C,H,W) -> per-pixel logits (N,1,H,W); see the module docstring."""

    def __init__(self, opts: UNetDiscriminatorOptions, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.skip_connections = opts.skip_connections
        c = opts.channels

        def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            return _spectral_norm(layer) if opts.spectral_norm else layer

        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        self.down = nn.ModuleList([conv(c, 2 * c, 2), conv(2 * c, 4 * c, 2), conv(4 * c, 8 * c, 2)])
        self.up = nn.ModuleList([conv(8 * c, 4 * c), conv(4 * c, 2 * c), conv(2 * c, c)])
        self.extra = nn.ModuleList([conv(c, c), conv(c, c)])
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)

    @classmethod
    def tiny(cls, in_channels: int = 1) -> UNetDiscriminator:
        return cls(UNetDiscriminatorOptions.tiny(), in_channels)

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Per-pixel logits (N,1,H,W) and the decoder maps (3 up stages, 2 extra convs), coarse to fine."""
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        skips = [act(self.conv_in(x))]
        for layer in self.down:
            skips.append(act(layer(skips[-1])))
        feat = skips.pop()
        feats: list[Tensor] = []
        for layer, skip in zip(self.up, reversed(skips)):
            feat = F.interpolate(feat, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            feat = act(layer(feat))
            if self.skip_connections:
                feat = feat + skip
            feats.append(feat)
        for layer in self.extra:
            feat = act(layer(feat))
            feats.append(feat)
        return self.conv_out(feat), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]
