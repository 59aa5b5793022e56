"""The DiNA operator against independent oracles: a naive neighbour-list attention written
here from the published semantics, NATTEN 0.17.5's saved outputs, and NATTEN 0.21's na2d.
Both implementations are checked: the compiled CPU kernels and the tiled pure-PyTorch one."""
import itertools
import os
import subprocess
import sys
from functools import partial

import pytest
import torch

from dinat_backbone.ops import na2d, na2d_cpu, na2d_gather, na2d_tiled, select_backend
from dinat_backbone.ops.cpu_kernels import cpu_kernels
from helpers import DATA_DIR
from na_oracle import neighbours, oracle


def random_case(shape, kernel, dtype=torch.float64, seed=0, with_rpb=True):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))
    heads = shape[3]
    rpb = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, generator=gen, dtype=dtype)
    return q, k, v, (rpb if with_rpb else None)


# (batch, height, width, heads, dim), kernel, dilation: odd/even/non-divisible sizes, H != W,
# maps exactly kernel*dilation wide, several tiles per axis, and groups of unequal length.
GRID = [
    ((2, 9, 11, 2, 4), 3, 1),
    ((1, 10, 7, 3, 4), 3, 2),
    ((2, 12, 13, 2, 3), 5, 1),
    ((1, 15, 10, 2, 4), 5, 2),
    ((1, 16, 17, 1, 4), 3, 4),
    ((1, 21, 23, 2, 3), 7, 3),
    ((2, 14, 19, 2, 4), 7, 1),
    ((1, 28, 30, 1, 2), 7, 4),
    ((1, 23, 29, 2, 2), 5, 4),
    ((1, 7, 7, 1, 5), 7, 1),
]


IMPLEMENTATIONS = {
    'cpu': na2d_cpu,  # the compiled kernels (generic head-dim path: D <= 5 here)
    'tile1': partial(na2d_tiled, tile=1),
    'tile3': partial(na2d_tiled, tile=3),
    'tile8': partial(na2d_tiled, tile=8),
    'gather': na2d_gather,  # the export path
}


@pytest.mark.parametrize('shape,kernel,dilation', GRID)
@pytest.mark.parametrize('impl', sorted(IMPLEMENTATIONS))
def test_forward_and_gradients_match_oracle(shape, kernel, dilation, impl):
    q, k, v, rpb = random_case(shape, kernel, seed=kernel * 10 + dilation)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    expected_inputs = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    out = IMPLEMENTATIONS[impl](*inputs[:3], kernel, dilation, rpb=inputs[3])
    expected = oracle(*expected_inputs[:3], kernel, dilation, rpb=expected_inputs[3])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    for name, got, want in zip('qkv', inputs, expected_inputs):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=1e-10, msg=f'grad {name}')
    torch.testing.assert_close(inputs[3].grad, expected_inputs[3].grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('shape,kernel,dilation', [
    ((1, 12, 13, 2, 32), 5, 2), ((2, 10, 9, 1, 16), 3, 1), ((1, 9, 11, 2, 64), 7, 1)])
def test_cpu_kernels_simd_head_dims_match_oracle(shape, kernel, dilation):
    """Head dims 16/32/64 take the kernels' SIMD path; inputs are views of one qkv tensor,
    as in the attention layer (strided, contiguous only in the head dim)."""
    gen = torch.Generator().manual_seed(shape[-1])
    qkv = torch.randn(*shape[:3], 3, *shape[3:], generator=gen, dtype=torch.float64)
    rpb = torch.randn(shape[3], 2 * kernel - 1, 2 * kernel - 1, generator=gen, dtype=torch.float64)
    leaf, expected_leaf = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    rpb_leaf, expected_rpb = rpb.clone().requires_grad_(), rpb.clone().requires_grad_()
    out = na2d_cpu(*leaf.unbind(3), kernel, dilation, rpb=rpb_leaf)
    expected = oracle(*expected_leaf.unbind(3), kernel, dilation, rpb=expected_rpb)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(leaf.grad, expected_leaf.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(rpb_leaf.grad, expected_rpb.grad, rtol=0, atol=1e-10)
    out32 = na2d_cpu(*qkv.float().unbind(3), kernel, dilation, rpb=rpb.float())
    torch.testing.assert_close(out32.double(), expected, rtol=0, atol=1e-5)


def test_cpu_kernels_do_not_depend_on_thread_count():
    """Every kernel, forward and backward, gives the same bits on 1 and 2 threads."""
    from dinat_backbone.ops.cpu_kernels import _tables
    gen = torch.Generator().manual_seed(5)
    x, y = (torch.randn(2, 30, 20, 2, 32, generator=gen) for _ in range(2))
    w = torch.randn(2, 30, 20, 2, 49, generator=gen)
    rpb = torch.randn(2, 13, 13, generator=gen)
    rows, cols, ops = _tables(30, 7, 2), _tables(20, 7, 2), cpu_kernels()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append([
                ops.neighbour_dot(x, y, rows.keys, cols.keys, 0.5, rpb, rows.bias, cols.bias),
                ops.neighbour_weighted_sum(w, y, rows.keys, cols.keys, 0.5),
                ops.neighbour_scatter(w, x, rows.keys, cols.keys, 0.5),
                ops.rpb_grad(w, rows.bias, cols.bias)])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_cpu_kernels_refuse_double_backward():
    """Second derivatives are not implemented: a clear error, not silently wrong gradients
    (the tiled implementation supports them)."""
    q, k, v, rpb = (t.requires_grad_() for t in random_case((1, 9, 9, 1, 4), 3))
    grad_q, = torch.autograd.grad(na2d_cpu(q, k, v, 3, rpb=rpb).square().sum(), q,
                                  create_graph=True)
    with pytest.raises(RuntimeError, match='differentiate twice'):
        grad_q.sum().backward()


# Each case calls one operator with one table out of range (or, for the scatter's race-free
# passes, outside its query's dilation group) on a [1, 8, 8, 1, 4] input, kernel 3, and prints
# the first line of its error. The unchecked kernels read or wrote out of bounds: SIGSEGV.
BAD_TABLES = """
import torch
from dinat_backbone.ops.cpu_kernels import cpu_kernels, _cached_tables
ops = cpu_kernels()
x = torch.randn(1, 8, 8, 1, 4, dtype=torch.float64)
nbr, bias = _cached_tables(8, 3, 1)
w = torch.rand(1, 8, 8, 1, 9, dtype=torch.float64)
rpb = torch.randn(1, 5, 5, dtype=torch.float64)
far = nbr.clone(); far[3, 0] = 10 ** 9
negative = nbr.clone(); negative[7, 2] = -1
far_bias = bias.clone(); far_bias[0, 0] = 10 ** 6
other_group = nbr.clone(); other_group[4, 1] = 7  # in range, outside row 4's window
narrow = bias[:, :2].contiguous()
cases = {
    'dot-nbr': lambda: ops.neighbour_dot(x, x, far, nbr, 1.0, None, None, None),
    'dot-bias': lambda: ops.neighbour_dot(x, x, nbr, nbr, 1.0, rpb, bias, far_bias),
    'dot-bias-columns': lambda: ops.neighbour_dot(x, x, nbr, nbr, 1.0, rpb, narrow, bias),
    'weighted_sum-nbr': lambda: ops.neighbour_weighted_sum(w, x, nbr, negative, 1.0),
    'scatter-nbr': lambda: ops.neighbour_scatter(w, x, negative, nbr, 1.0),
    'scatter-group': lambda: ops.neighbour_scatter(w, x, other_group, nbr, 1.0),
    'rpb_grad-bias': lambda: ops.rpb_grad(w, far_bias, bias),
}
for name, call in cases.items():
    try:
        call()
        print(name, 'ACCEPTED')
    except RuntimeError as err:
        print(name, str(err).splitlines()[0])
"""
BAD_TABLE_ERRORS = {
    'dot-nbr': 'nbr_h holds 1000000000 at [3, 0]: out of range [0, 8)',
    'dot-bias': 'bias_w holds 1000000 at [0, 0]: out of range [0, 5)',
    'dot-bias-columns': 'bias_h must be a contiguous int64 CPU table with 8 rows and as many '
                        'columns as the kernel',
    'weighted_sum-nbr': 'nbr_w holds -1 at [7, 2]: out of range [0, 8)',
    'scatter-nbr': 'nbr_h holds -1 at [7, 2]: out of range [0, 8)',
    'scatter-group': "nbr_h row 4 reaches 7: outside its dilation group's window",
    'rpb_grad-bias': 'bias_h holds 1000000 at [0, 0]: out of range [0, 5)',
}


def test_cpu_kernels_refuse_index_tables_out_of_range():
    """torch.ops.dinat_na2d.* are public: a bad table must raise, not read or write out of
    bounds. In a subprocess: a crash is a signal exit there, which fails the test."""
    assert cpu_kernels() is not None  # built here first, so the subprocess only loads
    result = subprocess.run([sys.executable, '-c', BAD_TABLES], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    got = dict(line.split(' ', 1) for line in result.stdout.splitlines())
    assert got == BAD_TABLE_ERRORS


def test_cpu_kernels_fall_back_when_the_build_fails(tmp_path):
    """No working compiler: a warning names the failure and na2d runs the tiled version."""
    script = (
        'import warnings, torch\n'
        'from dinat_backbone.ops import na2d, select_backend\n'
        'q = torch.randn(1, 16, 16, 2, 8)\n'
        'with warnings.catch_warnings(record=True) as caught:\n'
        '    warnings.simplefilter("always")\n'
        '    backend = select_backend(q, None, dilation=1)\n'
        'print(backend, any("could not build the CPU" in str(w.message) for w in caught))\n'
        'print(tuple(na2d(q, q, q, 7).shape))\n')
    env = dict(os.environ, CXX='false', DINAT_EXTENSIONS_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split('\n')[:2] == ['torch True', '(1, 16, 16, 2, 8)']


@pytest.mark.parametrize('backend', ['cpu', 'torch'])
def test_without_rpb_matches_oracle(backend):
    q, k, v, _ = random_case((2, 13, 11, 2, 4), 5, with_rpb=False)
    torch.testing.assert_close(na2d(q, k, v, 5, (2, 1), backend=backend), oracle_rect(q, k, v),
                               rtol=0, atol=1e-10)


def oracle_rect(q, k, v):
    """Rectangular dilation (2, 1) as the product of the per-axis neighbourhoods."""
    b, h, w, heads, dim = q.shape
    rows, cols = neighbours(h, 5, 2), neighbours(w, 5, 1)
    mask = torch.full((h, w, h, w), float('-inf'), dtype=q.dtype)
    for y, x in itertools.product(range(h), range(w)):
        mask[y, x, torch.tensor(rows[y])[:, None], torch.tensor(cols[x])] = 0.0
    logits = torch.einsum('byxhd,bijhd->bhyxij', q * dim ** -0.5, k) + mask
    attn = logits.reshape(b, heads, h, w, h * w).softmax(-1).reshape(logits.shape)
    return torch.einsum('bhyxij,bijhd->byxhd', attn, v)


@pytest.mark.parametrize('backend', ['cpu', 'torch'])
def test_gradcheck(backend):
    q, k, v, rpb = random_case((1, 9, 8, 2, 3), 3, seed=3)
    inputs = tuple(t.requires_grad_() for t in (q, k, v, rpb))
    assert torch.autograd.gradcheck(
        lambda q, k, v, rpb: na2d(q, k, v, 3, 2, rpb=rpb, backend=backend), inputs, eps=1e-6,
        atol=1e-8, fast_mode=True)


@pytest.mark.parametrize('backend', ['cpu', 'torch'])
def test_matches_natten_0_17_5_outputs(backend):
    """Six cases saved from NATTEN 0.17.5 (the last release with rpb), layout
    [B, heads, H, W, D]."""
    cases = torch.load(DATA_DIR / 'natten_0.17.5_na2d_rpb.pt', weights_only=True)['cases']
    assert len(cases) == 6
    for case in cases:
        kernel, dilation = int(case['kernel_size']), int(case['dilation'])
        q, k, v = (case[n].permute(0, 2, 3, 1, 4).clone().requires_grad_() for n in 'qkv')
        rpb = case['rpb'].clone().requires_grad_()
        out = na2d(q, k, v, kernel, dilation, rpb=rpb, scale=q.shape[-1] ** -0.5,
                   backend=backend)
        out = out.permute(0, 3, 1, 2, 4)
        torch.testing.assert_close(out, case['out'], rtol=0, atol=1e-12)
        (out * case['grad_out']).sum().backward()
        for name, tensor in zip('qkv', (q, k, v)):
            torch.testing.assert_close(tensor.grad.permute(0, 3, 1, 2, 4), case[f'grad_{name}'],
                                       rtol=0, atol=1e-12)
        torch.testing.assert_close(rpb.grad, case['grad_rpb'], rtol=0, atol=1e-12)


@pytest.mark.parametrize('shape,kernel,dilation', [((2, 14, 15, 2, 8), 7, 2),
                                                   ((1, 9, 13, 3, 16), 3, 3),
                                                   ((1, 11, 11, 1, 8), 5, 1)])
def test_matches_natten_0_21_without_rpb(shape, kernel, dilation):
    """NATTEN 0.21's own na2d (its CPU reference path) on the shapes it accepts."""
    import natten
    q, k, v, _ = random_case(shape, kernel, dtype=torch.float32, with_rpb=False)
    expected = natten.na2d(q, k, v, kernel_size=kernel, dilation=dilation)
    for backend in ('cpu', 'torch'):
        torch.testing.assert_close(na2d(q, k, v, kernel, dilation, backend=backend), expected,
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(na2d(q, k, v, kernel, dilation, backend='natten'), expected,
                               rtol=0, atol=0)


def test_float32_and_bfloat16_against_float64_oracle():
    q, k, v, rpb = random_case((2, 19, 17, 2, 8), 5, seed=7)
    expected = oracle(q, k, v, 5, 3, rpb=rpb)
    out32 = na2d(q.float(), k.float(), v.float(), 5, 3, rpb=rpb.float())
    torch.testing.assert_close(out32.double(), expected, rtol=0, atol=1e-5)
    # bfloat16 keeps 8 bits of mantissa: inputs alone round by ~0.4%; softmax runs in float32.
    outbf = na2d(q.bfloat16(), k.bfloat16(), v.bfloat16(), 5, 3, rpb=rpb.bfloat16())
    assert outbf.dtype == torch.bfloat16
    torch.testing.assert_close(outbf.double(), expected, rtol=0, atol=5e-2)


def test_backend_selection_is_visible():
    assert cpu_kernels() is not None, 'the CPU kernels must build on the test machine'
    q = torch.zeros(1, 20, 20, 1, 4)
    rpb = torch.zeros(1, 5, 5)
    assert select_backend(q, rpb) == 'cpu'
    assert select_backend(q, None) == 'cpu'  # CPU: NATTEN has no fused kernels here
    assert select_backend(q, rpb, dilation=2) == 'cpu'  # dilation groups of 10 > one tile
    assert select_backend(q, rpb, dilation=3) == 'torch'  # groups of <= 7: one dense tile each
    assert select_backend(q.bfloat16(), rpb) == 'torch'  # the kernels take float32/float64
    assert select_backend(q, None, 'natten') == 'natten'
    assert select_backend(q, rpb, 'torch') == 'torch'
    with pytest.raises(ValueError, match='no relative positional bias'):
        select_backend(q, rpb, 'natten')
    with pytest.raises(ValueError, match='backend must be'):
        select_backend(q, None, 'fast')


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(kernel_size=4), ValueError, 'odd kernel size'),
    (dict(kernel_size=3, dilation=0), ValueError, 'Dilation must be >= 1'),
    (dict(kernel_size=3, dilation=3), ValueError, 'cannot be larger than the input size'),
    (dict(kernel_size=(3, 3, 3)), TypeError, 'pair of ints'),
    (dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)), ValueError, r'rpb must have shape'),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    q = torch.zeros(1, 8, 7, 2, 4)
    with pytest.raises(error, match=match):
        na2d(q, q, q, **kwargs)


def test_mismatched_inputs_raise():
    q = torch.zeros(1, 8, 8, 2, 4)
    with pytest.raises(ValueError, match='same shape'):
        na2d(q, q, torch.zeros(1, 8, 8, 2, 5), 3)
    with pytest.raises(TypeError, match='same dtype'):
        na2d(q, q, q.double(), 3)
    with pytest.raises(ValueError, match=r'\[batch, height, width, heads, head_dim\]'):
        na2d(q[0], q[0], q[0], 3)
