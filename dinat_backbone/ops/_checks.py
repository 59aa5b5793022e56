"""Argument normalisers and validation for the neighbourhood-attention operator.

:func:`check_na2d_args` is the one check of an ``na2d`` call: the public entry points
(:func:`~dinat_backbone.ops.na2d` and the per-backend ``na2d_*``) call it once and hand its
:class:`NA2DArgs` to the implementations, which do not check again.
"""
import numbers
from typing import Any, NamedTuple, Optional, Tuple, Union

import torch

IntOrPair = Union[int, Tuple[int, int]]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer: Python's or numpy's (``np.int64`` from arrays or
    configs), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def to_pair(value: IntOrPair, name: str) -> Tuple[int, int]:
    """Normalise an int or a 2-tuple of ints to a 2-tuple of Python ints, rejecting anything
    else."""
    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        return (int(value[0]), int(value[1]))
    raise TypeError(f'{name} must be an int or a pair of ints, got {name}={value!r}.')


def check_kernel_size(kernel_size: IntOrPair) -> Tuple[int, int]:
    """The kernel size as a pair of odd ints >= 1."""
    kernel = to_pair(kernel_size, 'kernel_size')
    if any(k < 1 or k % 2 == 0 for k in kernel):
        raise ValueError('Neighbourhood attention needs an odd kernel size >= 1 per axis, '
                         f'got {kernel_size=}.')
    return kernel


def check_dilation(dilation: IntOrPair) -> Tuple[int, int]:
    """The dilation as a pair of ints >= 1."""
    dil = to_pair(dilation, 'dilation')
    if any(d < 1 for d in dil):
        raise ValueError(f'Dilation must be >= 1 per axis, got {dilation=}.')
    return dil


class NA2DArgs(NamedTuple):
    """The normalised arguments of one ``na2d`` call."""
    kernel: Tuple[int, int]
    dilation: Tuple[int, int]
    scale: float


def check_attn_drop(attn_drop: float) -> None:
    """Refuse an attention dropout that is not a real number in [0, 1) (NaN included): the
    implementations test ``attn_drop > 0``, which passes any other value over silently."""
    if not isinstance(attn_drop, numbers.Real) or isinstance(attn_drop, bool):
        raise TypeError(f'attn_drop must be a number in [0, 1), got {attn_drop=!r} '
                        f'({type(attn_drop).__name__}).')
    if not 0.0 <= attn_drop < 1.0:  # False for NaN too
        raise ValueError(f'attn_drop must be a number in [0, 1), got {attn_drop=!r}.')


def check_na2d_args(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    kernel_size: IntOrPair, dilation: IntOrPair, rpb: Optional[torch.Tensor],
                    scale: Optional[float], attn_drop: float = 0.0) -> NA2DArgs:
    """Validate the arguments of :func:`~dinat_backbone.ops.na2d` and normalise them; the
    scale defaults to ``head_dim ** -0.5`` here and nowhere else."""
    kernel, dil = check_kernel_size(kernel_size), check_dilation(dilation)
    check_attn_drop(attn_drop)
    _check_tensors(query, key, value, kernel, dil, rpb)
    return NA2DArgs(kernel, dil, query.shape[-1] ** -0.5 if scale is None else float(scale))


def _check_tensors(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   kernel: Tuple[int, int], dilation: Tuple[int, int],
                   rpb: Optional[torch.Tensor]) -> None:
    """Validate shapes/dtypes of ``[batch, height, width, heads, head_dim]`` inputs."""
    for name, tensor in (('query', query), ('key', key), ('value', value), ('rpb', rpb)):
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(tensor).__name__}.')
    if query.dim() != 5:
        raise ValueError('na2d expects query/key/value of shape [batch, height, width, heads, '
                         f'head_dim], got query.shape={tuple(query.shape)}.')
    if query.shape[3] < 1 or query.shape[4] < 1:
        raise ValueError('na2d needs at least one head and a head_dim >= 1, got '
                         f'query.shape={tuple(query.shape)} (heads={query.shape[3]}, '
                         f'head_dim={query.shape[4]}).')
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError('query, key and value must have the same shape, got '
                         f'{tuple(query.shape)=}, {tuple(key.shape)=}, {tuple(value.shape)=}.')
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError('query, key and value must have the same dtype, got '
                        f'{query.dtype=}, {key.dtype=}, {value.dtype=}.')
    if not query.dtype.is_floating_point:
        raise TypeError('na2d takes floating-point query/key/value (float16, bfloat16, float32, '
                        f'float64), got {query.dtype}.')
    if not (query.device == key.device == value.device):
        raise ValueError('query, key and value must be on the same device, got '
                         f'{query.device=}, {key.device=}, {value.device=}.')
    if query.is_meta:  # no data: every implementation would fail somewhere inside
        raise ValueError('na2d cannot compute on meta tensors (they hold no data); move '
                         "query/key/value to a real device, e.g. 'cpu' or 'cuda'.")
    input_size = tuple(query.shape[1:3])
    for axis, (length, k, d) in enumerate(zip(input_size, kernel, dilation)):
        if length < k * d:
            raise ValueError('The product of kernel size and dilation cannot be larger than the '
                             f'input size (pad the input first); axis {axis}: {input_size=}, '
                             f'kernel_size={kernel}, dilation={dilation}.')
    if rpb is not None:
        heads = query.shape[3]
        expected = (heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1)
        if tuple(rpb.shape) != expected:
            raise ValueError('rpb must have shape [heads, 2*kernel_h-1, 2*kernel_w-1] = '
                             f'{list(expected)}, got rpb.shape={list(rpb.shape)}.')
        if rpb.device != query.device:
            raise ValueError(f'rpb must be on the device of query, got {rpb.device=}, '
                             f'{query.device=}.')
        if not rpb.dtype.is_floating_point:
            raise TypeError(f'rpb must be a floating-point tensor, got {rpb.dtype}.')
