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
tiled implementation instead. The rpb reaches the kernels in float32 whatever its dtype (the
model's is a float32 parameter; its gradient comes back in the rpb's dtype).

Block sizes, warps and pipelining stages are chosen per compiled variant (:func:`kernel_config`)
so that none spills registers on sm_80 or sm_90; ``python -m
dinat_backbone.analysis.kernel_static`` compiles every variant and prints ptxas's figures.
The first eager call of each variant in a process checks it against the tiled implementation
on a small problem and falls back to it, with one warning, on a mismatch (see
:func:`run_triton`; ``DINAT_TRITON_SELF_CHECK=0`` turns the check off).

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
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from ._checks import IntOrPair, NA2DArgs, check_na2d_args
from .tiled import run_tiled

__all__ = ['KernelConfig', 'kernel_config', 'na2d_triton', 'run_triton',
           'triton_kernels', 'triton_supports']

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128
KERNEL_SIZES = range(3, 14, 2)
# Query tiles per axis (the forward and dq kernels; key tiles in the dk/dv kernel). The blocks
# they loop over are set per variant by kernel_config.
TILE = 8
# The oldest Triton the kernels are verified with (interpreter tests, sm_90 compilation). The
# `triton` extra also accepts the older ones that torch < 2.11 pins: those get the tiled version.
MIN_TRITON = (3, 6)


class KernelConfig(NamedTuple):
    """Launch parameters of one compiled variant: warps, software-pipelining stages, the
    register limit per thread and the block constexprs (key or query blocks per axis)."""
    num_warps: int
    num_stages: int
    constants: Dict[str, int]
    # ptxas otherwise caps some float32 variants at 128 registers per thread (aiming at two
    # blocks per SM) and spills; 8 warps x 255 registers fit an SM's 64K.
    maxnreg: int = 255


_DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def kernel_config(kernel: str, dtype: str, precision: str, block_d: int, has_rpb: bool,
                  rpb_size: int = 0) -> KernelConfig:
    """The launch parameters of a compiled variant (``kernel``: 'fwd', 'bwd_query' or
    'bwd_key'; ``dtype``: 'fp32', 'fp16' or 'bf16'), chosen so that no variant spills
    registers on sm_80 or sm_90 (``python -m dinat_backbone.analysis.kernel_static``)."""
    blocks = ('QUERIES_Y', 'QUERIES_X') if kernel == 'bwd_key' else ('KEYS_Y', 'KEYS_X')
    # Measured with ptxas for sm_80 and sm_90 (kernel_static): 8x8 key blocks (64-wide
    # matmuls) where they fit in the registers; float32 holds twice the bytes per block and
    # computes 'ieee' matmuls on CUDA cores, and the d(rpb) one-hot sums add [table, keys]
    # blocks, so those take 4x4 blocks and one pipelining stage (each stage holds a block
    # in flight); the dk/dv kernel, with two accumulators, and head dims over 32 take 4x8.
    if dtype == 'fp32':
        # One exception, measured: the TF32 dk/dv kernel at head dim 64 spills at one stage.
        tf32_key_d64 = kernel == 'bwd_key' and precision == 'tf32' and block_d > 32
        block, stages = (4, 4), (2 if tf32_key_d64 else 1)
    elif kernel == 'bwd_query' and has_rpb:
        block, stages = (4, 4), 1
    elif kernel == 'bwd_key' and has_rpb and block_d > 32:
        block, stages = (4, 4), 2  # 4x8 spills on sm_80
    elif kernel == 'bwd_key' or block_d > 32:
        block, stages = (4, 8), 3
    else:
        block, stages = (TILE, TILE), 3
    return KernelConfig(8, stages, dict(zip(blocks, block)))


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


def rpb_table_size(kernel: Tuple[int, int], query: torch.Tensor) -> Tuple[int, int]:
    """The padded d(rpb) table of the dq/d(rpb) kernel, per axis: a power of two >= 2k-1,
    at least 16, and at least 32 for float32 with head dims over 32, whose 16-wide variants
    spill registers (ptxas for sm_90; the 32-wide ones do not)."""
    floor = 32 if query.dtype == torch.float32 and query.shape[-1] > 32 else 16
    return tuple(max(floor, _next_power_of_2(2 * k - 1)) for k in kernel)


def _launch_config(name: str, query: torch.Tensor, kernel: Tuple[int, int],
                   dilation: Tuple[int, int], scale: float, has_rpb: bool,
                   rpb_size: int = 0) -> dict:
    """Arguments shared by the three kernels, and the variant's launch parameters."""
    _, height, width, heads, dim = query.shape
    precision = _float32_precision() if query.dtype == torch.float32 else 'tf32'
    block_d = max(16, _next_power_of_2(dim))
    config = kernel_config(name, _DTYPE_NAMES[query.dtype], precision, block_d, has_rpb,
                           rpb_size)
    return dict(H=height, W=width, HEADS=heads, HEAD_DIM=dim, KERNEL_Y=kernel[0],
                KERNEL_X=kernel[1], DIL_Y=dilation[0], DIL_X=dilation[1],
                qk_scale=scale * math.log2(math.e), PRECISION=precision, BLOCK_D=block_d,
                num_warps=config.num_warps, num_stages=config.num_stages, maxnreg=config.maxnreg,
                **config.constants)


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
        HAS_RPB=rpb is not None, TILE_Y=TILE, TILE_X=TILE,
        **_launch_config('fwd', query, kernel, dilation, scale, rpb is not None))
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
    rpb_y, rpb_x = rpb_table_size(kernel, query)
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
        **_launch_config('bwd_query', query, kernel, dilation, scale, rpb is not None,
                         max(rpb_y, rpb_x) if rpb is not None else 0))
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
        **_launch_config('bwd_key', query, kernel, dilation, scale, rpb is not None))
    return grad_key, grad_value


class _NA2DTriton(torch.autograd.Function):
    """Fused forward; the backward recomputes the probabilities from the logsumexp."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                rpb: Optional[torch.Tensor], kernel: Tuple[int, int],
                dilation: Tuple[int, int], scale: float) -> torch.Tensor:
        kernels = triton_kernels()
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        # The kernels read the rpb in float32 (a table of heads * (2k-1)^2 values, converted
        # once here): 16-bit bias loads inside the kernels cost registers and spilled.
        rpb_f32 = None if rpb is None else rpb.to(torch.float32).contiguous()
        out, lse = _forward(kernels, query, key, value, rpb_f32, kernel, dilation, scale)
        ctx.save_for_backward(query, key, value, rpb_f32, out, lse)
        ctx.config = kernel, dilation, scale
        ctx.rpb_dtype = None if rpb is None else rpb.dtype
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
            grad_rpb = grad_rpb.to(ctx.rpb_dtype)
        return grad_query, grad_key, grad_value, grad_rpb, None, None, None


# The self-check (see run_triton): per compiled variant, None while unchecked, then whether
# the kernels matched the tiled implementation. Off with DINAT_TRITON_SELF_CHECK=0.
SELF_CHECK_ENV = 'DINAT_TRITON_SELF_CHECK'
_self_checked: Dict[tuple, bool] = {}
# Relative max error (against the float32 tiled implementation, per output and gradient)
# that the self-check accepts: the parity tests' bounds with a margin for the GPU's rounding.
SELF_CHECK_TOLERANCE = {'fp32-ieee': 1e-4, 'fp32-tf32': 2e-2, 'fp16': 1e-2, 'bf16': 5e-2}


def _variant(query: torch.Tensor, rpb: Optional[torch.Tensor],
             kernel: Tuple[int, int]) -> Tuple[tuple, str]:
    """The compiled variant a call runs: a key and a name for messages."""
    dtype = _DTYPE_NAMES[query.dtype]
    if dtype == 'fp32':
        dtype += '-' + _float32_precision()
    block_d = max(16, _next_power_of_2(query.shape[-1]))
    table = rpb_table_size(kernel, query) if rpb is not None else None
    deterministic = rpb is not None and torch.are_deterministic_algorithms_enabled()
    name = f'{dtype} D{block_d} ' + (
        f'rpb table{table[0]}x{table[1]} {"det" if deterministic else "atomic"}'
        if table else 'no-rpb')
    return (query.device, dtype, block_d, table, deterministic), name


def _self_check_allowed(query: torch.Tensor) -> bool:
    """Eager calls only: not while a CUDA graph is captured nor while torch.compile traces
    (deferred to the next eager call), and not when turned off."""
    if os.environ.get(SELF_CHECK_ENV, '1') in ('0', ''):
        return False
    if torch.compiler.is_compiling():
        return False
    return not (query.is_cuda and torch.cuda.is_current_stream_capturing())


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).abs().max()
            / expected.abs().max().clamp_min(1e-30)).item()


def _self_check(query: torch.Tensor, rpb: Optional[torch.Tensor], kernel: Tuple[int, int],
                tolerance: float) -> Optional[str]:
    """Run the kernels on a small problem of the call's variant (dtype, head dim, rpb and its
    table size, deterministic mode) and compare the output and the four gradients with the
    tiled implementation in float32. Dilation (2, 1) on a 36 x 19 map: three tiles per axis
    and group (interior and border tiles), shifted border windows. Returns what differs."""
    gen = torch.Generator(device=query.device).manual_seed(0)
    shape = (1, 36, 19, 1, query.shape[-1])
    inputs = [torch.randn(shape, generator=gen, device=query.device).to(query.dtype)
              for _ in range(3)]
    grad = torch.randn(shape, generator=gen, device=query.device).to(query.dtype)
    if rpb is not None:
        inputs.append(torch.randn(1, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=gen,
                                  device=query.device).to(rpb.dtype))
    args = NA2DArgs(kernel, (2, 1), query.shape[-1] ** -0.5)
    results = []
    with torch.autocast(query.device.type, enabled=False), torch.inference_mode(False), \
            torch.enable_grad():
        for run, dtype in ((_run_kernels, None), (run_tiled, torch.float32)):
            leaves = [t.to(dtype or t.dtype).requires_grad_() for t in inputs]
            rpb_leaf = leaves[3] if rpb is not None else None
            out = run(*leaves[:3], args, rpb_leaf, 0.0)
            results.append([out.detach()] + list(torch.autograd.grad(
                out, leaves, grad.to(out.dtype))))
    names = ('out', 'dq', 'dk', 'dv', 'drpb')
    errors = {name: _relative_error(a, b) for name, a, b in zip(names, *results)}
    bad = {name: error for name, error in errors.items() if not error <= tolerance}
    return ', '.join(f'{name} {error:.2g}' for name, error in bad.items()) or None


def _run_kernels(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
                 rpb: Optional[torch.Tensor], attn_drop: float = 0.0) -> torch.Tensor:
    return _NA2DTriton.apply(query, key, value, rpb, args.kernel, args.dilation, args.scale)


def run_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
               rpb: Optional[torch.Tensor], attn_drop: float) -> torch.Tensor:
    """The Triton kernels on checked arguments (:func:`~._checks.check_na2d_args`); raises
    what :func:`na2d_triton` documents.

    The first eager call of each compiled variant in a process first checks the kernels
    against the tiled implementation on a small problem (a few milliseconds on a GPU); on a
    mismatch it warns once, naming the variant, and that variant runs the tiled
    implementation from then on. ``DINAT_TRITON_SELF_CHECK=0`` turns the check off."""
    refusal = _refusal(query, args.kernel)
    if refusal is not None:
        raise refusal
    if attn_drop > 0.0:
        return run_tiled(query, key, value, args, rpb, attn_drop)
    variant, name = _variant(query, rpb, args.kernel)
    if variant not in _self_checked and _self_check_allowed(query):
        mismatch = _self_check(query, rpb, args.kernel,
                               SELF_CHECK_TOLERANCE[name.split(' ')[0]])
        _self_checked[variant] = mismatch is None
        if mismatch is not None:
            warnings.warn(f'Triton na2d kernels ({name}) differ from the tiled implementation '
                          f'in the self-check ({mismatch}); this variant runs the tiled '
                          'implementation in this process.', RuntimeWarning, stacklevel=2)
    if _self_checked.get(variant) is False:
        return run_tiled(query, key, value, args, rpb, attn_drop)
    return _run_kernels(query, key, value, args, rpb)


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
    args = check_na2d_args(query, key, value, kernel_size, dilation, rpb, scale, attn_drop)
    return run_triton(query, key, value, args, rpb, attn_drop)
