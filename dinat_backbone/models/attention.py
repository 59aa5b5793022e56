"""Multi-head 2-D (dilated) neighbourhood attention layer."""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from .._openmmlab import BaseModule, trunc_normal_
from ..ops import na2d
from ..ops._checks import check_dilation, check_kernel_size, IntOrPair


class NeighborhoodAttention2D(BaseModule):
    """Neighbourhood attention over a channels-last map, with relative positional bias.

    Owns the ``qkv`` and ``proj`` projections and the ``rpb`` table (parameter names as in
    the reference DiNAT, so published checkpoints load unchanged). Maps shorter than
    ``kernel_size * dilation`` on an axis are zero-padded at the bottom/right before ``qkv``
    and cropped after attention, as NATTEN <= 0.15 did, which pretrained DiNAT relies on.

    Args:
        embed_dims (int): Number of input/output channels.
        num_heads (int): Number of attention heads; must divide ``embed_dims``.
        kernel_size (int): Odd neighbourhood size. Default: 7.
        dilation (int): Dilation of the neighbourhood. Default: 1.
        qkv_bias (bool): Add a bias to the qkv projection. Default: True.
        qk_scale (float, optional): Override of the ``head_dims ** -0.5`` query scale.
        attn_drop_rate (float): Dropout on the attention weights. Default: 0.
        proj_drop_rate (float): Dropout after the output projection. Default: 0.
        use_rpb (bool): Learn a relative positional bias ``[heads, 2k-1, 2k-1]``. Without it,
            CUDA inputs run on NATTEN's fused kernels. Default: True.
        init_cfg (dict, optional): Initialisation config. Default: None.

    Attributes:
        attention_op (callable): The function that computes attention, with the signature of
            :func:`~dinat_backbone.ops.na2d` (the default). Analysis swaps it per instance,
            e.g. :func:`~dinat_backbone.analysis.flops.counted_na2d` to count FLOPs.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 kernel_size: IntOrPair = 7,
                 dilation: IntOrPair = 1,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0.,
                 use_rpb: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads != 0:
            raise ValueError('embed_dims must be divisible by num_heads, got '
                             f'{embed_dims=}, {num_heads=}.')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.kernel_size = check_kernel_size(kernel_size)
        self.dilation = check_dilation(dilation)
        self.scale = self.head_dims ** -0.5 if qk_scale is None else qk_scale
        self.attn_drop_rate = attn_drop_rate
        self.attention_op: Callable[..., torch.Tensor] = na2d

        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        if use_rpb:
            kh, kw = self.kernel_size
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kh - 1, 2 * kw - 1))
        else:
            self.register_parameter('rpb', None)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def init_weights(self) -> None:
        super().init_weights()
        if self.rpb is not None:
            trunc_normal_(self.rpb, std=.02, a=-2., b=2.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        batch, height, width, channels = x.shape
        if torch.jit.is_tracing():
            # torch.jit.trace (used by mmengine's FLOP analysis) records sizes as tensors,
            # which sym_max rejects; a traced graph has fixed sizes anyway.
            height, width = int(height), int(width)
        # The padded size as max(size, k*d): symbolic when exported with dynamic height/width,
        # in a form whose lower bound (k*d, which na2d checks) the exporter can prove.
        padded_h = torch.sym_max(height, self.kernel_size[0] * self.dilation[0])
        padded_w = torch.sym_max(width, self.kernel_size[1] * self.dilation[1])
        # When exporting, pad and crop unconditionally (by 0 where not needed): a branch on the
        # size would fix the graph to one side of the threshold.
        exporting = torch.compiler.is_exporting()
        padded = exporting or padded_h > height or padded_w > width
        if padded:
            x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
        qkv = self.qkv(x).reshape(batch, padded_h, padded_w, 3, self.num_heads, self.head_dims)
        q, k, v = qkv.unbind(3)
        attn_drop = self.attn_drop_rate if self.training else 0.
        x = self.attention_op(q, k, v, self.kernel_size, self.dilation, rpb=self.rpb,
                              scale=self.scale, attn_drop=attn_drop)
        x = x.reshape(batch, padded_h, padded_w, channels)
        if exporting:
            # Whether a crop is contiguous depends on whether it removed anything; export would
            # guard on that (fixing the graph to one case), so take a contiguous copy.
            x = x[:, :height, :width].clone(memory_format=torch.contiguous_format)
        elif padded:
            x = x[:, :height, :width]
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'kernel_size={self.kernel_size}, dilation={self.dilation}, '
                f'rpb={self.rpb is not None}')
