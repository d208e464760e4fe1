"""SRResNet generator and SRGAN discriminator (Ledig et al. 2017) for one-channel lensing images.

    g = Generator(channels=64, blocks=16, scale=2)          # (N,1,h,w) -> (N,1,2h,2w)
    d = Discriminator(channels=64, blocks=4)                # (N,1,H,W) -> (N,) logits, any H, W

Choices worth knowing:

* ``Generator(bicubic_skip=True)`` predicts a correction on top of bicubic upsampling (``F.interpolate``
  bicubic, ``align_corners=False``, the same call as :func:`hpc_sr.eval.metrics.bicubic_upscale`); its last
  conv starts at zero, so an untrained generator reproduces bicubic exactly. The output is linear (no
  tanh/sigmoid); clamp at evaluation time.
* The discriminator has **no BatchNorm** (SRGAN's D has it). Without BN there are no running statistics to
  keep in step across DDP ranks (``broadcast_buffers``) and the D output of one image does not depend on the
  rest of its batch, which RaGAN and the real/fake split batches prefer. ``spectral_norm=True`` wraps every
  conv and linear layer in ``torch.nn.utils.parametrizations.spectral_norm`` (its ``u`` vectors are buffers:
  DDP broadcasts them from rank 0, which is harmless).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

if TYPE_CHECKING:
    from hpc_sr.config import ModelConfig

SUPPORTED_SCALES = (2, 4)


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


def _upsample_x2(channels: int) -> nn.Sequential:
    """conv3x3 to 4x channels, PixelShuffle(2), PReLU: one x2 stage."""
    return nn.Sequential(
        nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(channels)
    )


class Generator(nn.Module):
    """SRResNet for ``in_channels``-channel images; x2 (one PixelShuffle stage) or x4 (two)."""

    def __init__(
        self,
        channels: int = 64,
        blocks: int = 16,
        scale: int = 2,
        batch_norm: bool = False,
        res_scale: float = 0.1,
        bicubic_skip: bool = True,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if scale not in SUPPORTED_SCALES:
            raise ValueError(
                f"Generator: scale={scale!r} is not supported; valid scales: {list(SUPPORTED_SCALES)}"
            )
        if channels < 1 or blocks < 0:
            raise ValueError(f"Generator: channels={channels} must be >= 1 and blocks={blocks} >= 0")
        self.scale = scale
        self.in_channels = in_channels
        self.bicubic_skip = bicubic_skip
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU(channels))
        self.body = nn.Sequential(*[ResidualBlock(channels, batch_norm, res_scale) for _ in range(blocks)])
        trunk: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            trunk.append(nn.BatchNorm2d(channels))
        self.trunk_tail = nn.Sequential(*trunk)
        self.upsample = nn.Sequential(*[_upsample_x2(channels) for _ in range(scale.bit_length() - 1)])
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)
        if bicubic_skip:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, scale: int) -> Generator:
        return cls(
            channels=model_cfg.channels,
            blocks=model_cfg.blocks,
            scale=scale,
            batch_norm=model_cfg.batch_norm,
            res_scale=model_cfg.res_scale,
            bicubic_skip=model_cfg.bicubic_skip,
        )

    def forward(self, lr: Tensor) -> Tensor:
        feat = self.head(lr)
        feat = feat + self.trunk_tail(self.body(feat))  # long skip from the head
        out = self.tail(self.upsample(feat))
        if self.bicubic_skip:
            out = out + F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


class Discriminator(nn.Module):
    """SRGAN discriminator without BatchNorm (see the module docstring), pooled head: any input size.

    conv3x3 + LeakyReLU(0.2), then ``blocks`` pairs (conv3x3 stride 1, conv3x3 stride 2) with
    channels ``channels * 2**i``, then AdaptiveAvgPool2d(1) -> linear -> LeakyReLU -> linear 1.
    """

    def __init__(
        self, channels: int = 64, blocks: int = 4, spectral_norm: bool = False, in_channels: int = 1
    ) -> None:
        super().__init__()
        if channels < 1 or blocks < 0:
            raise ValueError(f"Discriminator: channels={channels} must be >= 1 and blocks={blocks} >= 0")
        self.in_channels = in_channels
        wrap = _sn if spectral_norm else (lambda m: m)
        act = lambda: nn.LeakyReLU(0.2, inplace=False)  # noqa: E731
        stages: list[nn.Module] = [nn.Sequential(wrap(nn.Conv2d(in_channels, channels, 3, padding=1)), act())]
        c_prev = channels
        for i in range(blocks):
            c = channels * 2**i
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

    @classmethod
    def from_config(cls, model_cfg: ModelConfig) -> Discriminator:
        return cls(
            channels=model_cfg.d_channels, blocks=model_cfg.d_blocks, spectral_norm=model_cfg.d_spectral_norm
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


def count_parameters(m: nn.Module) -> int:
    """Number of (unique) parameters of ``m``, trainable or not."""
    return sum(p.numel() for p in m.parameters())


def flops_per_image(m: nn.Module, lr_size: tuple[int, int]) -> int:
    """FLOPs (2 x multiply-adds of every Conv2d and Linear) of one forward pass on one image.

    ``lr_size`` is the (h, w) of the model's input (the LR image for a generator, the HR-sized image for a
    discriminator). Counted from a real forward pass with hooks, in eval mode and without gradients; the
    model's training flag is restored afterwards. Bicubic, activations and normalisation are not counted.
    """
    macs = 0

    def conv_hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, nn.Conv2d)
        kh, kw = mod.kernel_size
        macs += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, nn.Linear)
        macs += out[0].numel() * mod.in_features

    handles = []
    for sub in m.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    param = next(m.parameters())
    in_channels = int(getattr(m, "in_channels", 1))
    was_training = m.training
    try:
        m.eval()
        with torch.no_grad():
            m(torch.zeros(1, in_channels, *lr_size, dtype=param.dtype, device=param.device))
    finally:
        m.train(was_training)
        for h in handles:
            h.remove()
    return 2 * macs
