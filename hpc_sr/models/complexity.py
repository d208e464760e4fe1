"""Parameter and FLOP counts of any model (generators and discriminators alike)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def count_parameters(m: nn.Module) -> int:
    """Number of (unique) parameters of ``m``, trainable or not."""
    return sum(p.numel() for p in m.parameters())


def flops_per_image(m: nn.Module, in_size: tuple[int, int]) -> int:
    """FLOPs (2 x multiply-adds of every Conv2d and Linear, plus attention matmuls) of one forward pass.

    ``in_size`` is the (h, w) of the model's input (the LR image for a generator, the HR-sized image for a
    discriminator). Counted from a real forward pass with hooks, in eval mode and without gradients; the
    training flag is restored afterwards. Bicubic, activations and normalisation are not counted. Modules
    that do matmuls outside Conv2d/Linear (window attention) report them through a ``extra_macs`` attribute
    that their forward sets.
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
        macs += out[0].numel() * mod.in_features  # out[0]: one image (its tokens x out_features)

    def extra_hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        macs += int(getattr(mod, "extra_macs", 0))

    handles = []
    for sub in m.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
        if hasattr(sub, "extra_macs"):
            handles.append(sub.register_forward_hook(extra_hook))
    param = next(m.parameters())
    in_channels = int(getattr(m, "input_channels", getattr(m, "in_channels", 1)))  # with an LR-blur channel
    was_training = m.training
    try:
        m.eval()
        with torch.no_grad():
            m(torch.zeros(1, in_channels, *in_size, dtype=param.dtype, device=param.device))
    finally:
        m.train(was_training)
        for h in handles:
            h.remove()
    return 2 * macs
