"""The Triton kernels (``backend='triton'``) run under Triton's interpreter on CPU tensors,
against the float64 oracle and NATTEN 0.17.5's saved outputs.

Triton reads ``TRITON_INTERPRET=1`` when the kernels are defined, so this module runs only in a
process started with it: ``test_triton_na2d.py::test_kernels_under_the_interpreter`` starts one
(its name keeps pytest from collecting it in the suite's own process).
The interpreter runs bfloat16 matmuls wrongly, so float32 and float16 are checked here (bfloat16
by ``tools/benchmark_gpu.py`` on a GPU).
"""
import collections
import os
import warnings
from pathlib import Path

import pytest
import torch

from na_oracle import oracle

if os.environ.get('TRITON_INTERPRET') != '1':
    raise RuntimeError('run this module with TRITON_INTERPRET=1 set at start-up '
                       '(test_triton_na2d.py does)')

import triton  # noqa: E402,F401  (a test requirement: fail here if it is missing)
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction, InterpreterBuilder  # noqa: E402

from dinat_backbone.ops import na2d, na2d_tiled, triton_na2d  # noqa: E402
from dinat_backbone.ops.triton_na2d import (TILE, _backward_key,  # noqa: E402
                                            _backward_query, _forward, _interior_bias,
                                            na2d_triton, triton_kernels)

# The kernels' first-use self-check runs only in the tests that turn it on (self_check): the
# other tests call the kernels themselves, and the check would add an interpreted run per
# variant (and its atomics to the atomics counted below).
os.environ[triton_na2d.SELF_CHECK_ENV] = '0'

DATA = Path(__file__).parent / 'data'

# (batch, height, width, heads, head_dim), kernel, dilation. The kernels tile each dilation
# group in 8x8 blocks, so maps wider than 8 per group also cross tile borders.
SHAPES = [
    ((1, 9, 11, 2, 4), 3, 1),            # odd sizes, two tiles in x
    ((1, 10, 7, 3, 4), 3, 2),            # groups of unequal length in x (4 and 3)
    ((1, 15, 10, 2, 16), 5, 2),          # unequal groups in y (8, 7); k * d = width
    ((1, 21, 23, 2, 32), 7, 3),          # k * d = height; groups 8, 8, 7 in x
    ((1, 14, 19, 1, 64), 7, 1),          # head dim 64; borders; three tiles in x
    ((1, 20, 26, 1, 8), 5, 1),           # 3 x 4 tiles: halos across tile borders
    ((2, 9, 13, 2, 6), (3, 5), (3, 2)),  # rectangular kernel and dilation, batch 2
    ((1, 13, 13, 1, 16), 13, 1),         # the largest kernel, as large as the map
    ((1, 24, 23, 1, 32), 11, 2),         # Mask2Former's kernel, dilated
    ((1, 18, 9, 1, 24), 3, (6, 3)),      # head dim 24 (padded to 32); k * d = both sides
    # Interior tiles (the bias table) of the query-major and the key-major kernels:
    ((1, 30, 30, 1, 16), 7, 1),
    ((1, 24, 48, 1, 8), (5, 3), (1, 2)),  # rectangular kernel, dilated
]


def make_case(shape, kernel, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(shape[3], 2 * kh - 1, 2 * kw - 1, generator=gen, dtype=torch.float64)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    # The oracle sees the same (rounded) inputs as the kernels.
    return [t.to(dtype) for t in (q, k, v, rpb)], grad


def relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def run_against_oracle(shape, kernel, dilation, dtype, tolerance, seed, with_rpb=True,
                       backend=None):
    """Forward and the four gradients of the kernels (``backend=None``: ``na2d_triton``
    itself) against the float64 oracle, as relative max errors."""
    inputs, grad = make_case(shape, kernel, dtype, seed)
    if not with_rpb:
        inputs[3] = None
    ours = [None if t is None else t.clone().requires_grad_() for t in inputs]
    ref = [None if t is None else t.double().requires_grad_() for t in inputs]
    if backend is None:
        out = na2d_triton(*ours[:3], kernel, dilation, rpb=ours[3])
    else:
        out = na2d(*ours[:3], kernel, dilation, rpb=ours[3], backend=backend)
    out.backward(grad.to(dtype))
    expected = oracle(*ref[:3], kernel, dilation, rpb=ref[3])
    expected.backward(grad)
    assert out.dtype == dtype
    errors = {'out': relative_error(out, expected)}
    for name, a, b in zip(('q', 'k', 'v', 'rpb'), ours, ref):
        if a is not None:
            assert a.grad.dtype == dtype
            errors[name] = relative_error(a.grad, b.grad)
    assert max(errors.values()) <= tolerance, errors


@pytest.mark.parametrize('shape,kernel,dilation', SHAPES)
def test_float32_forward_and_gradients_match_oracle(shape, kernel, dilation):
    run_against_oracle(shape, kernel, dilation, torch.float32, 1e-5, seed=shape[1] * shape[2])


@pytest.mark.parametrize('shape,kernel,dilation',
                         [SHAPES[2], SHAPES[3], SHAPES[6], SHAPES[11]])
def test_float16_forward_and_gradients_match_oracle(shape, kernel, dilation):
    # float16 inputs, float32 accumulation: probabilities and ds are rounded to float16 for
    # the matmuls, as in FlashAttention.
    run_against_oracle(shape, kernel, dilation, torch.float16, 2e-3, seed=shape[1])


def test_without_rpb_through_na2d():
    run_against_oracle((1, 12, 17, 2, 8), 5, (2, 3), torch.float32, 1e-5, seed=3,
                       with_rpb=False, backend='triton')


def test_matches_natten_0_17_5_outputs():
    """Six cases saved from NATTEN 0.17.5 (float64, layout [B, heads, H, W, D]), run in
    float32: head dims 4, 6 and 8."""
    cases = torch.load(DATA / 'natten_0.17.5_na2d_rpb.pt', weights_only=True)['cases']
    assert len(cases) == 6
    for case in cases:
        kernel, dilation = int(case['kernel_size']), int(case['dilation'])
        q, k, v = (case[n].permute(0, 2, 3, 1, 4).float().requires_grad_() for n in 'qkv')
        rpb = case['rpb'].float().requires_grad_()
        out = na2d(q, k, v, kernel, dilation, rpb=rpb, backend='triton').permute(0, 3, 1, 2, 4)
        assert relative_error(out, case['out']) <= 1e-5
        (out * case['grad_out'].float()).sum().backward()
        for name, tensor in zip('qkv', (q, k, v)):
            assert relative_error(tensor.grad.permute(0, 3, 1, 2, 4), case[f'grad_{name}']) <= 1e-5
        assert relative_error(rpb.grad, case['grad_rpb']) <= 1e-5


def interior_tokens(shape, kernel, dilation, key_major):
    """[H, W] bool: the tokens in interior tiles, by the tiling's definition (not the kernels'
    code): query-major, tiles whose queries' windows are all centred; key-major, tiles whose
    keys are seen only by queries with centred windows."""
    margins = [k if key_major else k // 2 for k in kernel]

    def axis(length, dil, margin):
        inside = torch.zeros(length, dtype=torch.bool)
        for group in range(dil):
            group_len = len(range(group, length, dil))
            for first in range(0, group_len, TILE):
                if first >= margin and first + TILE + margin <= group_len:
                    inside[group + dil * first:group + dil * (first + TILE):dil] = True
        return inside

    rows, cols = (axis(length, dil, margin)
                  for length, dil, margin in zip(shape[1:3], dilation, margins))
    return rows[:, None] & cols[None, :]


def test_interior_tiles_and_only_they_read_the_bias_table():
    """A table of NaNs poisons exactly the interior tiles: the forward's and the dq kernel's
    queries, the dk/dv kernel's keys. (Their values are checked against the oracle above.)"""
    shape, kernel, dilation = (1, 27, 48, 1, 8), (5, 3), (1, 2)
    (q, k, v, rpb), grad = make_case(shape, kernel, torch.float32, seed=2)
    kernels, scale = triton_kernels(), shape[-1] ** -0.5
    bias = _interior_bias(kernels, rpb, kernel)
    poisoned = torch.full_like(bias, float('nan'))
    query_major = interior_tokens(shape, kernel, dilation, key_major=False)
    key_major = interior_tokens(shape, kernel, dilation, key_major=True)
    assert 0 < key_major.sum() < query_major.sum() < query_major.numel()

    out, _ = _forward(kernels, q, k, v, rpb, poisoned, kernel, dilation, scale)
    assert torch.equal(out[0, :, :, 0].isnan().any(-1), query_major)

    out, lse = _forward(kernels, q, k, v, rpb, bias, kernel, dilation, scale)
    grad = grad.float()
    args = (kernels, q, k, v, rpb, poisoned, grad, lse, torch.empty_like(lse), kernel,
            dilation, scale)
    grad_query, _, _ = _backward_query(*args, out=out, deterministic=True)
    assert torch.equal(grad_query[0, :, :, 0].isnan().any(-1), query_major)
    args = (kernels, q, k, v, rpb, bias, grad, lse, torch.empty_like(lse), kernel, dilation,
            scale)
    _backward_query(*args, out=out, deterministic=True)  # fills delta
    grad_key, grad_value = _backward_key(*args[:5], poisoned, *args[6:])
    assert torch.equal(grad_key[0, :, :, 0].isnan().any(-1), key_major)
    assert torch.equal(grad_value[0, :, :, 0].isnan().any(-1), key_major)


# Kernels each aten op launches no GPU work for: allocations, views and autograd's detach.
NO_GPU_WORK = {'aten.empty', 'aten.empty_like', 'aten.new_empty', 'aten.new_empty_strided',
               'aten.empty_strided', 'aten.view', 'aten.slice', 'aten.detach',
               'aten._unsafe_view', 'aten.as_strided'}


class LaunchCounter(TorchDispatchMode):
    """Counts the Triton launches (every interpreted kernel run) and the torch ops that do GPU
    work, outside the launches (the interpreter's own tensor copies are not the op's). The
    ``dinat_na2d::triton_*`` operators are run through their Python implementations, so
    that the ops inside them are seen too."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.launches = collections.Counter()
        self.torch_ops = collections.Counter()
        self.launching = False
        run = InterpretedFunction.run
        counter = self

        def counting_run(kernel, *args, grid, warmup, **kwargs):
            if not warmup:
                counter.launches[kernel.__name__] += 1
            counter.launching = True
            try:
                return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                counter.launching = False

        monkeypatch.setattr(InterpretedFunction, 'run', counting_run)
        self.implementations = {'dinat_na2d.triton_forward': triton_na2d._forward_op,
                                'dinat_na2d.triton_backward': triton_na2d._backward_op}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in self.implementations:
            with self:
                return self.implementations[name](*args, **(kwargs or {}))
        if not self.launching and name not in NO_GPU_WORK:
            self.torch_ops[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('deterministic', [False, True])
def test_forward_and_backward_launch_five_gpu_kernels(monkeypatch, dtype, deterministic):
    """One forward+backward with rpb: the four Triton kernels and one torch op (zeroing the
    atomics' d(rpb), or the deterministic partial sums' reduction). Before ``delta`` moved into
    the dq kernel and the bias table came in, it was 3 launches and 3 torch ops (float32;
    5 in float16: the casts), plus 1 more in deterministic mode (a strided d(rpb) copied)."""
    counter = LaunchCounter(monkeypatch)
    (q, k, v, rpb), grad = make_case((1, 12, 12, 2, 16), 7, dtype, seed=4)
    leaves = [t.requires_grad_() for t in (q, k, v, rpb.float())]
    grad = grad.to(dtype)
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: deterministic)
    with counter:
        out = na2d_triton(*leaves[:3], 7, 1, rpb=leaves[3])
        out.backward(grad)
    assert counter.launches == {'_rpb_tiles_kernel': 1, '_na2d_fwd_kernel': 1,
                                '_na2d_bwd_query_kernel': 1, '_na2d_bwd_key_kernel': 1}
    assert counter.torch_ops == {'aten.sum' if deterministic else 'aten.zeros': 1}
    assert all(leaf.grad is not None for leaf in leaves)


class AtomicCounter:
    """Counts the atomic read-modify-writes the interpreter executes."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = InterpreterBuilder.create_atomic_rmw

        def counting(builder, *args, **kwargs):
            self.calls += 1
            return original(builder, *args, **kwargs)

        monkeypatch.setattr(InterpreterBuilder, 'create_atomic_rmw', counting)


# Heads 2; 2 x 1 tiles per dilation group (9 rows; 5 columns), 1 x 2 groups.
PARTIALS_CASE = (1, 9, 10, 2, 4), 5, (1, 2)


def rpb_grad_of_two_runs(deterministic):
    shape, kernel, dilation = PARTIALS_CASE
    inputs, grad = make_case(shape, kernel, torch.float32, seed=5)
    results = []
    torch.use_deterministic_algorithms(deterministic)
    try:
        for _ in range(2):
            rpb = inputs[3].clone().requires_grad_()
            out = na2d_triton(*inputs[:3], kernel, dilation, rpb=rpb)
            out.backward(grad.float())
            results.append(rpb.grad)
    finally:
        torch.use_deterministic_algorithms(False)
    return results


def test_deterministic_rpb_grad_uses_per_program_partials_and_no_atomics(monkeypatch):
    counter = AtomicCounter(monkeypatch)
    first, second = rpb_grad_of_two_runs(deterministic=True)
    assert counter.calls == 0
    assert torch.equal(first, second)

    counter.calls = 0
    atomic, _ = rpb_grad_of_two_runs(deterministic=False)
    assert counter.calls > 0  # the counter does see the other mode's atomics
    torch.testing.assert_close(atomic, first, rtol=1e-6, atol=1e-6)

    # The partials: one padded table per (batch * head, program), summed in a fixed order.
    shape, kernel, dilation = PARTIALS_CASE
    (q, k, v, rpb), grad = make_case(shape, kernel, torch.float32, seed=5)
    scale = shape[-1] ** -0.5
    bias = _interior_bias(triton_kernels(), rpb, (5, 5))
    out, lse = _forward(triton_kernels(), q, k, v, rpb, bias, (5, 5), dilation, scale)
    _, grad_rpb, partials = _backward_query(triton_kernels(), q, k, v, rpb, bias, grad.float(),
                                            lse, torch.empty_like(lse), (5, 5), dilation, scale,
                                            out=out, deterministic=True)
    assert partials.shape == (2, 2 * 2, 16, 16)  # [batch * heads, programs, padded table]
    assert (partials[..., 9:, :] == 0).all() and (partials[..., 9:] == 0).all()
    torch.testing.assert_close(partials.view(1, 2, 4, 16, 16).sum((0, 2))[:, :9, :9],
                               grad_rpb, rtol=0, atol=0)
    torch.testing.assert_close(grad_rpb, first, rtol=0, atol=0)


def test_attention_dropout_falls_back_to_the_tiled_implementation():
    inputs, _ = make_case((1, 9, 10, 2, 4), 3, torch.float32, seed=1)
    torch.manual_seed(0)
    ours = na2d(*inputs[:3], 3, 1, rpb=inputs[3], attn_drop=0.5, backend='triton')
    torch.manual_seed(0)
    tiled = na2d_tiled(*inputs[:3], 3, 1, rpb=inputs[3], attn_drop=0.5)
    torch.testing.assert_close(ours, tiled, rtol=0, atol=0)


@pytest.mark.parametrize('dtype,shape,kernel,error,match', [
    (torch.float64, (1, 9, 9, 1, 4), 3, TypeError, 'float32, float16 or bfloat16'),
    (torch.float32, (1, 9, 9, 1, 160), 3, ValueError, 'head dims <= 128'),
    (torch.float32, (1, 15, 15, 1, 4), 15, ValueError, 'odd kernel sizes 3..13'),
])
def test_what_the_kernels_do_not_take_raises(dtype, shape, kernel, error, match):
    q = torch.zeros(shape, dtype=dtype)
    with pytest.raises(error, match=match):
        na2d(q, q, q, kernel, backend='triton')


def break_key_gradients(monkeypatch):
    """The dk/dv kernel's launcher made wrong on purpose: its dk comes out doubled."""
    right = triton_na2d._backward_key

    def wrong(*args, **kwargs):
        grad_key, grad_value = right(*args, **kwargs)
        return grad_key * 2, grad_value

    monkeypatch.setattr(triton_na2d, '_backward_key', wrong)


def self_check_case():
    inputs, grad = make_case((1, 20, 18, 2, 8), 5, torch.float32, seed=7)
    return [t.clone().requires_grad_() for t in inputs], grad.float()


def run_case(leaves, grad, backend='triton'):
    out = na2d(*leaves[:3], 5, (2, 1), rpb=leaves[3], backend=backend)
    return [out.detach()] + list(torch.autograd.grad(out, leaves, grad))


@pytest.fixture
def self_check(monkeypatch):
    """The self-check on (conftest-style default: off in this module), no variant checked."""
    monkeypatch.setenv(triton_na2d.SELF_CHECK_ENV, '1')
    monkeypatch.setattr(triton_na2d, '_self_checked', {})
    return triton_na2d._self_checked


def test_self_check_passes_correct_kernels(self_check, recwarn):
    leaves, grad = self_check_case()
    run_case(leaves, grad)
    assert list(self_check.values()) == [True] and not recwarn.list


def test_self_check_falls_back_to_tiled_on_a_wrong_kernel(self_check, monkeypatch):
    break_key_gradients(monkeypatch)
    leaves, grad = self_check_case()
    tiled = run_case(leaves, grad, backend='torch')
    with pytest.warns(RuntimeWarning) as record:
        ours = run_case(leaves, grad)
    assert len(record) == 1
    message = str(record[0].message)
    assert '\n' not in message
    assert 'fp32-ieee D16 rpb table16x16 atomic' in message and 'dk ' in message
    assert 'dq ' not in message and 'out ' not in message
    for a, b in zip(ours, tiled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # warned once: the variant now runs tiled quietly
        again = run_case(leaves, grad)
    torch.testing.assert_close(again[2], tiled[2], rtol=0, atol=0)


def test_self_check_waits_for_an_eager_call_and_can_be_turned_off(self_check, monkeypatch):
    break_key_gradients(monkeypatch)
    leaves, grad = self_check_case()
    tiled_dk = run_case(leaves, grad, backend='torch')[2]
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert not torch.allclose(run_case(leaves, grad)[2], tiled_dk)  # the kernels, unchecked
    assert not self_check
    monkeypatch.undo()
    break_key_gradients(monkeypatch)
    monkeypatch.setattr(triton_na2d, '_self_checked', self_check)
    monkeypatch.setenv(triton_na2d.SELF_CHECK_ENV, '0')
    assert not torch.allclose(run_case(leaves, grad)[2], tiled_dk)
    assert not self_check
    monkeypatch.setenv(triton_na2d.SELF_CHECK_ENV, '1')  # the next eager call checks
    with pytest.warns(RuntimeWarning, match='differ from the tiled implementation'):
        torch.testing.assert_close(run_case(leaves, grad)[2], tiled_dk, rtol=0, atol=0)
    assert list(self_check.values()) == [False]
