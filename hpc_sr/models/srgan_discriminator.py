"""SRGAN discriminator (Ledig et al. 2017) without BatchNorm, pooled head: ``model.d.arch: srgan``.

conv3x3 + LeakyReLU(0.2), then ``blocks`` pairs (conv3x3 stride 1, conv3x3 stride 2) with channels
``channels * 2**i``, then AdaptiveAvgPool2d(1) -> linear -> LeakyReLU -> linear 1: one logit per image, any
size.

No BatchNorm (SRGAN's D has it): no running statistics to keep in step across DDP ranks and the D output of
one
image does not depend on the rest of its batch, which RaGAN and the real/fake split batches prefer.
``spectral_norm`` wraps every conv and linear layer in ``torch.nn.utils.parametrizations.spectral_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from hpc_sr.models.registry import register_discriminator


@dataclass
class SRGANDiscriminatorOptions:
    channels: int = 64
    blocks: int = 4  # strided conv pairs
    spectral_norm: bool = False

    @classmethod
    def tiny(cls) -> SRGANDiscriminatorOptions:
        return cls(channels=4, blocks=1)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.blocks < 0:
            raise ValueError(f"channels={self.channels} must be >= 1 and blocks={self.blocks} >= 0")


@register_discriminator("srgan", SRGANDiscriminatorOptions)
class SRGANDiscriminator(nn.Module):
    def __init__(self, opts: SRGANDiscriminatorOptions, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        wrap = _sn if opts.spectral_norm else (lambda m: m)
        act = lambda: nn.LeakyReLU(0.2, inplace=False)  # noqa: E731
        c0 = opts.channels
        stages: list[nn.Module] = [nn.Sequential(wrap(nn.Conv2d(in_channels, c0, 3, padding=1)), act())]
        c_prev = c0
        for i in range(opts.blocks):
            c = c0 * 2**i
            stages.append(
                nn.Sequential(
                    wrap(nn.Conv2d(c_prev, c, 3, stride=1, padding=1)),
                    act(),
                    wrap(nn.Conv2d(c, c, 3, stride=2, padding=1)),
                    act(),
                )
            )
            c_prev = c
        self.stages = nn.ModuleList(stages)
        hidden = 2 * c_prev
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            wrap(nn.Linear(c_prev, hidden)),
            act(),
            wrap(nn.Linear(hidden, 1)),
        )

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits (N,) and the activation after each stage (for feature matching)."""
        feats: list[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.head(x).squeeze(1), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]
