"""Fused Triton kernels for :func:`~dinat_backbone.ops.na2d` (``backend='triton'``), for GPUs.

Forward: FlashAttention-2 style. A program takes an 8x8 tile of queries of one dilation group
and one (batch, head) and runs an online softmax over the keys of their windows (the tile's
halo, in 8x8 blocks, masked to each query's window); the rpb is gathered by offset inside the
kernel. Only the output and the logsumexp (``[B, H, W, heads]``, float32) are written: the
``k*k`` logits never reach memory, and memory is ``O(B * H * W * heads * D)``.

Backward, from q, k, v, out and the logsumexp: dq and d(rpb) query-major (the forward's
tiling), dk and dv key-major (a tile of keys loops over the queries that can see it, each
masked by its own window, which at the borders is not a window around the key). No float
atomics touch dq/dk/dv. d(rpb) is summed per program with two small one-hot matmuls; the
per-program tables are then either added with atomics or, when
``torch.are_deterministic_algorithms_enabled()`` (mmengine's
``randomness=dict(deterministic=True)``), written as per-program partial sums that are reduced
in a fixed order, so two runs give bit-identical results.

Scope: odd kernel sizes 3..13, any dilation, non-square maps, head dim <= 128 (zero-padded to
a power of two >= 16 inside; the scale defaults to the real head dim), float32 (matmuls with
``input_precision='ieee'``, or TF32 where ``torch.set_float32_matmul_precision`` allows it),
float16 and bfloat16, all accumulated in float32.
Attention dropout is not in the kernels: with ``attn_drop > 0`` :func:`na2d_triton` runs the
tiled implementation instead.

On CPU tensors the kernels run under Triton's interpreter, which must be enabled with
``TRITON_INTERPRET=1`` before this module first launches a kernel (Triton reads it when the
kernels are defined); that is how the test suite checks them without a GPU. The interpreter
cannot run bfloat16 matmuls correctly, nor reveal races.
"""
import math
import os
import re
import warnings
from functools import lru_cache
from types import ModuleType
from typing import Any, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from ._checks import IntOrPair, NA2DArgs, check_na2d_args
from .tiled import run_tiled

__all__ = ['na2d_triton', 'run_triton', 'triton_kernels', 'triton_supports']

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128
KERNEL_SIZES = range(3, 14, 2)
# Query tiles and key blocks per axis (the products, 64, are the matmul sizes).
TILE = 8
# Warps per program. Compiled for sm_90 (ptxas resource usage, bfloat16, head dim 32): the
# forward fits 4 warps without spilling; the backward kernels, with more live 64x64 blocks,
# spill at 4 (776 bytes of stack for dq/d(rpb)) and barely at 8.
FORWARD_WARPS = 4
BACKWARD_WARPS = 8
# The oldest Triton the kernels are verified with (interpreter tests, sm_90 compilation). The
# `triton` extra also accepts the older ones that torch < 2.11 pins: those get the tiled version.
MIN_TRITON = (3, 6)


@lru_cache(maxsize=None)
def triton_kernels() -> Optional[ModuleType]:
    """The kernel module, or None where Triton is not installed (or fails to import) or is
    older than ``MIN_TRITON`` (with a warning)."""
    try:
        import triton
        found = triton.__version__
        if tuple(map(int, re.match(r'(\d+)\.(\d+)', found).groups())) < MIN_TRITON:
            warnings.warn(f'dinat_backbone: triton {found} is older than the Triton kernels '
                          f'need ({".".join(map(str, MIN_TRITON))}); CUDA tensors use the '
                          'tiled PyTorch implementation instead.')
            return None
        from . import _triton_kernels
    except ImportError:
        return None
    return _triton_kernels


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def triton_supports(query: torch.Tensor, kernel: Optional[Tuple[int, int]],
                    attn_drop: float = 0.0) -> bool:
    """Whether ``backend='auto'`` may run the kernels: a CUDA tensor of a supported dtype and
    head dim, a supported (normalised) kernel size (None: not known, not checked), no
    attention dropout, and Triton importable and not older than ``MIN_TRITON``."""
    return query.is_cuda and attn_drop == 0.0 and _refusal(query, kernel) is None


def _refusal(query: torch.Tensor, kernel: Optional[Tuple[int, int]]) -> Optional[Exception]:
    """Why the kernels cannot run on ``query`` (the error that forcing them raises), or None."""
    if triton_kernels() is None:
        return RuntimeError("backend='triton' needs the triton package, version "
                            f"{'.'.join(map(str, MIN_TRITON))} or newer; use backend='auto' or "
                            "'torch' without it.")
    if not query.is_cuda and not _interpreting():
        return RuntimeError(f"backend='triton' runs on CUDA tensors, got {query.device=}. "
                            'On the CPU set TRITON_INTERPRET=1 before starting Python to run '
                            "the kernels under Triton's interpreter (slow, for testing), or "
                            "use backend='auto'.")
    if query.dtype not in TRITON_DTYPES:
        return TypeError(f"backend='triton' takes float32, float16 or bfloat16, got "
                         f"{query.dtype}; use backend='torch' for other dtypes.")
    if query.shape[-1] > MAX_HEAD_DIM:
        return ValueError(f"backend='triton' takes head dims <= {MAX_HEAD_DIM}, got "
                          f"{query.shape[-1]}; use backend='torch'.")
    if kernel is not None and any(k not in KERNEL_SIZES for k in kernel):
        return ValueError("backend='triton' takes odd kernel sizes 3..13, got "
                          f"kernel_size={kernel}; use backend='torch'.")
    return None


def _launch_config(query: torch.Tensor, kernel: Tuple[int, int], dilation: Tuple[int, int],
                   scale: float, num_warps: int = BACKWARD_WARPS) -> dict:
    """Arguments shared by the three kernels."""
    _, height, width, heads, dim = query.shape
    return dict(H=height, W=width, HEADS=heads, HEAD_DIM=dim, KERNEL_Y=kernel[0],
                KERNEL_X=kernel[1], DIL_Y=dilation[0], DIL_X=dilation[1],
                qk_scale=scale * math.log2(math.e),
                PRECISION=_float32_precision() if query.dtype == torch.float32 else 'tf32',
                BLOCK_D=max(16, _next_power_of_2(dim)), num_warps=num_warps)


def _float32_precision() -> str:
    """float32 matmuls follow torch's setting: exact ('ieee') under the default 'highest',
    TF32 where ``torch.set_float32_matmul_precision('high'/'medium')`` allows it."""
    return 'ieee' if torch.get_float32_matmul_precision() == 'highest' else 'tf32'


def _first_tensor(*candidates: Optional[torch.Tensor]) -> torch.Tensor:
    """A pointer argument: the kernels read it only when it is given (the others stand in)."""
    return next(t for t in candidates if t is not None)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _grid(query: torch.Tensor, dilation: Tuple[int, int]) -> Tuple[int, int]:
    """(tiles over all dilation groups, batch * heads)."""
    batch, height, width, heads, _ = query.shape
    tiles = [d * _cdiv(_cdiv(length, d), TILE) for length, d in zip((height, width), dilation)]
    return tiles[0] * tiles[1], batch * heads


def _forward(kernels: ModuleType, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             rpb: Optional[torch.Tensor], kernel: Tuple[int, int], dilation: Tuple[int, int],
             scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output and base-2 logsumexp ``[B, H, W, heads]`` of contiguous inputs."""
    out = torch.empty_like(query)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    kernels._na2d_fwd_kernel[_grid(query, dilation)](
        query, key, value, _first_tensor(rpb, query), out, lse,
        HAS_RPB=rpb is not None, TILE_Y=TILE, TILE_X=TILE, KEYS_Y=TILE, KEYS_X=TILE,
        **_launch_config(query, kernel, dilation, scale, FORWARD_WARPS))
    return out, lse


def _backward_query(kernels: ModuleType, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, rpb: Optional[torch.Tensor], grad_out: torch.Tensor,
                    lse: torch.Tensor, delta: torch.Tensor, kernel: Tuple[int, int],
                    dilation: Tuple[int, int], scale: float, deterministic: bool
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """dq, d(rpb) (float32, None without rpb) and, when ``deterministic``, the per-program
    partial sums it was reduced from (``[batch * heads, tiles, RY, RX]``, padded)."""
    grad_query = torch.empty_like(query)
    grid = _grid(query, dilation)
    rpb_y, rpb_x = (max(16, _next_power_of_2(2 * k - 1)) for k in kernel)
    partials = grad_rpb = None
    if rpb is not None and deterministic:
        partials = torch.empty(grid[1], grid[0], rpb_y, rpb_x, dtype=torch.float32,
                               device=query.device)
    elif rpb is not None:
        grad_rpb = torch.zeros(rpb.shape, dtype=torch.float32, device=query.device)
    kernels._na2d_bwd_query_kernel[grid](
        query, key, value, _first_tensor(rpb, query), grad_out, lse, delta, grad_query,
        _first_tensor(partials, grad_rpb, lse), scale=scale, HAS_RPB=rpb is not None,
        DETERMINISTIC=deterministic, RPB_Y=rpb_y, RPB_X=rpb_x, TILE_Y=TILE, TILE_X=TILE,
        KEYS_Y=TILE, KEYS_X=TILE, **_launch_config(query, kernel, dilation, scale))
    if partials is not None:
        heads = query.shape[3]
        # A fixed-order reduction: torch's sum is deterministic for a given shape.
        grad_rpb = partials.view(-1, heads, *partials.shape[1:]).sum((0, 2))
        grad_rpb = grad_rpb[:, :2 * kernel[0] - 1, :2 * kernel[1] - 1]
    return grad_query, grad_rpb, partials


def _backward_key(kernels: ModuleType, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, rpb: Optional[torch.Tensor], grad_out: torch.Tensor,
                  lse: torch.Tensor, delta: torch.Tensor, kernel: Tuple[int, int],
                  dilation: Tuple[int, int], scale: float
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """dk and dv."""
    grad_key, grad_value = torch.empty_like(key), torch.empty_like(value)
    kernels._na2d_bwd_key_kernel[_grid(query, dilation)](
        query, key, value, _first_tensor(rpb, query), grad_out, lse, delta, grad_key,
        grad_value, scale=scale, HAS_RPB=rpb is not None, TILE_Y=TILE, TILE_X=TILE,
        QUERIES_Y=TILE, QUERIES_X=TILE, **_launch_config(query, kernel, dilation, scale))
    return grad_key, grad_value


class _NA2DTriton(torch.autograd.Function):
    """Fused forward; the backward recomputes the probabilities from the logsumexp."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                rpb: Optional[torch.Tensor], kernel: Tuple[int, int],
                dilation: Tuple[int, int], scale: float) -> torch.Tensor:
        kernels = triton_kernels()
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        rpb_c = None if rpb is None else rpb.contiguous()
        out, lse = _forward(kernels, query, key, value, rpb_c, kernel, dilation, scale)
        ctx.save_for_backward(query, key, value, rpb_c, out, lse)
        ctx.config = kernel, dilation, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        kernels = triton_kernels()
        query, key, value, rpb, out, lse = ctx.saved_tensors
        kernel, dilation, scale = ctx.config
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1)
        args = (kernels, query, key, value, rpb, grad_out, lse, delta, kernel, dilation, scale)
        grad_query, grad_rpb, _ = _backward_query(
            *args, deterministic=torch.are_deterministic_algorithms_enabled())
        grad_key, grad_value = _backward_key(*args)
        if grad_rpb is not None:
            grad_rpb = grad_rpb.to(rpb.dtype)
        return grad_query, grad_key, grad_value, grad_rpb, None, None, None


def run_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
               rpb: Optional[torch.Tensor], attn_drop: float) -> torch.Tensor:
    """The Triton kernels on checked arguments (:func:`~._checks.check_na2d_args`); raises
    what :func:`na2d_triton` documents."""
    refusal = _refusal(query, args.kernel)
    if refusal is not None:
        raise refusal
    if attn_drop > 0.0:
        return run_tiled(query, key, value, args, rpb, attn_drop)
    return _NA2DTriton.apply(query, key, value, rpb, args.kernel, args.dilation, args.scale)


def na2d_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kernel_size: IntOrPair, dilation: IntOrPair = 1,
                rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                attn_drop: float = 0.0) -> torch.Tensor:
    """:func:`~dinat_backbone.ops.na2d` with the fused Triton kernels (same arguments).

    ``attn_drop > 0`` runs the tiled implementation (the kernels have no dropout). The
    backward's d(rpb) is deterministic when ``torch.are_deterministic_algorithms_enabled()``.

    Raises:
        RuntimeError: Triton is not installed, or a CPU tensor without ``TRITON_INTERPRET=1``.
        TypeError, ValueError: a dtype, head dim or kernel size the kernels do not take.
    """
    args = check_na2d_args(query, key, value, kernel_size, dilation, rpb, scale)
    return run_triton(query, key, value, args, rpb, attn_drop)
