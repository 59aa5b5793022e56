"""The tiled pure-PyTorch implementation of :func:`~dinat_backbone.ops.na2d`
(``backend='torch'``): the one that runs everywhere, and the fastest on the CPU where each
dilation group fits one tile.

Queries of each dilation group are cut into tiles of ``T`` consecutive positions per axis. The
keys of a tile's windows all lie in a halo of ``T + k - 1`` positions, so each tile is one small
dense attention (``T*T`` queries against ``(T+k-1)**2`` keys) with an additive bias that carries
the rpb for the neighbours and ``-inf`` elsewhere. All index arithmetic is done once per axis
(``O(L * T)``) and cached per shape, so the hot path is three gathers, two batched matmuls and
a softmax, and peak extra memory is ``O(H * W * heads * (T + k - 1)**2)``: no
``(H*W) x (H*W)`` matrix is ever built.
"""
from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import IntOrPair, NA2DArgs, check_na2d_args
from ._softmax import attention_weights

__all__ = ['DEFAULT_TILE', 'na2d_tiled', 'run_tiled']

# Query tile length per axis. 8 keeps the halo (8 + 7 - 1 = 14 for k = 7) small while giving
# BLAS matrices of useful size; see docs/benchmarks.md for the measurement behind it.
DEFAULT_TILE = 8


class AxisTables(NamedTuple):
    """Index tables of one axis; ``n`` tiles (over all dilation groups), tile length ``T``."""
    query_index: torch.Tensor  # [n * T]       source position of each tiled query
    key_index: torch.Tensor    # [n * (T+k-1)] source position of each halo key
    bias_index: torch.Tensor   # [n, T, T+k-1] rpb index 0..2k-2, or 2k-1 where masked
    inverse: torch.Tensor      # [L]           position of each source query in query_index


def _axis_tables(length: int, kernel: int, dilation: int, tile: int,
                 device: torch.device) -> AxisTables:
    k, d = kernel, dilation
    longest = -(-length // d)  # groups are `longest` or `longest - 1` long
    tile = min(tile, longest)
    halo = min(tile + k - 1, longest)
    tiles_per_group = -(-longest // tile)

    arange = torch.arange
    group = arange(d, device=device)
    group_len = (length - group + d - 1) // d                                  # [d]
    # Tile starts; the last tile of a group is shifted back so that it ends with the group
    # (its queries then repeat some of the previous tile's, which `inverse` reads only once).
    # In a group shorter than the tile or the halo, positions run past the group's ends; they
    # are clamped for gathering and always fall outside every window, so they are masked.
    start = torch.minimum(arange(tiles_per_group, device=device)[None] * tile,
                          (group_len - tile)[:, None])                          # [d, n]
    halo_start = torch.clamp(torch.minimum(start - k // 2, (group_len - halo)[:, None]),
                             min=0)                                             # [d, n]
    q_pos = start[..., None] + arange(tile, device=device)                      # [d, n, T]
    k_pos = halo_start[..., None] + arange(halo, device=device)                 # [d, n, halo]
    last = (group_len - 1)[:, None, None]
    win_start = torch.minimum(torch.clamp(q_pos - k // 2, min=0),
                              (group_len - k)[:, None, None])                   # [d, n, T]
    in_window = k_pos[..., None, :] - win_start[..., None]                      # [d, n, T, halo]
    valid = (in_window >= 0) & (in_window < k)
    bias_index = torch.where(valid, k_pos[..., None, :] - q_pos[..., None] + k - 1,
                             torch.full_like(in_window, 2 * k - 1))

    g = group[:, None, None]
    query_index = (g + d * torch.minimum(q_pos.clamp(min=0), last)).reshape(-1)
    key_index = (g + d * torch.minimum(k_pos, last)).reshape(-1)

    src = arange(length, device=device)
    src_group, src_pos = src % d, src // d
    tile_id = torch.minimum(src_pos // tile, (group_len[src_group] + tile - 1) // tile - 1)
    inverse = (src_group * tiles_per_group + tile_id) * tile + src_pos - start[src_group, tile_id]
    return AxisTables(query_index, key_index, bias_index.reshape(d * tiles_per_group, tile, halo),
                      inverse)


class _Plan(NamedTuple):
    rows: AxisTables
    cols: AxisTables
    # Most tiles share their bias pattern (all interior tiles do), so the bias is built for the
    # distinct row x column patterns only and expanded to the tiles by index_select.
    bias_index: torch.Tensor   # [Uy, Ux, Ty*Tx, Hy*Hx] flat index into the padded rpb table
    mask: torch.Tensor         # same shape, additive 0 / -inf (float32)
    row_pattern: torch.Tensor  # [ny] pattern id of each row tile
    col_pattern: torch.Tensor  # [nx] pattern id of each column tile


@torch.compiler.assume_constant_result
def _plan(height: int, width: int, kernel: Tuple[int, int], dilation: Tuple[int, int],
          tile: int, device: torch.device) -> _Plan:
    # torch.compile takes the plan as a constant of its graph: torch.unique has no static
    # output shape, so tracing it would break the graph.
    return _cached_plan(height, width, kernel, dilation, tile, device)


@lru_cache(maxsize=64)
def _cached_plan(height: int, width: int, kernel: Tuple[int, int], dilation: Tuple[int, int],
                 tile: int, device: torch.device) -> _Plan:
    rows = _axis_tables(height, kernel[0], dilation[0], tile, device)
    cols = _axis_tables(width, kernel[1], dilation[1], tile, device)
    row_patterns, row_pattern = torch.unique(rows.bias_index, dim=0, return_inverse=True)
    col_patterns, col_pattern = torch.unique(cols.bias_index, dim=0, return_inverse=True)
    uy, ty, hy = row_patterns.shape
    ux, tx, hx = col_patterns.shape
    # rpb is padded by one row and column holding the masked entries (index 2k-1 per axis).
    index = (row_patterns[:, None, :, None, :, None] * (2 * kernel[1])
             + col_patterns[None, :, None, :, None, :])
    masked = ((row_patterns == 2 * kernel[0] - 1)[:, None, :, None, :, None]
              | (col_patterns == 2 * kernel[1] - 1)[None, :, None, :, None, :])
    mask = torch.zeros(masked.shape, device=device).masked_fill_(masked, float('-inf'))
    shape = (uy, ux, ty * tx, hy * hx)
    return _Plan(rows, cols, index.reshape(shape), mask.reshape(shape), row_pattern, col_pattern)


def _to_tiles(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              n_rows: int, n_cols: int) -> torch.Tensor:
    """Gather ``[B, H, W, heads, D]`` into ``[B * heads * ny * nx, ty*tx, D]`` tiles."""
    b, _, _, heads, dim = x.shape
    x = x.index_select(1, rows).index_select(2, cols)
    ty, tx = rows.numel() // n_rows, cols.numel() // n_cols
    x = x.view(b, n_rows, ty, n_cols, tx, heads, dim).permute(0, 5, 1, 3, 2, 4, 6)
    return x.reshape(b * heads * n_rows * n_cols, ty * tx, dim)


def _attention_bias(plan: _Plan, rpb: Optional[torch.Tensor], heads: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """Additive logits bias ``[heads, ny, nx, Ty*Tx, Hy*Hx]``: rpb for neighbours, -inf else."""
    mask = plan.mask.to(dtype)
    if rpb is None:
        bias = mask.expand(heads, *mask.shape)
    else:
        padded = F.pad(rpb, (0, 1, 0, 1)).reshape(heads, -1)
        bias = padded[:, plan.bias_index].to(dtype) + mask
    return bias.index_select(1, plan.row_pattern).index_select(2, plan.col_pattern)


def run_tiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
              rpb: Optional[torch.Tensor], attn_drop: float,
              tile: int = DEFAULT_TILE) -> torch.Tensor:
    """The tiled implementation on checked arguments (:func:`~._checks.check_na2d_args`)."""
    b, height, width, heads, dim = query.shape
    plan = _plan(height, width, args.kernel, args.dilation, tile, query.device)
    ny, nx = len(plan.row_pattern), len(plan.col_pattern)

    q = _to_tiles(query, plan.rows.query_index, plan.cols.query_index, ny, nx)
    k = _to_tiles(key, plan.rows.key_index, plan.cols.key_index, ny, nx)
    v = _to_tiles(value, plan.rows.key_index, plan.cols.key_index, ny, nx)
    bias = _attention_bias(plan, rpb, heads, query.dtype)
    bias = bias.expand(b, *bias.shape).reshape(-1, *bias.shape[-2:])

    # One fused pass: logits = bias + scale * q @ k^T.
    logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=args.scale)
    attn = attention_weights(logits, query.dtype, attn_drop)
    out = torch.bmm(attn, v)                                  # [B*heads*ny*nx, Ty*Tx, D]

    ty, tx = plan.rows.query_index.numel() // ny, plan.cols.query_index.numel() // nx
    out = out.view(b, heads, ny, nx, ty, tx, dim).permute(0, 2, 4, 3, 5, 1, 6)
    out = out.reshape(b, ny * ty, nx * tx, heads, dim)
    return out.index_select(1, plan.rows.inverse).index_select(2, plan.cols.inverse)


def na2d_tiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               kernel_size: IntOrPair, dilation: IntOrPair = 1,
               rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
               attn_drop: float = 0.0, tile: int = DEFAULT_TILE) -> torch.Tensor:
    """:func:`~dinat_backbone.ops.na2d` with the tiled implementation (same arguments).

    ``tile`` is the query tile length per axis; it is exposed for benchmarks and tests.
    """
    args = check_na2d_args(query, key, value, kernel_size, dilation, rpb, scale,
                           attn_drop)
    return run_tiled(query, key, value, args, rpb, attn_drop, tile)
