"""Fused Triton kernels for :func:`~dinat_backbone.ops.na2d` (``backend='triton'``), for GPUs.

Forward: FlashAttention-2 style. A program takes an 8x8 tile of queries of one dilation group
and one (batch, head) and runs an online softmax over the keys of their windows (the tile's
halo, in blocks, masked to each query's window). Interior tiles (all windows centred) add the
rpb from a bias table built once per forward, ``[heads, 64, halo]`` in float32 with the
windows' mask in it, read as dense rows; border tiles gather it by offset. Only the output and
the logsumexp (``[B, H, W, heads]``, float32) are written: the ``k*k`` logits never reach
memory, and memory is ``O(B * H * W * heads * D)``.

Backward, from q, k, v, out and the logsumexp: dq, d(rpb) and ``delta = rowsum(dout * out)``
query-major (the forward's tiling), dk and dv key-major (a tile of keys loops over the queries
that can see it, each masked by its own window, which at the borders is not a window around the
key); interior tiles read the bias table there too. No float atomics touch dq/dk/dv. d(rpb)
is summed per program with two small one-hot matmuls; the per-program tables are then either
added with atomics or, when
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

A forward+backward is four Triton launches (bias table, forward, dq/d(rpb)/delta, dk/dv) and
one torch op (zeroing d(rpb) for the atomics, or reducing the deterministic partial sums). They
run as two operators, ``dinat_na2d::triton_forward`` and ``dinat_na2d::triton_backward``,
registered with ``torch.library.triton_op`` (torch >= 2.6): torch.compile traces the kernels
into its graphs (checked on CPU with fake tensors; ``scripts/gpu_ab_launch_settings.py``
compiles with ``fullgraph=True`` on a GPU), and CUDA graphs can capture them (no host
synchronisation; the self-check waits for an eager call). torch 2.5 has no ``triton_op``:
there they are ``custom_op`` operators, which compiled graphs call as opaque nodes.

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
import importlib.util
import math
import os
import re
import warnings
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.autograd.function import once_differentiable

from ._checks import IntOrPair, NA2DArgs, check_na2d_args
from .library import NAMESPACE
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
    register limit per thread and the constexprs (key or query blocks per axis, whether
    interior tiles read the bias table)."""
    num_warps: int
    num_stages: int
    constants: Dict[str, Union[int, bool]]
    # ptxas otherwise caps some float32 variants at 128 registers per thread (aiming at two
    # blocks per SM) and spills; 8 warps x 255 registers fit an SM's 64K.
    maxnreg: int = 255


_DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def kernel_config(kernel: str, dtype: str, precision: str, block_d: int, has_rpb: bool,
                  rpb_size: int = 0) -> KernelConfig:
    """The launch parameters of a compiled variant (``kernel``: 'fwd', 'bwd_query',
    'bwd_key' or 'rpb_tiles'; ``dtype``: 'fp32', 'fp16' or 'bf16'), chosen so that no variant
    spills registers on sm_80 or sm_90 (``python -m dinat_backbone.analysis.kernel_static``)."""
    if kernel == 'rpb_tiles':  # one row of the bias table per program: no matmuls
        return KernelConfig(4, 1, {})
    blocks = ('QUERIES_Y', 'QUERIES_X') if kernel == 'bwd_key' else ('KEYS_Y', 'KEYS_X')
    # Measured with ptxas for sm_80 and sm_90 (kernel_static): 8x8 key blocks (64-wide
    # matmuls) where they fit in the registers; float32 holds twice the bytes per block and
    # computes 'ieee' matmuls on CUDA cores, and the d(rpb) one-hot sums add [table, keys]
    # blocks, so those take 4x4 blocks and one pipelining stage (each stage holds a block
    # in flight); the dk/dv kernel, with two accumulators, and head dims over 32 take 4x8
    # or 8x4. Exceptions, measured: at head dim 64 the TF32 forward and dk/dv kernels spill at
    # one stage.
    tf32_d64 = dtype == 'fp32' and precision == 'tf32' and block_d > 32
    if dtype == 'fp32':
        block, stages = (4, 4), (3 if tf32_d64 and kernel == 'fwd'
                                 else 2 if tf32_d64 and kernel == 'bwd_key' else 1)
    elif kernel == 'bwd_query' and has_rpb:
        block, stages = (4, 4), 1
    elif kernel == 'bwd_key' and has_rpb:
        block, stages = ((4, 4), 2) if block_d > 32 else ((8, 4), 3)  # 4x8 spills on sm_80
    elif kernel == 'bwd_key' or block_d > 32:
        block, stages = (4, 8), 3
    else:
        block, stages = (TILE, TILE), 3
    # BIAS_TABLE: interior tiles read the bias table, in a second copy of the loop. The TF32
    # backward kernels at head dim 64 spill with that copy at every block size, stage count
    # and warp count tried, so they keep the general loop.
    bias_table = has_rpb and not (tf32_d64 and kernel != 'fwd')
    return KernelConfig(8, stages, dict(zip(blocks, block), BIAS_TABLE=bias_table))


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


def _triton_installed() -> bool:
    """Whether the triton package is there, without importing it."""
    try:
        return importlib.util.find_spec('triton') is not None
    except ValueError:  # sys.modules['triton'] is None: importing it fails
        return False


# torch >= 2.6; torch 2.5 has neither (see _define_op). Without Triton the kernels never run
# (run_triton refuses first), and triton_op, which looks for the kernels, would log that Triton
# is missing at import.
_triton_op = getattr(torch.library, 'triton_op', None) if _triton_installed() else None
_wrap_triton = getattr(torch.library, 'wrap_triton', None)


def _launch(kernel: Any, grid: Tuple[int, ...]) -> Callable:
    """``kernel[grid]``, through ``torch.library.wrap_triton`` where torch has it, so that
    torch.compile records the launch. On torch 2.5 the operators' fake implementations are
    the same functions run on fake tensors, for the outputs' shapes: there nothing is
    launched."""
    if _wrap_triton is not None:
        return _wrap_triton(kernel)[grid]

    def launch(*args: Any, **kwargs: Any) -> None:
        if not any(isinstance(arg, FakeTensor) for arg in args):
            kernel[grid](*args, **kwargs)

    return launch


def _interior_bias(kernels: ModuleType, rpb: torch.Tensor,
                   kernel: Tuple[int, int]) -> torch.Tensor:
    """The interior tiles' bias table ``[heads, TILE * TILE, halo_y, halo_x]`` (float32, base
    2, ``-inf`` outside the windows) of a float32 rpb; the halo is ``TILE + k - 1`` per axis,
    padded to a multiple of 8."""
    halo = [8 * _cdiv(TILE + k - 1, 8) for k in kernel]
    bias = torch.empty(rpb.shape[0], TILE * TILE, *halo, dtype=torch.float32,
                       device=rpb.device)
    config = kernel_config('rpb_tiles', 'fp32', 'ieee', 0, True)
    _launch(kernels._rpb_tiles_kernel, (TILE * TILE, rpb.shape[0]))(
        rpb, bias, kernel[0], kernel[1], TILE_Y=TILE, TILE_X=TILE,
        BLOCK=_next_power_of_2(halo[0] * halo[1]), num_warps=config.num_warps,
        num_stages=config.num_stages, maxnreg=config.maxnreg)
    return bias


def _forward(kernels: ModuleType, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], kernel: Tuple[int, int],
             dilation: Tuple[int, int], scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output and base-2 logsumexp ``[B, H, W, heads]`` of contiguous inputs (``bias``: the
    rpb's :func:`_interior_bias`)."""
    out = torch.empty_like(query)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    _launch(kernels._na2d_fwd_kernel, _grid(query, dilation))(
        query, key, value, _first_tensor(rpb, query), _first_tensor(bias, lse), out, lse,
        HAS_RPB=rpb is not None, TILE_Y=TILE, TILE_X=TILE,
        **_launch_config('fwd', query, kernel, dilation, scale, rpb is not None))
    return out, lse


def _backward_query(kernels: ModuleType, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, rpb: Optional[torch.Tensor],
                    bias: Optional[torch.Tensor], grad_out: torch.Tensor,
                    lse: torch.Tensor, delta: torch.Tensor, kernel: Tuple[int, int],
                    dilation: Tuple[int, int], scale: float, out: torch.Tensor,
                    deterministic: bool
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """dq, d(rpb) (float32, None without rpb) and, when ``deterministic``, the per-program
    partial sums it was reduced from (``[batch * heads, tiles, RY, RX]``, padded). Fills
    ``delta`` (``[B, H, W, heads]`` float32) with ``rowsum(grad_out * out)``."""
    grad_query = torch.empty_like(query)
    grid = _grid(query, dilation)
    rpb_y, rpb_x = rpb_table_size(kernel, query)
    partials = grad_rpb = None
    if rpb is not None and deterministic:
        partials = torch.empty(grid[1], grid[0], rpb_y, rpb_x, dtype=torch.float32,
                               device=query.device)
    elif rpb is not None:
        grad_rpb = torch.zeros(rpb.shape, dtype=torch.float32, device=query.device)
    _launch(kernels._na2d_bwd_query_kernel, grid)(
        query, key, value, _first_tensor(rpb, query), _first_tensor(bias, lse), out, grad_out,
        lse, delta, grad_query,
        _first_tensor(partials, grad_rpb, lse), scale=scale, HAS_RPB=rpb is not None,
        DETERMINISTIC=deterministic, RPB_Y=rpb_y, RPB_X=rpb_x, TILE_Y=TILE, TILE_X=TILE,
        **_launch_config('bwd_query', query, kernel, dilation, scale, rpb is not None,
                         max(rpb_y, rpb_x) if rpb is not None else 0))
    if partials is not None:
        heads = query.shape[3]
        # A fixed-order reduction: torch's sum is deterministic for a given shape. Summing
        # the unpadded part gives a contiguous gradient (autograd would copy a strided one).
        grad_rpb = partials.view(-1, heads, *partials.shape[1:])[
            ..., :2 * kernel[0] - 1, :2 * kernel[1] - 1].sum((0, 2))
    return grad_query, grad_rpb, partials


def _backward_key(kernels: ModuleType, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, rpb: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], grad_out: torch.Tensor,
                  lse: torch.Tensor, delta: torch.Tensor, kernel: Tuple[int, int],
                  dilation: Tuple[int, int], scale: float
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """dk and dv (``delta`` as :func:`_backward_query` filled it)."""
    grad_key, grad_value = torch.empty_like(key), torch.empty_like(value)
    _launch(kernels._na2d_bwd_key_kernel, _grid(query, dilation))(
        query, key, value, _first_tensor(rpb, query), _first_tensor(bias, lse), grad_out, lse,
        delta, grad_key,
        grad_value, scale=scale, HAS_RPB=rpb is not None, TILE_Y=TILE, TILE_X=TILE,
        **_launch_config('bwd_key', query, kernel, dilation, scale, rpb is not None))
    return grad_key, grad_value


def _forward_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                rpb: Optional[torch.Tensor], kernel: List[int], dilation: List[int],
                scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dinat_na2d::triton_forward``: output, base-2 logsumexp and the interior bias table
    (empty without rpb) of contiguous inputs and a contiguous float32 rpb."""
    kernels = triton_kernels()
    kernel, dilation = tuple(kernel), tuple(dilation)
    bias = None if rpb is None else _interior_bias(kernels, rpb, kernel)
    out, lse = _forward(kernels, query, key, value, rpb, bias, kernel, dilation, scale)
    return out, lse, lse.new_empty(0) if bias is None else bias


def _backward_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 rpb: Optional[torch.Tensor], bias: Optional[torch.Tensor], out: torch.Tensor,
                 lse: torch.Tensor, grad_out: torch.Tensor, kernel: List[int],
                 dilation: List[int], scale: float, deterministic: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dinat_na2d::triton_backward``: dq, dk, dv and d(rpb) (float32; empty without rpb),
    probabilities recomputed from the logsumexp."""
    kernels = triton_kernels()
    kernel, dilation = tuple(kernel), tuple(dilation)
    delta = torch.empty_like(lse)
    args = (kernels, query, key, value, rpb, bias, grad_out, lse, delta, kernel, dilation,
            scale)
    grad_query, grad_rpb, _ = _backward_query(*args, out=out, deterministic=deterministic)
    grad_key, grad_value = _backward_key(*args)
    return (grad_query, grad_key, grad_value,
            lse.new_empty(0) if grad_rpb is None else grad_rpb)


def _define_op(name: str, fn: Callable) -> Callable:
    """``fn`` as the operator ``dinat_na2d::<name>``: with ``torch.library.triton_op`` (torch
    >= 2.6), whose kernels torch.compile traces into its graphs (Inductor schedules them);
    with ``custom_op`` on torch 2.5 (or without Triton), an opaque operator in compiled graphs,
    whose fake implementation is ``fn`` itself launching nothing (see :func:`_launch`)."""
    if _triton_op is not None:
        return _triton_op(f'{NAMESPACE}::{name}', fn, mutates_args=())
    op = torch.library.custom_op(f'{NAMESPACE}::{name}', fn, mutates_args=())
    op.register_fake(fn)
    return op


_triton_forward = _define_op('triton_forward', _forward_op)
_triton_backward = _define_op('triton_backward', _backward_op)


def _save_for_backward(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]
                       ) -> None:
    query, key, value, rpb, kernel, dilation, scale = inputs
    out, lse, bias = output
    ctx.save_for_backward(query, key, value, rpb, None if rpb is None else bias, out, lse)
    ctx.config = kernel, dilation, scale
    # Only the output has a gradient: autograd would otherwise fill zeros for the others.
    ctx.mark_non_differentiable(lse, bias)
    ctx.set_materialize_grads(False)


@once_differentiable  # the backward operator has no derivative of its own
def _triton_forward_backward(ctx: Any, grad_out: torch.Tensor, *unused: Any
                             ) -> Tuple[Optional[torch.Tensor], ...]:
    query, key, value, rpb, bias, out, lse = ctx.saved_tensors
    grad_query, grad_key, grad_value, grad_rpb = _triton_backward(
        query, key, value, rpb, bias, out, lse, grad_out.contiguous(), *ctx.config,
        torch.are_deterministic_algorithms_enabled())
    return (grad_query, grad_key, grad_value, None if rpb is None else grad_rpb,
            None, None, None)


_triton_forward.register_autograd(_triton_forward_backward, setup_context=_save_for_backward)


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
    tiled implementation in float32. Dilation (2, 1), groups of ``L = 8 * ceil(k / 8) + 8 + k``
    per axis: the tile at ``8 * ceil(k / 8)`` is interior for every kernel (the bias table),
    the tiles around it are border tiles with shifted windows. Returns what differs."""
    gen = torch.Generator(device=query.device).manual_seed(0)
    length = [TILE * _cdiv(k, TILE) + TILE + k for k in kernel]
    shape = (1, 2 * length[0], length[1], 1, query.shape[-1])
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
    # The kernels read the rpb in float32 (a table of heads * (2k-1)^2 values, converted once
    # here; autograd converts its gradient back): 16-bit bias loads inside the kernels cost
    # registers and spilled.
    out, _, _ = _triton_forward(query.contiguous(), key.contiguous(), value.contiguous(),
                                None if rpb is None else rpb.to(torch.float32).contiguous(),
                                list(args.kernel), list(args.dilation), args.scale)
    return out


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
