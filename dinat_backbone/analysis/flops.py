"""FLOP counting with mmengine's :class:`~mmengine.analysis.FlopAnalyzer` that counts
neighbourhood attention at its nominal cost.

mmengine (like fvcore, whose convention it keeps: one multiply-add counts as one FLOP) traces
the model with ``torch.jit.trace`` and counts each ATen operator it knows. Traced,
:func:`~dinat_backbone.ops.na2d` runs its gather form, whose two einsums mmengine counts as
the attention's multiply-adds, so upstream tools (mmseg's and mmdet's ``get_flops.py``) count
DiNAT with no handle of ours; but mmengine reads einsum counts from numpy's ``einsum_path``
report, rounded to 4 significant digits. :func:`flop_analyzer` counts exactly: it traces the
model with every :class:`~dinat_backbone.models.NeighborhoodAttention2D` calling
:func:`~dinat_backbone.ops.na2d` through one opaque operator (their ``attention_op``),
``dinat_backbone::na2d_counted``, and counts that operator as :func:`na2d_flops`:
``2 * B * heads * H * W * kh * kw * head_dim`` (QK and AV), the attention appearing under its
own name in ``by_operator()``. This is the count that Swin's window attention gets from the
same analysis (``aten::matmul``: ``2 * B * heads * H * W * w * w * head_dim`` on its
window-padded map), so the two compare fairly. Linear, convolution and norm layers are counted
by mmengine's own handlers; softmax, bias additions and activations count zero, for every model
alike.

:func:`config_flop_analyzer` does this for the whole model of an mmseg/mmdet config (what
``tools/get_flops.py`` prints).
"""
import copy
import importlib
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape

from ..models import NeighborhoodAttention2D
from ..ops import na2d
from ..ops._checks import IntOrPair, check_dilation, check_kernel_size

__all__ = ['NA2D_COUNTED_OP', 'na2d_flops', 'counted_na2d', 'flop_analyzer',
           'config_flop_analyzer']

NA2D_COUNTED_OP = 'dinat_backbone::na2d_counted'


def na2d_flops(batch: int, height: int, width: int, heads: int, head_dim: int,
               kernel_size: IntOrPair) -> int:
    """Multiply-adds of (dilated) neighbourhood attention: ``2 * B * heads * H * W * kh * kw * D``.

    Each query takes a dot product with its ``kh * kw`` keys (QK) and sums as many values
    (AV); dilation changes which keys, not how many.
    """
    kh, kw = check_kernel_size(kernel_size)
    return 2 * batch * heads * height * width * kh * kw * head_dim


@torch.library.custom_op(NA2D_COUNTED_OP, mutates_args=())
def _na2d_counted(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_h: int,
                  kernel_w: int, dilation_h: int, dilation_w: int, rpb: Optional[torch.Tensor],
                  scale: float, attn_drop: float) -> torch.Tensor:
    # Traced as a single node: its kernel sizes are constant inputs the FLOP handle reads.
    return na2d(query, key, value, (kernel_h, kernel_w), (dilation_h, dilation_w), rpb=rpb,
                scale=scale, attn_drop=attn_drop)


def _na2d_through_counted_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             kernel_size: IntOrPair, dilation: IntOrPair = 1,
                             rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                             attn_drop: float = 0.0) -> torch.Tensor:
    kh, kw = check_kernel_size(kernel_size)
    dh, dw = check_dilation(dilation)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    return _na2d_counted(query, key, value, kh, kw, dh, dw, rpb, scale, attn_drop)


def _na2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    batch, height, width, heads, head_dim = get_shape(inputs[0])
    kernel = (inputs[3].toIValue(), inputs[4].toIValue())
    return na2d_flops(batch, height, width, heads, head_dim, kernel)


@contextmanager
def counted_na2d(model: nn.Module) -> Iterator[None]:
    """Within the context, the attention layers of ``model`` call ``na2d`` through
    ``dinat_backbone::na2d_counted`` (their ``attention_op``; other models are untouched).

    Same results (forward only: the counted operator has no autograd formula); only the traced
    graph differs, showing one node per attention call instead of the operator's internals.
    """
    layers = [m for m in model.modules() if isinstance(m, NeighborhoodAttention2D)]
    originals = [layer.attention_op for layer in layers]
    for layer in layers:
        layer.attention_op = _na2d_through_counted_op
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.attention_op = original


def flop_analyzer(model: nn.Module,
                  inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> FlopAnalyzer:
    """mmengine's :class:`FlopAnalyzer` for ``model(*inputs)``, neighbourhood attention counted
    as :func:`na2d_flops`.

    The model is traced here, under ``torch.no_grad`` and :func:`counted_na2d`, and the
    analyzer keeps the result: read it with ``total()``, ``by_operator()`` (the attention
    appears as ``na2d_counted``), ``by_module()``. Changing its op handles afterwards would
    trace again, outside the context, and count the gather form's einsums instead.
    mmengine's warnings about unsupported (zero-count) operators are turned off.

    Example:
        >>> from dinat_backbone import DiNAT
        >>> model = DiNAT('tiny').eval()
        >>> round(flop_analyzer(model, torch.randn(1, 3, 224, 224)).total() / 1e9, 1)
        4.3
    """
    inputs: Tuple[torch.Tensor, ...] = (inputs, ) if isinstance(inputs, torch.Tensor) \
        else tuple(inputs)
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(NA2D_COUNTED_OP, _na2d_flop_jit)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    with counted_na2d(model), torch.no_grad():
        analyzer.total()
    return analyzer


class _TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-input module, for tracing."""

    def __init__(self, model: nn.Module, data_samples: List[Any]) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor) -> Any:
        return self.model(inputs, self.data_samples, mode='tensor')


def config_flop_analyzer(cfg: Any, shape: Tuple[int, int]) -> Tuple[nn.Module, FlopAnalyzer]:
    """The model of an mmseg or mmdet config (``default_scope``) and :func:`flop_analyzer` of
    one ``3 x H x W`` image (``shape = (H, W)``) through it, as upstream ``get_flops.py`` runs it:
    the model's data preprocessor, then ``mode='tensor'`` (a segmentor's decode head, not its
    auxiliary head; a detector's RPN and RoI heads). Built without weights (FLOPs do not
    depend on them); SyncBN becomes BN, so no process group is needed.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    scope = cfg.get('default_scope', 'mmseg')
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    elif scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    else:
        raise ValueError(f"config's default_scope must be 'mmseg' or 'mmdet', got {scope!r}")
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = revert_sync_batchnorm(registry.build(copy.deepcopy(cfg.model))).eval()
    meta = dict(ori_shape=tuple(shape), img_shape=tuple(shape), pad_shape=tuple(shape),
                scale_factor=(1.0, 1.0))
    data = model.data_preprocessor(
        dict(inputs=[torch.zeros(3, *shape)], data_samples=[Sample(metainfo=meta)]))
    return model, flop_analyzer(_TensorForward(model, data['data_samples']), data['inputs'])
