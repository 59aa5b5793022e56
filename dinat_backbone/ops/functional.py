"""2-D (dilated) neighbourhood attention with relative positional bias: :func:`na2d` and the
choice of its backend (:func:`select_backend`).

Semantics (per axis of length ``L``, odd kernel ``k``, dilation ``d``), as in NATTEN <= 0.17:
query ``i`` belongs to dilation group ``g = i % d`` (the sub-grid ``g, g + d, ...`` of length
``Lg = ceil((L - g) / d)``) at position ``p = i // d``. Its window starts at
``s = clamp(p - k // 2, 0, Lg - k)`` inside the group, so windows are shifted inwards at the
borders and every query sees exactly ``k`` keys per axis. The bias for key position ``n`` of the
group is ``rpb[n - p + k - 1]``; 2-D attention is the product of the two axes.

Backends, one module each: NATTEN's fused kernels on CUDA where they apply (no rpb), our fused
Triton kernels on CUDA (:mod:`.triton_na2d`), our compiled CPU kernels (:mod:`.cpu_kernels`),
the tiled pure-PyTorch implementation for everything else (:mod:`.tiled`), and the gather form
for export and tracing (:mod:`.gather`). :func:`na2d` checks its arguments once
(:func:`~._checks.check_na2d_args`) and hands them, normalised, to the backend.
"""
from typing import Optional, Tuple

import torch

from ._checks import IntOrPair, NA2DArgs, check_dilation, check_kernel_size, check_na2d_args
from .cpu_kernels import kernels_built, run_cpu, takes
from .gather import run_gather
from .tiled import DEFAULT_TILE, run_tiled
from .triton_na2d import run_triton, triton_supports

__all__ = ['na2d', 'select_backend']


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


def _groups_fit_one_tile(query: torch.Tensor, dilation: Tuple[int, int]) -> bool:
    """True when every dilation group is at most one tile per axis: then the tiled version
    runs each group as one dense attention of <= 64 keys, faster than the neighbour kernels
    (docs/benchmarks.md). DiNAT's sparse-global layers are usually such (dilation = map / k)."""
    return all(-(-length // d) <= DEFAULT_TILE for length, d in zip(query.shape[1:3], dilation))


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
    if kernel_size is not None:
        kernel = check_kernel_size(kernel_size)
    elif rpb is not None:
        kernel = (rpb.shape[1] // 2 + 1, rpb.shape[2] // 2 + 1)
    else:
        kernel = None  # not known: the Triton kernels' kernel sizes are not checked
    return _select_backend(query, rpb, backend, attn_drop, check_dilation(dilation), kernel)


def _select_backend(query: torch.Tensor, rpb: Optional[torch.Tensor], backend: str,
                    attn_drop: float, dilation: Tuple[int, int],
                    kernel: Optional[Tuple[int, int]]) -> str:
    """:func:`select_backend` on a normalised dilation and kernel size."""
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
    if triton_supports(query, kernel, attn_drop):
        return 'triton'
    if takes(query) and not _groups_fit_one_tile(query, dilation) and kernels_built():
        return 'cpu'
    return 'torch'


def _run_natten(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
                rpb: Optional[torch.Tensor], attn_drop: float) -> torch.Tensor:
    # rpb and attn_drop are None and 0 here: _select_backend refuses them for NATTEN.
    import natten
    return natten.na2d(query, key, value, kernel_size=args.kernel, dilation=args.dilation,
                       scale=args.scale)


_RUN = {'natten': _run_natten, 'triton': run_triton, 'cpu': run_cpu, 'torch': run_tiled}


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
            kernel, dilation < 1, no heads or a head_dim of 0, mismatched shapes, meta
            tensors, or an ``attn_drop`` outside [0, 1) (NaN included).
        TypeError: a kernel size or dilation that is not an int or a pair of ints, inputs
            that are not floating-point tensors, mismatched dtypes, or an ``attn_drop`` that
            is not a number.

    Example:
        >>> q = k = v = torch.randn(2, 32, 40, 4, 16)   # [B, H, W, heads, D]
        >>> na2d(q, k, v, kernel_size=7, dilation=2).shape
        torch.Size([2, 32, 40, 4, 16])
    """
    args = check_na2d_args(query, key, value, kernel_size, dilation, rpb, scale,
                           attn_drop)
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        # Export traces shapes symbolically: the gather form has no size-dependent tiling.
        # torch.jit.trace (ONNX, mmengine's FLOP analysis) records ATen operators, and the
        # gather form's are all it knows: its einsums count as the attention's multiply-adds.
        return run_gather(query, key, value, args, rpb, attn_drop)
    backend = _select_backend(query, rpb, backend, attn_drop, args.dilation, args.kernel)
    return _RUN[backend](query, key, value, args, rpb, attn_drop)
