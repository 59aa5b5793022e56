"""torch.compile, torch.jit.trace and FLOP counting with the compiled CPU kernels (issue 12):
the ``dinat_na2d`` operators pass torch's operator checks, a compiled backbone keeps them in its
graphs (forward and backward) with no graph break and matches eager code, and traced code
(``torch.jit.trace``, mmengine's FLOP analysis as upstream ``get_flops.py`` runs it) uses the
gather form."""
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
from torch._dynamo.backends.common import aot_autograd

from dinat_backbone import DiNAT
from dinat_backbone.ops import select_backend
from dinat_backbone.ops.cpu_kernels import _tables, cpu_kernels
from dinat_backbone.ops.library import OPERATORS

from helpers import REPO_ROOT

# A tiny backbone on a 64 px image: level 0 (16x16, dilation 1) runs on the CPU kernels, the
# smaller levels on the tiled implementation (each dilation group fits one tile), and level 3
# (2x2 < kernel) pads: every branch of the attention layer is in the graph.
ARCH = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
IMAGE = (1, 3, 64, 64)


@pytest.fixture(scope='module', autouse=True)
def kernels():
    assert cpu_kernels() is not None, 'the CPU kernels must build on the test machine'


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    model = DiNAT(ARCH, kernel_size=3, dilations=[[1], [1], [1], [1]], drop_path_rate=0.)
    return model.double().eval()


def _loss_and_grads(model: Callable, parameters: List[torch.Tensor], x: torch.Tensor
                    ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
    """The outputs of ``model(x)``, and the gradients of x and ``parameters`` of a loss."""
    x = x.clone().requires_grad_()
    outs = model(x)
    outs = (outs, ) if isinstance(outs, torch.Tensor) else outs
    # Fixed random weights per output: every output element's gradient path is exercised.
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i),
                           dtype=o.dtype) for i, o in enumerate(outs)]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, [x, *parameters])
    return tuple(o.detach() for o in outs), grads


def _recording_backend(graphs: Dict[str, List[torch.fx.GraphModule]]):
    """aot_eager that keeps the forward and backward graphs it is given."""
    def compiler(kind: str):
        def compile_graph(gm: torch.fx.GraphModule, example_inputs):
            graphs[kind].append(gm)
            return gm.forward
        return compile_graph
    return aot_autograd(fw_compiler=compiler('forward'), bw_compiler=compiler('backward'))


def _targets(graphs: List[torch.fx.GraphModule]) -> set:
    return {str(node.target) for gm in graphs for node in gm.graph.nodes
            if node.op == 'call_function'}


# ------------------------------------------------------------------------------ the operators
def _operator_cases() -> Dict[str, tuple]:
    torch.manual_seed(0)
    rows, cols = _tables(9, 3, 2), _tables(10, 3, 1)
    features = [torch.randn(1, 9, 10, 2, 4, dtype=torch.float64, requires_grad=True)
                for _ in range(2)]
    weights = torch.randn(1, 9, 10, 2, 9, dtype=torch.float64, requires_grad=True)
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    x, y = features
    return {
        'neighbour_dot': (x, y, rows.keys, cols.keys, 0.5, rpb, rows.bias, cols.bias),
        'neighbour_dot without rpb': (x, y, rows.keys, cols.keys, 0.5, None, None, None),
        'neighbour_weighted_sum': (weights, y, rows.keys, cols.keys, 0.5),
        # The other two only run in backward passes: first-order, no autograd of their own.
        'neighbour_scatter': (weights.detach(), x.detach(), rows.keys, cols.keys, 0.5),
        'rpb_grad': (weights.detach(), rows.bias, cols.bias),
    }


@pytest.mark.parametrize('case', list(_operator_cases()))
def test_operator_passes_opcheck(case):
    """Schema, fake (meta) implementation against the kernel, autograd registration, and
    AOT dispatch with dynamic shapes (gradients compared with eager autograd)."""
    args = _operator_cases()[case]
    name = case.split()[0]
    assert f'dinat_na2d::{name}' in OPERATORS
    result = torch.library.opcheck(getattr(torch.ops.dinat_na2d, name).default, args)
    assert set(result.values()) == {'SUCCESS'}, result


# ------------------------------------------------------------------------------ torch.compile
def test_compiled_backbone_matches_eager_with_our_operators_in_its_graphs():
    model = _backbone()
    x = torch.randn(IMAGE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    level0 = torch.empty(1, 16, 16, 1, 16, dtype=torch.float64)
    assert select_backend(level0, model.levels[0].blocks[0].attn.rpb) == 'cpu'

    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    graphs = {'forward': [], 'backward': []}
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=_recording_backend(graphs), fullgraph=True)
    parameters = list(model.parameters())
    outs, grads = _loss_and_grads(compiled, parameters, x)
    expected_outs, expected_grads = _loss_and_grads(model, parameters, x)

    for got, expected in zip(outs + grads, expected_outs + expected_grads):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # The CPU kernels themselves, not a rerouting to the tiled version under compile.
    forward, backward = _targets(graphs['forward']), _targets(graphs['backward'])
    assert {'dinat_na2d.neighbour_dot.default',
            'dinat_na2d.neighbour_weighted_sum.default'} <= forward
    assert {f'{op.replace("::", ".")}.default' for op in OPERATORS} <= backward


def test_inductor_compiled_attention_matches_eager():
    """Inductor generates C++ around our operators (and their fake shapes must agree with
    what the kernels return, or the generated code reads the wrong memory)."""
    from dinat_backbone.models import NeighborhoodAttention2D
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(16, 2, kernel_size=3, dilation=2).double()
    x = torch.randn(1, 18, 20, 16, dtype=torch.float64)
    assert select_backend(x.view(1, 18, 20, 2, 8), layer.rpb, dilation=2) == 'cpu'
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    parameters = list(layer.parameters())
    outs, grads = _loss_and_grads(compiled, parameters, x)
    expected_outs, expected_grads = _loss_and_grads(layer, parameters, x)
    for got, expected in zip(outs + grads, expected_outs + expected_grads):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ torch.jit.trace and FLOPs
def test_jit_traced_backbone_matches_eager():
    """The trace records the gather form (ATen operators only) and stays valid for other
    inputs of the traced size; eager code runs the CPU kernels and the tiled version."""
    model = _backbone()
    example, other = (torch.randn(IMAGE, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(seed))
                      for seed in (1, 2))
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        for got, expected in zip(traced(other), model(other)):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert 'aten::einsum' in kinds
    assert not any(kind.startswith('dinat_na2d::') for kind in kinds)


def test_flop_analysis_needs_the_gather_form():
    """What upstream counting would see without it: the kernels as opaque, uncounted nodes."""
    from mmengine.analysis import FlopAnalyzer
    from dinat_backbone.ops import na2d_cpu

    class KernelsOnly(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return na2d_cpu(q, q, q, 3)

    analyzer = FlopAnalyzer(KernelsOnly(), (torch.randn(1, 12, 12, 2, 8), ))
    analyzer.unsupported_ops_warnings(False)
    assert analyzer.total() == 0
    assert 'dinat_na2d::neighbour_dot' in analyzer.unsupported_ops()


def test_upstream_get_flops_counts_the_sample_upernet():
    """mmseg's tools/analysis_tools/get_flops.py, step by step (with ``inputs`` only: upstream
    also passes ``input_shape``, which mmengine rejects), against dinat_backbone.analysis.flops."""
    import dinat_backbone  # noqa: F401  (registers DiNAT)
    from mmengine.analysis import get_model_complexity_info
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from dinat_backbone.analysis.flops import flop_analyzer

    cfg = Config.fromfile(REPO_ROOT / 'configs' / 'segmentation' / 'sample'
                          / 'upernet_dinat_sample_ade20k.py')
    init_default_scope(cfg.get('scope', 'mmseg'))
    input_shape = (3, 64, 64)
    model = MODELS.build(cfg.model)
    model.auxiliary_head = None
    model = revert_sync_batchnorm(model)
    meta = dict(ori_shape=input_shape[-2:], pad_shape=input_shape[-2:])
    data = model.data_preprocessor({'inputs': [torch.rand(input_shape)],
                                    'data_samples': [SegDataSample(metainfo=meta)]})
    model.eval()
    upstream = get_model_complexity_info(model, inputs=data['inputs'], show_table=False,
                                         show_arch=False)['flops']

    ours = flop_analyzer(model, data['inputs'])
    assert upstream == pytest.approx(ours.total(), rel=0.01)
    # The attention alone (a few % of this model's FLOPs), the rest being counted alike:
    # mmengine's einsum count of the gather form against the nominal
    # 2 * B * heads * H * W * k*k * head_dim of every layer. mmengine reads einsum counts from
    # numpy's einsum_path report, rounded to 4 significant digits.
    attention = ours.by_operator()['na2d_counted']
    assert upstream - (ours.total() - attention) == pytest.approx(attention, rel=1e-3)
