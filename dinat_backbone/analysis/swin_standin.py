"""A Swin-T stand-in for timing where timm is not installed (the CPU smoke run of
``tools/benchmark_gpu.py``; timm's ``swin_tiny_patch4_window7_224`` is the peer on the GPU).

Swin-T's layout and work: 4x4 patch embedding to 96 channels, levels of depths (2, 2, 6, 2)
with (3, 6, 12, 24) heads of dim 32, 7x7 window attention with rpb (shifted by 3 in every
other block), MLP ratio 4, patch merging between levels. The shifted windows skip Swin's
cross-boundary mask (the same FLOPs; this model only stands in for timing).
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .benchmark_utils import window_attention

__all__ = ['SwinTinyStandIn']

WINDOW = 7


class _Block(nn.Module):

    def __init__(self, dims: int, heads: int, shift: int) -> None:
        super().__init__()
        self.heads, self.shift = heads, shift
        self.norm1 = nn.LayerNorm(dims)
        self.qkv = nn.Linear(dims, 3 * dims)
        self.rpb = nn.Parameter(torch.zeros(heads, 2 * WINDOW - 1, 2 * WINDOW - 1))
        self.proj = nn.Linear(dims, dims)
        self.norm2 = nn.LayerNorm(dims)
        self.mlp = nn.Sequential(nn.Linear(dims, 4 * dims), nn.GELU(), nn.Linear(4 * dims, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        q, k, v = self.qkv(y).view(b, h, w, 3, self.heads, c // self.heads).unbind(3)
        y = window_attention(q, k, v, self.rpb, WINDOW).reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class _PatchMerging(nn.Module):

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dims)
        self.reduction = nn.Linear(4 * dims, 2 * dims, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, i::2, j::2] for j in (0, 1) for i in (0, 1)], dim=-1)
        return self.reduction(self.norm(x))


class SwinTinyStandIn(nn.Module):
    """Swin-T's backbone for timing: ``[B, 3, H, W]`` -> the four level outputs, channels
    first, as a detection/segmentation backbone returns them.

    Args:
        depths (Sequence[int]): Blocks per level. Default: Swin-T's ``(2, 2, 6, 2)``.
        heads (Sequence[int]): Heads per level. Default: ``(3, 6, 12, 24)``.
        embed_dims (int): Channels of level 1. Default: 96.
    """

    def __init__(self, depths: Sequence[int] = (2, 2, 6, 2), heads: Sequence[int] = (3, 6, 12, 24),
                 embed_dims: int = 96) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dims, kernel_size=4, stride=4)
        self.levels = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (depth, num_heads) in enumerate(zip(depths, heads)):
            dims = embed_dims * 2**i
            self.levels.append(nn.Sequential(*[
                _Block(dims, num_heads, shift=WINDOW // 2 if j % 2 else 0) for j in range(depth)]))
            self.norms.append(nn.LayerNorm(dims))
            if i < len(depths) - 1:
                self.merges.append(_PatchMerging(dims))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        outs = []
        for i, level in enumerate(self.levels):
            x = level(x)
            outs.append(self.norms[i](x).permute(0, 3, 1, 2))
            if i < len(self.merges):
                x = self.merges[i](x)
        return tuple(outs)
