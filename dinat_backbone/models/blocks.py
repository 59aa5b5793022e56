"""DiNAT building blocks: tokenizer, transformer block, downsampler and level."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from .._openmmlab import (BaseModule, DropPath, ModuleList, build_activation_layer,
                          build_norm_layer)
from .attention import NeighborhoodAttention2D


class ConvTokenizer(BaseModule):
    """Two 3x3 stride-2 convolutions to stride 4, then a norm: ``[B,C,H,W] -> [B,H/4,W/4,D]``.

    Args:
        in_channels (int): Image channels.
        embed_dims (int): Output channels.
        norm_cfg (dict): Norm applied channels-last. Default: ``dict(type='LN')``.
        init_cfg (dict, optional): Initialisation config. Default: None.
    """

    def __init__(self, in_channels: int, embed_dims: int, norm_cfg: dict = dict(type='LN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, embed_dims // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dims // 2, embed_dims, kernel_size=3, stride=2, padding=1))
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(BaseModule):
    """3x3 stride-2 convolution (no bias) to twice the channels, then a norm; channels-last.

    Args:
        embed_dims (int): Input channels (output has ``2 * embed_dims``).
        norm_cfg (dict): Norm config. Default: ``dict(type='LN')``.
        init_cfg (dict, optional): Initialisation config. Default: None.
    """

    def __init__(self, embed_dims: int, norm_cfg: dict = dict(type='LN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.reduction = nn.Conv2d(embed_dims, 2 * embed_dims, kernel_size=3, stride=2,
                                   padding=1, bias=False)
        self.norm = build_norm_layer(norm_cfg, 2 * embed_dims)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class Mlp(BaseModule):
    """``fc1 -> act -> drop -> fc2 -> drop`` (names as in the reference checkpoints)."""

    def __init__(self, embed_dims: int, hidden_dims: int, act_cfg: dict = dict(type='GELU'),
                 drop_rate: float = 0., init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DiNATBlock(BaseModule):
    """Pre-norm transformer block with (dilated) neighbourhood attention.

    ``x = x + drop_path(gamma1 * attn(norm1(x)))``; ``x = x + drop_path(gamma2 * mlp(norm2(x)))``,
    with ``gamma1/gamma2`` only when ``layer_scale`` is set.

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        kernel_size (int): Neighbourhood size. Default: 7.
        dilation (int): Neighbourhood dilation. Default: 1.
        mlp_ratio (float): MLP hidden size / ``embed_dims``. Default: 4.
        qkv_bias (bool): Bias in the qkv projection. Default: True.
        qk_scale (float, optional): Override of the query scale. Default: None.
        drop_rate (float): Dropout after projections. Default: 0.
        attn_drop_rate (float): Dropout on attention weights. Default: 0.
        drop_path_rate (float): Stochastic depth rate. Default: 0.
        layer_scale (float, optional): Initial value of ``gamma1/gamma2``. Default: None.
        use_rpb (bool): Relative positional bias. Default: True.
        act_cfg (dict): MLP activation. Default: ``dict(type='GELU')``.
        norm_cfg (dict): Norm config. Default: ``dict(type='LN')``.
        with_cp (bool): Gradient checkpointing (recompute in backward). Default: False.
        init_cfg (dict, optional): Initialisation config. Default: None.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 kernel_size: int = 7,
                 dilation: int = 1,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale: Optional[float] = None,
                 use_rpb: bool = True,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = NeighborhoodAttention2D(
            embed_dims, num_heads, kernel_size=kernel_size, dilation=dilation,
            qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate, use_rpb=use_rpb)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), act_cfg, drop_rate)
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(embed_dims))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(embed_dims))
        else:
            self.gamma1 = self.gamma2 = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class DiNATLevel(BaseModule):
    """A sequence of DiNAT blocks at one resolution, then an optional downsampler.

    Args:
        embed_dims (int): Channels of the level.
        depth (int): Number of blocks.
        num_heads (int): Attention heads.
        dilations (Sequence[int]): Dilation of each block (``len == depth``).
        drop_path_rates (Sequence[float]): Stochastic depth rate of each block.
        downsample (bool): Append a :class:`ConvDownsampler`. Default: True.
        norm_cfg (dict): Norm config. Default: ``dict(type='LN')``.
        init_cfg (dict, optional): Initialisation config. Default: None.
        **block_kwargs: Passed to every :class:`DiNATBlock`.
    """

    def __init__(self, embed_dims: int, depth: int, num_heads: int, dilations: Sequence[int],
                 drop_path_rates: Sequence[float], downsample: bool = True,
                 norm_cfg: dict = dict(type='LN'), init_cfg: Optional[dict] = None,
                 **block_kwargs) -> None:
        super().__init__(init_cfg=init_cfg)
        self.blocks = ModuleList([
            DiNATBlock(embed_dims, num_heads, dilation=dilations[i],
                       drop_path_rate=drop_path_rates[i], norm_cfg=norm_cfg, **block_kwargs)
            for i in range(depth)
        ])
        self.downsample = ConvDownsampler(embed_dims, norm_cfg) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(level output before downsampling, input of the next level)``."""
        for block in self.blocks:
            x = block(x)
        return x, (x if self.downsample is None else self.downsample(x))
