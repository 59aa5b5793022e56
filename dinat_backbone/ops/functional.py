"""2-D (dilated) neighbourhood attention with relative positional bias: :func:`na2d`, the choice
of its backend, and its pure-PyTorch implementations (tiled for eager code, gather for export
and tracing).

Semantics (per axis of length ``L``, odd kernel ``k``, dilation ``d``), as in NATTEN <= 0.17:
query ``i`` belongs to dilation group ``g = i % d`` (the sub-grid ``g, g + d, ...`` of length
``Lg = ceil((L - g) / d)``) at position ``p = i // d``. Its window starts at
``s = clamp(p - k // 2, 0, Lg - k)`` inside the group, so windows are shifted inwards at the
borders and every query sees exactly ``k`` keys per axis. The bias for key position ``n`` of the
group is ``rpb[n - p + k - 1]``; 2-D attention is the product of the two axes.

Backends: NATTEN's fused kernels on CUDA where they apply (no rpb), our fused Triton kernels on
CUDA (:mod:`.triton_na2d`), our compiled CPU kernels (:mod:`.cpu_kernels`), and the tiled
implementation below for everything else.

Tiled implementation: queries of each dilation group are cut into tiles of ``T`` consecutive
positions per axis. The keys of a tile's windows all lie in a halo of ``T + k - 1`` positions, so
each tile is one small dense attention (``T*T`` queries against ``(T+k-1)**2`` keys) with an
additive bias that carries the rpb for the neighbours and ``-inf`` elsewhere. All index
arithmetic is done once per axis (``O(L * T)``) and cached per shape, so the hot path is three
gathers, two batched matmuls and a softmax, and peak extra memory is
``O(H * W * heads * (T + k - 1)**2)``: no ``(H*W) x (H*W)`` matrix is ever built.
"""
from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import IntOrPair, check_dilation, check_inputs, check_kernel_size
from .cpu_kernels import kernels_built, na2d_cpu, takes
from .triton_na2d import na2d_triton, triton_supports
from .windows import axis_neighbours

__all__ = ['na2d', 'na2d_tiled', 'na2d_gather', 'select_backend']

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


def na2d_tiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               kernel_size: IntOrPair, dilation: IntOrPair = 1,
               rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
               attn_drop: float = 0.0, tile: int = DEFAULT_TILE) -> torch.Tensor:
    """The tiled pure-PyTorch implementation behind :func:`na2d` (same arguments).

    ``tile`` is the query tile length per axis; it is exposed for benchmarks and tests.
    """
    kernel, dil = check_kernel_size(kernel_size), check_dilation(dilation)
    check_inputs(query, key, value, kernel, dil, rpb)
    b, height, width, heads, dim = query.shape
    scale = dim ** -0.5 if scale is None else scale
    plan = _plan(height, width, kernel, dil, tile, query.device)
    ny, nx = len(plan.row_pattern), len(plan.col_pattern)

    q = _to_tiles(query, plan.rows.query_index, plan.cols.query_index, ny, nx)
    k = _to_tiles(key, plan.rows.key_index, plan.cols.key_index, ny, nx)
    v = _to_tiles(value, plan.rows.key_index, plan.cols.key_index, ny, nx)
    bias = _attention_bias(plan, rpb, heads, query.dtype)
    bias = bias.expand(b, *bias.shape).reshape(-1, *bias.shape[-2:])

    # One fused pass: logits = bias + scale * q @ k^T.
    logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
    # Softmax in float32 for half-precision inputs: the -inf mask and long rows need the range.
    softmax_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else None
    attn = logits.softmax(-1, dtype=softmax_dtype).to(query.dtype)
    if attn_drop > 0.0:
        attn = F.dropout(attn, p=attn_drop)
    out = torch.bmm(attn, v)                                  # [B*heads*ny*nx, Ty*Tx, D]

    ty, tx = plan.rows.query_index.numel() // ny, plan.cols.query_index.numel() // nx
    out = out.view(b, heads, ny, nx, ty, tx, dim).permute(0, 2, 4, 3, 5, 1, 6)
    out = out.reshape(b, ny * ty, nx * tx, heads, dim)
    return out.index_select(1, plan.rows.inverse).index_select(2, plan.cols.inverse)


def na2d_gather(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kernel_size: IntOrPair, dilation: IntOrPair = 1,
                rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                attn_drop: float = 0.0) -> torch.Tensor:
    """Neighbourhood attention by gathering every query's ``k*k`` keys (same arguments as
    :func:`na2d`).

    Every index is a tensor op on ``arange(H)``/``arange(W)``, so the graph stays valid for any
    input size: :func:`na2d` uses it when exporting (ONNX with dynamic height/width) and under
    ``torch.jit.trace``, where its two einsums are the attention's multiply-adds. It holds
    ``k*k`` copies of the keys and values (``O(H*W*k*k*C)`` memory), so eager code uses the
    tiled :func:`na2d_tiled` instead.
    """
    kernel, dil = check_kernel_size(kernel_size), check_dilation(dilation)
    b, height, width, heads, dim = query.shape
    scale = dim ** -0.5 if scale is None else scale
    rows, row_bias = axis_neighbours(height, kernel[0], dil[0], query.device)
    cols, col_bias = axis_neighbours(width, kernel[1], dil[1], query.device)
    index_y, index_x = rows[:, None, :, None], cols[None, :, None, :]       # [H, W, kh, kw]
    k = key[:, index_y, index_x].flatten(3, 4)                  # [B, H, W, kh*kw, heads, D]
    v = value[:, index_y, index_x].flatten(3, 4)
    logits = torch.einsum('byxhd,byxnhd->byxhn', query * scale, k)
    if rpb is not None:
        bias = rpb[:, row_bias[:, None, :, None], col_bias[None, :, None, :]]  # [h, H, W, kh, kw]
        logits = logits + bias.flatten(3, 4).permute(1, 2, 0, 3).to(logits.dtype)
    softmax_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else None
    attn = logits.softmax(-1, dtype=softmax_dtype).to(query.dtype)
    if attn_drop > 0.0:
        attn = F.dropout(attn, p=attn_drop)
    return torch.einsum('byxhn,byxnhd->byxhd', attn, v)


def _natten_fused_available(query: torch.Tensor) -> bool:
    """True where NATTEN has compiled (fused) kernels for this tensor: CUDA with libnatten."""
    if not query.is_cuda:
        return False
    try:
        import natten
    except ImportError:
        return False
    has_lib = getattr(natten, 'HAS_LIBNATTEN', None)
    if has_lib is None:
        has_lib = getattr(getattr(natten, 'context', None), 'is_fna_enabled', lambda: True)()
    return bool(has_lib)


def _groups_fit_one_tile(query: torch.Tensor, dilation: IntOrPair) -> bool:
    """True when every dilation group is at most one tile per axis: then the tiled version
    runs each group as one dense attention of <= 64 keys, faster than the neighbour kernels
    (docs/benchmarks.md). DiNAT's sparse-global layers are usually such (dilation = map / k)."""
    dil = check_dilation(dilation)
    return all(-(-length // d) <= DEFAULT_TILE for length, d in zip(query.shape[1:3], dil))


def select_backend(query: torch.Tensor, rpb: Optional[torch.Tensor], backend: str = 'auto',
                   attn_drop: float = 0.0, dilation: IntOrPair = 1,
                   kernel_size: Optional[IntOrPair] = None) -> str:
    """Return ``'natten'``, ``'triton'``, ``'cpu'`` or ``'torch'``: which implementation
    :func:`na2d` runs.

    ``auto`` picks NATTEN's fused kernels only when they apply: no rpb and no attention
    dropout (NATTEN >= 0.20 has neither) and a CUDA tensor with libnatten. Other CUDA tensors
    get our fused Triton kernels (:mod:`~dinat_backbone.ops.triton_na2d`) where Triton imports
    and they take the dtype, head dim and ``kernel_size`` (taken from ``rpb`` when not given),
    and no attention dropout; else the tiled implementation. On the CPU it picks
    our compiled kernels (:mod:`~dinat_backbone.ops.cpu_kernels`) for float32/float64 when
    they build, except where each dilation group fits one tile of the tiled pure-PyTorch
    implementation (``'torch'``), which is faster there and runs everywhere else.
    ``natten`` forces NATTEN (its CPU path is a slow forward-only reference, useful for
    testing), ``triton``, ``cpu`` and ``torch`` force ours (``triton`` on CPU tensors needs
    ``TRITON_INTERPRET=1``, for tests).
    """
    if backend not in ('auto', 'torch', 'cpu', 'natten', 'triton'):
        raise ValueError("backend must be 'auto', 'torch', 'cpu', 'natten' or 'triton', got "
                         f"{backend=}.")
    if backend == 'natten' and rpb is not None:
        raise ValueError('NATTEN >= 0.20 has no relative positional bias; '
                         "use backend='torch' or 'auto' with rpb.")
    if backend == 'natten' and attn_drop > 0.0:
        raise ValueError('NATTEN >= 0.20 has no attention dropout; '
                         "use backend='torch' or 'auto' with attn_drop > 0.")
    if backend != 'auto':
        return backend
    if rpb is None and attn_drop == 0.0 and _natten_fused_available(query):
        return 'natten'
    if kernel_size is None and rpb is not None:
        kernel_size = (rpb.shape[1] // 2 + 1, rpb.shape[2] // 2 + 1)
    if triton_supports(query, kernel_size, attn_drop):
        return 'triton'
    if takes(query) and not _groups_fit_one_tile(query, dilation) and kernels_built():
        return 'cpu'
    return 'torch'


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         kernel_size: IntOrPair, dilation: IntOrPair = 1, rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None, attn_drop: float = 0.0,
         backend: str = 'auto') -> torch.Tensor:
    """2-D (dilated) neighbourhood attention, with optional relative positional bias.

    Args:
        query, key, value (Tensor): ``[batch, height, width, heads, head_dim]`` (NATTEN's
            heads-last layout), same shape, dtype and device.
        kernel_size (int | tuple[int, int]): odd neighbourhood size per axis.
        dilation (int | tuple[int, int]): dilation per axis, >= 1. Default: 1.
        rpb (Tensor, optional): relative positional bias ``[heads, 2*kh-1, 2*kw-1]``,
            added to the logits. Default: None.
        scale (float, optional): multiplies the query. Default: ``head_dim ** -0.5``.
        attn_drop (float): dropout probability on the attention weights (pass 0 in eval).
            NATTEN >= 0.20 has no attention dropout, so ``auto`` uses ours when > 0.
            Default: 0.
        backend (str): ``'auto'``, ``'triton'``, ``'cpu'``, ``'torch'`` or ``'natten'``, see
            :func:`select_backend`.

    Returns:
        Tensor: ``[batch, height, width, heads, head_dim]``.

    Raises:
        ValueError: an axis is shorter than ``kernel_size * dilation`` (pad first), an even
            kernel, dilation < 1, or mismatched shapes.

    Example:
        >>> q = k = v = torch.randn(2, 32, 40, 4, 16)   # [B, H, W, heads, D]
        >>> na2d(q, k, v, kernel_size=7, dilation=2).shape
        torch.Size([2, 32, 40, 4, 16])
    """
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        # Export traces shapes symbolically: the gather form has no size-dependent tiling.
        # torch.jit.trace (ONNX, mmengine's FLOP analysis) records ATen operators, and the
        # gather form's are all it knows: its einsums count as the attention's multiply-adds.
        check_inputs(query, key, value, check_kernel_size(kernel_size),
                     check_dilation(dilation), rpb)
        return na2d_gather(query, key, value, kernel_size, dilation, rpb, scale, attn_drop)
    backend = select_backend(query, rpb, backend, attn_drop, dilation, kernel_size)
    if backend == 'triton':
        return na2d_triton(query, key, value, kernel_size, dilation, rpb, scale, attn_drop)
    if backend == 'cpu':
        return na2d_cpu(query, key, value, kernel_size, dilation, rpb, scale, attn_drop)
    if backend == 'natten':
        import natten
        kernel, dil = check_kernel_size(kernel_size), check_dilation(dilation)
        check_inputs(query, key, value, kernel, dil, rpb)
        return natten.na2d(query, key, value, kernel_size=kernel, dilation=dil, scale=scale)
    return na2d_tiled(query, key, value, kernel_size, dilation, rpb, scale, attn_drop)
