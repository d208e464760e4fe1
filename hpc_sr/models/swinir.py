"""SwinIR-class window-attention generator (Liang et al. 2021, lightweight variant): ``arch: swinir``.

Shallow conv, LayerNorm, residual Swin transformer blocks (RSTB: ``depths[i]`` Swin layers whose windows
alternate plain / shifted by ``window_size // 2``, then a conv, plus a skip), LayerNorm, conv + long skip,
then the upsampler: ``pixelshuffledirect`` (one conv to ``c * s**2`` channels + PixelShuffle(s), the
lightweight model's) or ``pixelshuffle`` (conv + LeakyReLU, conv + PixelShuffle(2) stages, conv).
Attention is windowed multi-head self-attention with a learned relative position bias; shifted layers mask
out pairs of tokens that the cyclic shift brought together from distant parts of the image.

Any input size works: the LR image is mirror-padded on the right and bottom to a multiple of
``window_size`` (symmetric mirror, edge sample repeated, as SwinIR's own test-time padding; unlike
``F.pad(mode="reflect")`` it works for images smaller than the padding), the shift mask is built for the
padded size at run time from tensor ops, and the output is cropped back. The forward has no data-dependent
Python branches, so it traces (``torch.jit.trace``) with dynamic height and width. Transformer features are
kept channel-last ``(N, H, W, C)`` with the batch leading, so ``flops_per_image`` hooks see one image in
``out[0]``; every :class:`WindowAttention` sets ``extra_macs`` (its q @ k^T and attn @ v multiply-adds for
one image) in its forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from hpc_sr.models.layers import SRGenerator, pixel_shuffle_upsampler
from hpc_sr.models.registry import GeneratorCommon, register_generator

UPSAMPLERS = ("pixelshuffledirect", "pixelshuffle")


@dataclass
class SwinIROptions:
    embed_dim: int = 60
    depths: tuple[int, ...] = (6, 6, 6, 6)  # Swin layers per RSTB
    num_heads: tuple[int, ...] = (6, 6, 6, 6)  # attention heads per RSTB
    window_size: int = 8
    mlp_ratio: float = 2.0
    upsampler: Literal["pixelshuffledirect", "pixelshuffle"] = "pixelshuffledirect"
    upsample_features: int = 64  # conv width of the "pixelshuffle" upsampler (unused by the direct one)

    @classmethod
    def tiny(cls) -> SwinIROptions:
        """A ~3.6k-parameter variant (one RSTB of two layers, 4x4 windows) for tests and smoke runs."""
        return cls(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, mlp_ratio=1.0)

    def __post_init__(self) -> None:
        self.depths = tuple(self.depths)
        self.num_heads = tuple(self.num_heads)
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim} must be >= 1")
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths={self.depths} must be a non-empty list of integers >= 1")
        if len(self.num_heads) != len(self.depths):
            raise ValueError(f"num_heads={self.num_heads} needs one entry per RSTB (depths={self.depths})")
        for h in self.num_heads:
            if h < 1 or self.embed_dim % h:
                raise ValueError(f"num_heads entry {h} must be >= 1 and divide embed_dim={self.embed_dim}")
        if self.window_size < 2:
            raise ValueError(f"window_size={self.window_size} must be >= 2")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} must be > 0")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler={self.upsampler!r} is not one of {list(UPSAMPLERS)}")
        if self.upsample_features < 1:
            raise ValueError(f"upsample_features={self.upsample_features} must be >= 1")


def mirror_index(n: int, total: int, device: torch.device) -> Tensor:
    """Indices ``0..n-1, n-1..0, 0..`` (symmetric mirror, period ``2n``) of length ``total``."""
    i = torch.arange(n, device=device)
    period = torch.cat([i, i.flip(0)])
    return period.repeat((total + 2 * n - 1) // (2 * n))[:total]


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` (N, C, H, W) mirror-padded on the right and bottom to multiples of ``multiple``."""
    h, w = x.shape[-2], x.shape[-1]
    hp = (h + multiple - 1) // multiple * multiple
    wp = (w + multiple - 1) // multiple * multiple
    x = x.index_select(-2, mirror_index(h, hp, x.device))
    return x.index_select(-1, mirror_index(w, wp, x.device))


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(N, H, W, C) -> (N, windows, ws*ws, C), windows in row-major order; H and W multiples of ``ws``."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // ws) * (w // ws), ws * ws, c)


def window_merge(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (N, windows, ws*ws, C) -> (N, h, w, C)."""
    n, c = windows.shape[0], windows.shape[-1]
    x = windows.reshape(n, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> Tensor:
    """Additive mask (windows, ws*ws, ws*ws): 0 where two tokens of a shifted window may attend, -inf not.

    After rolling the (h, w) grid by ``-shift``, the last ``shift`` rows/columns hold pixels wrapped from the
    opposite border; tokens attend only within the same of the 3 x 3 regions that the cyclic shift glued
    together, i.e. within the same window of the shifted partition of the unrolled image.
    """
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    region_h = (rows >= h - ws).long() + (rows >= h - shift).long()
    region_w = (cols >= w - ws).long() + (cols >= w - shift).long()
    region = (region_h[:, None] * 3 + region_w[None, :])[None, :, :, None]  # (1, h, w, 1)
    ids = window_partition(region, ws)[0, :, :, 0]  # (windows, ws*ws)
    same = ids[:, :, None] == ids[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill(~same, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention within each window, with a learned relative position bias."""

    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N), each in [0, 2ws-2]
        self.register_buffer("bias_index", rel[0] * (2 * ws - 1) + rel[1], persistent=False)
        self.extra_macs = 0  # q @ k^T and attn @ v multiply-adds of one image, set by forward

    def relative_bias(self) -> Tensor:
        """(heads, N, N) bias added to the attention logits."""
        n = self.bias_index.shape[0]
        return self.bias_table[self.bias_index.reshape(-1)].reshape(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (N, windows, tokens, C); ``mask`` (windows, tokens, tokens) or None."""
        b, nw, t, c = x.shape
        qkv = self.qkv(x).reshape(b, nw, t, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, windows, heads, tokens, C/heads)
        bias = self.relative_bias()[None]  # (1, heads, tokens, tokens)
        if mask is not None:
            bias = bias + mask[:, None]  # (windows, heads, tokens, tokens)
        # Plain matmuls rather than F.scaled_dot_product_attention: the mask broadcasts over the batch here,
        # while SDPA's fused kernels (and its ONNX export) want 4-D inputs, i.e. a mask copied per image.
        logits = (q * self.scale) @ k.transpose(-2, -1) + bias.to(q.dtype)
        out = torch.softmax(logits, dim=-1) @ v
        if not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.extra_macs = 2 * nw * t * t * c  # a plain int for flops_per_image, kept out of graphs
        return self.proj(out.transpose(2, 3).reshape(b, nw, t, c))


class SwinLayer(nn.Module):
    """LayerNorm - (shifted) window attention - skip; LayerNorm - MLP (GELU) - skip; on (N, H, W, C)."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (N, H, W, C), H and W multiples of the window; ``mask`` from :func:`shifted_window_mask`."""
        h, w = x.shape[1], x.shape[2]
        y = self.norm1(x)
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            y = window_merge(self.attn(window_partition(y, self.ws), mask), self.ws, h, w)
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        else:
            y = window_merge(self.attn(window_partition(y, self.ws), None), self.ws, h, w)
        x = x + y
        return x + self.mlp(self.norm2(x))


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin layers (plain, shifted, ...), a 3x3 conv, plus the input."""

    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio) for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = x
        for layer in self.layers:
            y = layer(y, mask)
        y = self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + y


@register_generator("swinir", SwinIROptions)
class SwinIR(SRGenerator):
    """SwinIR for ``common.in_channels``-channel images; x2 or x4, any input size."""

    def __init__(self, opts: SwinIROptions, scale: int, common: GeneratorCommon) -> None:
        super().__init__(scale, common)
        c, cin, ws = opts.embed_dim, common.in_channels, opts.window_size
        self.window_size = ws
        self.shift = ws // 2
        self.head = nn.Conv2d(self.net_in_channels, c, 3, padding=1)
        self.embed_norm = nn.LayerNorm(c)
        self.stages = nn.ModuleList(
            RSTB(c, d, h, ws, opts.mlp_ratio) for d, h in zip(opts.depths, opts.num_heads)
        )
        self.norm = nn.LayerNorm(c)
        self.body_tail = nn.Conv2d(c, c, 3, padding=1)
        self.upsample: nn.Module
        if opts.upsampler == "pixelshuffledirect":
            self.tail = nn.Conv2d(c, cin * scale**2, 3, padding=1)
            self.upsample = nn.Identity()
            self.shuffle = nn.PixelShuffle(scale)
        else:
            f = opts.upsample_features
            self.upsample = nn.Sequential(
                nn.Conv2d(c, f, 3, padding=1), nn.LeakyReLU(0.01), pixel_shuffle_upsampler(f, scale)
            )
            self.tail = nn.Conv2d(f, cin, 3, padding=1)
            self.shuffle = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.zero_init_if_skip(self.tail)

    def features(self, x: Tensor) -> Tensor:
        """Deep features (N, C, H, W) of a padded input (H, W multiples of the window)."""
        shallow = self.head(x)
        mask = shifted_window_mask(x.shape[-2], x.shape[-1], self.window_size, self.shift, x.device)
        t = self.embed_norm(shallow.permute(0, 2, 3, 1))
        for stage in self.stages:
            t = stage(t, mask)
        t = self.norm(t).permute(0, 3, 1, 2)
        return shallow + self.body_tail(t)

    def predict(self, lr: Tensor) -> Tensor:
        h, w = lr.shape[-2], lr.shape[-1]
        x = self.features(pad_to_multiple(lr, self.window_size))
        out = self.shuffle(self.tail(self.upsample(x)))
        return out[:, :, : h * self.scale, : w * self.scale]
