"""The gather form of :func:`~dinat_backbone.ops.na2d`: every query's ``k*k`` keys gathered.

Every index is a tensor op on ``arange(H)``/``arange(W)``, so the graph stays valid for any
input size: :func:`~dinat_backbone.ops.na2d` uses it when exporting (ONNX with dynamic
height/width) and under ``torch.jit.trace``, where its two einsums are the attention's
multiply-adds. It holds ``k*k`` copies of the keys and values (``O(H*W*k*k*C)`` memory), so
eager code uses the tiled implementation (:mod:`.tiled`) instead.
"""
from typing import Optional

import torch

from ._checks import IntOrPair, NA2DArgs, check_na2d_args
from ._softmax import attention_weights
from .windows import axis_neighbours

__all__ = ['na2d_gather', 'run_gather']


def run_gather(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
               rpb: Optional[torch.Tensor], attn_drop: float) -> torch.Tensor:
    """The gather form on checked arguments (:func:`~._checks.check_na2d_args`)."""
    (kernel_h, kernel_w), (dil_h, dil_w) = args.kernel, args.dilation
    rows, row_bias = axis_neighbours(query.shape[1], kernel_h, dil_h, query.device)
    cols, col_bias = axis_neighbours(query.shape[2], kernel_w, dil_w, query.device)
    index_y, index_x = rows[:, None, :, None], cols[None, :, None, :]       # [H, W, kh, kw]
    k = key[:, index_y, index_x].flatten(3, 4)                  # [B, H, W, kh*kw, heads, D]
    v = value[:, index_y, index_x].flatten(3, 4)
    logits = torch.einsum('byxhd,byxnhd->byxhn', query * args.scale, k)
    if rpb is not None:
        bias = rpb[:, row_bias[:, None, :, None], col_bias[None, :, None, :]]  # [h, H, W, kh, kw]
        logits = logits + bias.flatten(3, 4).permute(1, 2, 0, 3).to(logits.dtype)
    attn = attention_weights(logits, query.dtype, attn_drop)
    return torch.einsum('byxhn,byxnhd->byxhd', attn, v)


def na2d_gather(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kernel_size: IntOrPair, dilation: IntOrPair = 1,
                rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                attn_drop: float = 0.0) -> torch.Tensor:
    """:func:`~dinat_backbone.ops.na2d` in the gather form (same arguments); see the module
    docstring for where it is used."""
    args = check_na2d_args(query, key, value, kernel_size, dilation, rpb, scale,
                           attn_drop)
    return run_gather(query, key, value, args, rpb, attn_drop)
