"""Compiled CPU kernels for :func:`~dinat_backbone.ops.na2d` (``backend='cpu'``).

The tiled PyTorch implementation pays for its dense tiles: a tile of 8x8 queries attends to a
14x14 halo, 4x the logits of the 7x7 neighbourhood, plus gathers in and out of the tiles
(docs/benchmarks.md). These kernels (``csrc/na2d_cpu.cpp``) compute exactly the ``k*k``
neighbours of each query, straight from the heads-last ``[B, H, W, heads, D]`` layout, so
nothing is gathered or permuted. As in NATTEN <= 0.17, attention is three steps: the logits of
the neighbours with the rpb added (``[B, H, W, heads, kh*kw]``), softmax and dropout in
PyTorch, and the weighted sum of the values; memory stays ``O(H * W * heads * kh*kw)``.
:func:`~dinat_backbone.ops.select_backend` says where ``na2d`` uses them.

The kernels are compiled by the set-up step (``python -m dinat_backbone.ops.build``) or else on
first use (about 20 s, once per source and toolchain; needs a C++ compiler and ninja), into a
cache shared by checkouts and environments (:mod:`.build`). If that fails, :func:`cpu_kernels`
warns once and returns None, and ``na2d`` uses the tiled implementation.
"""
import platform
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch

from . import library  # noqa: F401  (defines the operators whose CPU kernels are built here)
from ._checks import IntOrPair, NA2DArgs, check_na2d_args
from ._softmax import attention_weights
from .windows import AxisNeighbours, axis_neighbours

__all__ = ['cpu_kernels', 'kernels_built', 'na2d_cpu', 'run_cpu', 'takes']

SOURCE = Path(__file__).parent / 'csrc' / 'na2d_cpu.cpp'
CPU_DTYPES = (torch.float32, torch.float64)


def takes(tensor: torch.Tensor) -> bool:
    """Whether the kernels handle this tensor's device and dtype (CPU, float32/float64)."""
    return tensor.device.type == 'cpu' and tensor.dtype in CPU_DTYPES


@lru_cache(maxsize=None)
def cpu_kernels() -> Optional[Any]:
    """The compiled kernels (``torch.ops.dinat_na2d``), building them if needed
    (:func:`~dinat_backbone.ops.build.load_extension`); None if the build fails (with a
    warning naming the error)."""
    # imported here, not at the top: `python -m dinat_backbone.ops.build` must find that module
    # not yet imported by `dinat_backbone.ops`
    from .build import load_extension
    flags = ['-O3', '-fopenmp'] + (['-march=native'] if platform.machine() == 'x86_64' else [])
    try:
        load_extension('dinat_na2d_cpu', [SOURCE], cflags=flags, ldflags=['-fopenmp'])
    except Exception as err:  # no compiler or ninja, unwritable cache, failed build
        warnings.warn('dinat_backbone: could not build the CPU neighbourhood-attention kernels '
                      f'({type(err).__name__}: {err}); using the slower tiled PyTorch '
                      'implementation instead.')
        return None
    return torch.ops.dinat_na2d


@torch.compiler.assume_constant_result
def kernels_built() -> bool:
    """Whether the CPU kernels are available (building them if needed). ``torch.compile``
    evaluates it once, while tracing, instead of tracing the build."""
    return cpu_kernels() is not None


@torch.compiler.assume_constant_result
def _tables(length: int, kernel: int, dilation: int) -> AxisNeighbours:
    # torch.compile takes the tables as constants of its graph, as it does the tiled plan.
    return _cached_tables(length, kernel, dilation)


@lru_cache(maxsize=64)
def _cached_tables(length: int, kernel: int, dilation: int) -> AxisNeighbours:
    keys, bias = axis_neighbours(length, kernel, dilation, torch.device('cpu'))
    return AxisNeighbours(keys.contiguous(), bias.contiguous())


def run_cpu(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: NA2DArgs,
            rpb: Optional[torch.Tensor], attn_drop: float) -> torch.Tensor:
    """The CPU kernels on checked arguments (:func:`~._checks.check_na2d_args`).

    Raises:
        TypeError: not a float32 or float64 CPU tensor.
        RuntimeError: the kernels could not be built.
    """
    if not takes(query):
        raise TypeError('The CPU kernels take float32 or float64 CPU tensors, got '
                        f'{query.dtype} on {query.device}.')
    if not kernels_built():
        raise RuntimeError('The CPU neighbourhood-attention kernels could not be built; '
                           "see the warning above, or use backend='torch'.")
    (kernel_h, kernel_w), (dil_h, dil_w) = args.kernel, args.dilation
    rows = _tables(query.shape[1], kernel_h, dil_h)
    cols = _tables(query.shape[2], kernel_w, dil_w)
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))

    if rpb is not None:
        rpb = rpb.to(query.dtype)
    ops = torch.ops.dinat_na2d  # differentiable: see .library
    logits = ops.neighbour_dot(query, key, rows.keys, cols.keys, args.scale, rpb, rows.bias,
                               cols.bias)  # [B, H, W, heads, k*k]
    attn = attention_weights(logits, query.dtype, attn_drop)
    return ops.neighbour_weighted_sum(attn.contiguous(), value, rows.keys, cols.keys, 1.0)


def na2d_cpu(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             kernel_size: IntOrPair, dilation: IntOrPair = 1,
             rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
             attn_drop: float = 0.0) -> torch.Tensor:
    """:func:`~dinat_backbone.ops.na2d` on the compiled CPU kernels (same arguments); float32
    or float64 CPU tensors. Raises RuntimeError if the kernels could not be built."""
    args = check_na2d_args(query, key, value, kernel_size, dilation, rpb, scale,
                           attn_drop)
    return run_cpu(query, key, value, args, rpb, attn_drop)
