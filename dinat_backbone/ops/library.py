"""The ``dinat_na2d`` operators: schemas, fake (meta) implementations and derivatives.

Neighbourhood attention runs as two differentiable steps (see :mod:`.cpu_kernels`), on four
kernels; ``q`` is a query, ``n`` one of its neighbours, the tables say which key (``nbr_*``)
and which rpb entry (``bias_*``) each neighbour is, per axis (``[L, k]`` int64,
:func:`~dinat_backbone.ops.windows.axis_neighbours`):

- ``neighbour_dot``: ``out[q, n] = scale * <x[q], y[nbr(q, n)]> (+ rpb[bias(q, n)])``;
- ``neighbour_weighted_sum``: ``out[q] = scale * sum_n w[q, n] * y[nbr(q, n)]``;
- ``neighbour_scatter``: ``out[p] = scale * sum_{q, n: nbr(q, n) = p} w[q, n] * z[q]``;
- ``rpb_grad``: ``out[r] = sum_{q, n: bias(q, n) = r} g[q, n]``.

They are defined here, independently of any kernel, so that ``torch.compile`` traces them as
single graph nodes (their fake implementations give the output shapes) and autograd
differentiates the first two with the other kernels. A backend only registers its kernels:
the compiled CPU ones with ``TORCH_LIBRARY_IMPL(dinat_na2d, CPU, m)`` (``csrc/na2d_cpu.cpp``),
GPU ones with ``torch.library.register_kernel('dinat_na2d::<name>', 'cuda', fn)``; a backend
with other steps (a fused kernel) defines its operators here the same way. The derivatives
are first-order only (``once_differentiable``): differentiating them again raises.
"""
from typing import Any, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ['NAMESPACE', 'OPERATORS']

NAMESPACE = 'dinat_na2d'
_SCHEMAS = {
    'neighbour_dot': '(Tensor x, Tensor y, Tensor nbr_h, Tensor nbr_w, float scale, '
                     'Tensor? rpb, Tensor? bias_h, Tensor? bias_w) -> Tensor',
    'neighbour_weighted_sum': '(Tensor w, Tensor y, Tensor nbr_h, Tensor nbr_w, float scale) '
                              '-> Tensor',
    'neighbour_scatter': '(Tensor w, Tensor z, Tensor nbr_h, Tensor nbr_w, float scale) '
                         '-> Tensor',
    'rpb_grad': '(Tensor grad, Tensor bias_h, Tensor bias_w) -> Tensor',
}
OPERATORS = tuple(f'{NAMESPACE}::{name}' for name in _SCHEMAS)

_library = torch.library.Library(NAMESPACE, 'DEF')
for _name, _schema in _SCHEMAS.items():
    _library.define(_name + _schema)
_ops = getattr(torch.ops, NAMESPACE)


# ------------------------------------------------------------------ fake (meta) implementations
@torch.library.register_fake(f'{NAMESPACE}::neighbour_dot', lib=_library)
def _neighbour_dot_fake(x: torch.Tensor, y: torch.Tensor, nbr_h: torch.Tensor,
                        nbr_w: torch.Tensor, scale: float, rpb: Optional[torch.Tensor],
                        bias_h: Optional[torch.Tensor],
                        bias_w: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty((*x.shape[:4], nbr_h.shape[1] * nbr_w.shape[1]))


@torch.library.register_fake(f'{NAMESPACE}::neighbour_weighted_sum', lib=_library)
def _neighbour_weighted_sum_fake(w: torch.Tensor, y: torch.Tensor, nbr_h: torch.Tensor,
                                 nbr_w: torch.Tensor, scale: float) -> torch.Tensor:
    return y.new_empty(y.shape)


@torch.library.register_fake(f'{NAMESPACE}::neighbour_scatter', lib=_library)
def _neighbour_scatter_fake(w: torch.Tensor, z: torch.Tensor, nbr_h: torch.Tensor,
                            nbr_w: torch.Tensor, scale: float) -> torch.Tensor:
    return z.new_empty(z.shape)


@torch.library.register_fake(f'{NAMESPACE}::rpb_grad', lib=_library)
def _rpb_grad_fake(grad: torch.Tensor, bias_h: torch.Tensor,
                   bias_w: torch.Tensor) -> torch.Tensor:
    return grad.new_empty((grad.shape[3], 2 * bias_h.shape[1] - 1, 2 * bias_w.shape[1] - 1))


# ------------------------------------------------------------------------------- derivatives
def _save_operands(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
    # Both start (first operand, second operand, nbr_h, nbr_w, scale); neighbour_dot ends
    # (rpb, bias_h, bias_w), of which its backward needs the tables.
    ctx.save_for_backward(*inputs[:4], *inputs[6:])
    ctx.scale = inputs[4]


@once_differentiable  # the kernels have no derivatives of their own
def _neighbour_dot_backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    x, y, nbr_h, nbr_w, bias_h, bias_w = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad_y = grad_rpb = None
    if ctx.needs_input_grad[0]:
        grad_x = _ops.neighbour_weighted_sum(grad, y, nbr_h, nbr_w, ctx.scale)
    if ctx.needs_input_grad[1]:
        grad_y = _ops.neighbour_scatter(grad, x, nbr_h, nbr_w, ctx.scale)
    if ctx.needs_input_grad[5]:
        grad_rpb = _ops.rpb_grad(grad, bias_h, bias_w)
    return grad_x, grad_y, None, None, None, grad_rpb, None, None


@once_differentiable  # the kernels have no derivatives of their own
def _neighbour_weighted_sum_backward(ctx: Any, grad: torch.Tensor
                                     ) -> Tuple[Optional[torch.Tensor], ...]:
    w, y, nbr_h, nbr_w = ctx.saved_tensors
    if grad.stride(-1) != 1:
        grad = grad.contiguous()
    grad_w = grad_y = None
    if ctx.needs_input_grad[0]:
        grad_w = _ops.neighbour_dot(grad, y, nbr_h, nbr_w, ctx.scale, None, None, None)
    if ctx.needs_input_grad[1]:
        grad_y = _ops.neighbour_scatter(w, grad, nbr_h, nbr_w, ctx.scale)
    return grad_w, grad_y, None, None, None


torch.library.register_autograd(f'{NAMESPACE}::neighbour_dot', _neighbour_dot_backward,
                                setup_context=_save_operands, lib=_library)
torch.library.register_autograd(f'{NAMESPACE}::neighbour_weighted_sum',
                                _neighbour_weighted_sum_backward,
                                setup_context=_save_operands, lib=_library)
