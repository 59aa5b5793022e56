"""The Triton backend without a GPU: the kernels under Triton's interpreter (in a subprocess,
see triton_interpreted_cases.py), the choice of backend for CUDA tensors (fake CUDA tensors:
nothing runs on them), the package without Triton, and the GPU benchmark's CPU smoke mode."""
import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dinat_backbone.ops import na2d, select_backend

from helpers import REPO_ROOT, load_tool


def run_python(args, interpret, timeout=600, stderr=False):
    """stdout of a Python run in the repository (and stderr after it with ``stderr``)."""
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                        os.environ.get('PYTHONPATH')])))
    env.pop('TRITON_INTERPRET', None)
    if interpret:
        env['TRITON_INTERPRET'] = '1'
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                            capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + (result.stderr if stderr else '')


def release(name):
    """(major, minor) of an installed distribution, None where it is not installed."""
    try:
        return tuple(int(part) for part in version(name).split('.')[:2])
    except PackageNotFoundError:
        return None


# Triton 3.6's interpreter takes int() of one-element arrays (a kernel's scalars) in range(),
# which numpy >= 2.4 refuses; 3.7.1 fixed it. The kernels pass there with numpy 2.3.
TRITON_RELEASE = release('triton')
interpreter_runs = pytest.mark.skipif(
    TRITON_RELEASE is not None and TRITON_RELEASE < (3, 7) and release('numpy') >= (2, 4),
    reason="triton < 3.7's interpreter fails with numpy >= 2.4 (int() of a one-element array "
           'in range()); use triton >= 3.7.1 or numpy < 2.4 to run the kernels interpreted')


@interpreter_runs
def test_kernels_under_the_interpreter():
    out = run_python(['-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                      'tests/triton_interpreted_cases.py'], interpret=True)
    assert ' passed' in out and 'skipped' not in out, out[-2000:]


def cuda_tensors(dtype=torch.float32, head_dim=32):
    """Fake CUDA query and rpb (kernel 7): devices and shapes without a GPU or data."""
    with FakeTensorMode():
        return (torch.empty(2, 32, 40, 4, head_dim, dtype=dtype, device='cuda'),
                torch.empty(4, 13, 13, device='cuda'))


def test_auto_picks_triton_for_cuda_tensors():
    query, rpb = cuda_tensors()
    assert select_backend(query, rpb) == 'triton'
    assert select_backend(query, None, kernel_size=11) == 'triton'
    for dtype in (torch.float16, torch.bfloat16):
        assert select_backend(cuda_tensors(dtype)[0], rpb) == 'triton'
    # What the kernels do not take goes to the tiled implementation.
    assert select_backend(query, rpb, attn_drop=0.1) == 'torch'
    assert select_backend(cuda_tensors(torch.float64)[0], rpb) == 'torch'
    assert select_backend(cuda_tensors(head_dim=160)[0], rpb) == 'torch'
    assert select_backend(query, None, kernel_size=15) == 'torch'
    # The CPU keeps its own kernels.
    assert select_backend(torch.zeros(1, 20, 20, 1, 4), None, kernel_size=5) != 'triton'


def test_triton_on_cpu_without_the_interpreter_raises():
    q = torch.zeros(1, 9, 9, 1, 4)
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        na2d(q, q, q, 3, backend='triton')


WITHOUT_TRITON = """
import sys
sys.modules['triton'] = None  # any `import triton` now raises ImportError
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
import dinat_backbone.ops
from dinat_backbone.ops import na2d, select_backend
with FakeTensorMode():
    query = torch.empty(1, 16, 16, 2, 32, device='cuda')
print('cuda:', select_backend(query, None, kernel_size=7))
q = torch.zeros(1, 9, 9, 1, 4)
print('cpu:', tuple(na2d(q, q, q, 3).shape))
try:
    na2d(q, q, q, 3, backend='triton')
except RuntimeError as err:
    print('triton:', err)
"""


def test_package_works_without_triton():
    out = run_python(['-c', WITHOUT_TRITON], interpret=False, stderr=True)
    assert 'Triton not available' not in out  # torch's triton_op would log it at import
    assert 'cuda: torch' in out
    assert 'cpu: (1, 9, 9, 1, 4)' in out
    assert "triton: backend='triton' needs the triton package" in out


def test_compiled_graphs_hold_the_triton_kernels(caplog):
    """The kernels run as the operators ``dinat_na2d::triton_forward`` / ``triton_backward``
    (``torch.library.triton_op``): AOTAutograd, which torch.compile runs before Inductor,
    traces them into their four Triton kernels and the one torch op with GPU work. Fake CUDA
    tensors: no GPU is needed to trace, and nothing runs."""
    pytest.importorskip('triton')
    if not hasattr(torch.library, 'triton_op'):
        pytest.skip('torch < 2.6 registers the operators with custom_op (see the next test)')
    from torch._functorch.aot_autograd import aot_function
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    def step(q, k, v, rpb, grad):
        out, lse, bias = torch.ops.dinat_na2d.triton_forward(q, k, v, rpb, [7, 7], [2, 2], 0.2)
        return (out, *torch.ops.dinat_na2d.triton_backward(q, k, v, rpb, bias, out, lse, grad,
                                                           [7, 7], [2, 2], 0.2, False))

    graphs = []
    # Without a GPU driver the tracer cannot read the kernels' stores and says so.
    caplog.set_level('ERROR', 'torch._higher_order_ops.triton_kernel_wrap')
    with FakeTensorMode():
        q, k, v, grad = (torch.empty(2, 32, 32, 2, 32, dtype=torch.bfloat16, device='cuda')
                         for _ in range(4))
        rpb = torch.empty(2, 13, 13, device='cuda')
        try:
            aot_function(step, fw_compiler=lambda gm, _: graphs.append(gm) or gm)(
                q, k, v, rpb, grad)
        except RuntimeError:
            pass  # running the traced graph needs a GPU; the graph is what this test reads
    calls = [node for node in graphs[0].graph.nodes if node.op == 'call_function']
    kernels = [kernel_side_table.get_kernel(node.kwargs['kernel_idx']).fn.__name__
               for node in calls if 'triton_kernel_wrapper' in str(node.target)]
    assert kernels == ['_rpb_tiles_kernel', '_na2d_fwd_kernel', '_na2d_bwd_query_kernel',
                       '_na2d_bwd_key_kernel']
    assert 'dinat_na2d' not in ' '.join(str(node.target) for node in calls)
    assert [str(node.target) for node in calls
            if 'zeros' in str(node.target) or 'sum' in str(node.target)] == ['aten.zeros.default']


WITHOUT_TRITON_OP = """
import os
import torch
del torch.library.triton_op, torch.library.wrap_triton  # torch 2.5 has neither
os.environ['DINAT_TRITON_SELF_CHECK'] = '0'
from dinat_backbone.ops import na2d_tiled
from dinat_backbone.ops.triton_na2d import na2d_triton
gen = torch.Generator().manual_seed(0)
q, k, v, grad = (torch.randn(1, 20, 20, 2, 8, generator=gen) for _ in range(4))
rpb = torch.randn(2, 9, 9, generator=gen)
results = []
for fn in (na2d_triton, na2d_tiled):
    leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    out = fn(*leaves[:3], 5, 1, rpb=leaves[3])
    results.append([out, *torch.autograd.grad(out, leaves, grad)])
for ours, tiled in zip(*results):
    torch.testing.assert_close(ours, tiled, rtol=1e-5, atol=1e-5)
from dinat_backbone.ops import triton_na2d
print('registered with', 'triton_op' if triton_na2d._triton_op else 'custom_op')
torch.library.opcheck(torch.ops.dinat_na2d.triton_forward.default,
                      (q, k, v, rpb, [5, 5], [1, 1], 0.35))
print('opcheck passed')
"""


@interpreter_runs
def test_torch_2_5_registers_the_operators_with_custom_op():
    """torch 2.5 (no ``triton_op``/``wrap_triton``, simulated by removing them): the same
    functions become ``custom_op`` operators, opaque to Inductor, whose fake implementations
    launch nothing; the kernels match the tiled implementation and torch's operator checks
    (schema, fake tensors, autograd registration, AOT dispatch) pass."""
    out = run_python(['-c', WITHOUT_TRITON_OP], interpret=True)
    assert 'registered with custom_op' in out and 'opcheck passed' in out, out


# The GPU machine has torch, triton and timm but no OpenMMLab: the smoke run hides them.
WITHOUT_OPENMMLAB = """
import runpy, sys
for name in ('mmcv', 'mmengine', 'mmdet', 'mmseg'):
    sys.modules[name] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@interpreter_runs
def test_benchmark_gpu_smoke_on_cpu(tmp_path):
    out = run_python(['-c', WITHOUT_OPENMMLAB, 'tools/benchmark_gpu.py', '--device', 'cpu',
                      '--smoke', '--out', str(tmp_path)], interpret=True)
    assert len(out.encode()) <= 8000
    assert 'mmengine/mmcv not installed' in out
    assert '| float32 | triton |' in out and '| float32 | torch |' in out
    assert '| NO |' not in out and 'error:' not in out and 'errors: 0.' in out, out
    assert 'drpb bit-identical: True' in out
    results = json.loads((tmp_path / 'benchmark_gpu.json').read_text())
    triton_errors = next(r['errors'] for r in results['correctness'] if r['backend'] == 'triton')
    assert max(triton_errors) <= 1e-5  # out, dq, dk, dv, drpb against float64
    measured = {r['peer']: r for r in results['operator']}
    assert {'tiled', 'triton', 'window'} <= set(measured)  # and natten where installed
    assert all(r['fwd_ms'] > 0 and r['fwd_bwd_ms'] > 0 for r in measured.values())
    models = {r['model']: r['ms'] for r in results['model']}
    assert sorted(models) == ['DiNAT-T', 'Swin-T (stand-in: timm not installed)']
    assert all(ms > 0 for ms in models.values())
    assert '| triton |' in (tmp_path / 'benchmark_gpu.md').read_text()


@pytest.mark.parametrize('device,message', [('cpu', 'set TRITON_INTERPRET=1'),
                                            ('cuda', 'no CUDA device')])
def test_benchmark_gpu_refuses_a_machine_it_cannot_use_at_once(tmp_path, device, message):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop('TRITON_INTERPRET', None)
    result = subprocess.run([sys.executable, 'tools/benchmark_gpu.py', '--device', device,
                             '--out', str(tmp_path)], cwd=REPO_ROOT, env=env, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 2
    assert result.stdout.count('\n') == 1 and message in result.stdout, result.stdout
    assert not list(tmp_path.iterdir())  # nothing spent, nothing written


@interpreter_runs
def test_gpu_ab_launch_settings_script_runs():
    """The prepared A/B check for the next GPU slot cannot rot: its smoke run on CPU."""
    out = run_python(['scripts/gpu_ab_launch_settings.py', '--smoke'], interpret=True)
    for name in ('new', 'no bias table', 'old', 'old fwd only', 'old dq only', 'old dkdv only'):
        assert f'{name}: fwd ' in out
    assert 'self-check new: passed' in out, out


@pytest.fixture(scope='module')
def benchmark_gpu():
    return load_tool('benchmark_gpu')


def test_benchmark_gpu_operator_cases_are_dinat_tiny_levels(benchmark_gpu):
    cases = benchmark_gpu.level_cases(benchmark_gpu.INPUTS, 2, ['bfloat16'])
    assert [c for c in cases if c[0] == '512x512'] == [
        ('512x512', 1, (2, 128, 128, 2, 32), 1, 'bfloat16'),
        ('512x512', 1, (2, 128, 128, 2, 32), 16, 'bfloat16'),
        ('512x512', 2, (2, 64, 64, 4, 32), 1, 'bfloat16'),
        ('512x512', 2, (2, 64, 64, 4, 32), 4, 'bfloat16'),
        ('512x512', 2, (2, 64, 64, 4, 32), 8, 'bfloat16'),
        ('512x512', 3, (2, 32, 32, 8, 32), 1, 'bfloat16'),
        ('512x512', 3, (2, 32, 32, 8, 32), 2, 'bfloat16'),
        ('512x512', 3, (2, 32, 32, 8, 32), 3, 'bfloat16'),
        ('512x512', 3, (2, 32, 32, 8, 32), 4, 'bfloat16'),
        ('512x512', 4, (2, 16, 16, 16, 32), 1, 'bfloat16'),
        ('512x512', 4, (2, 16, 16, 16, 32), 2, 'bfloat16')]
    assert len(cases) == 22  # and 11 at 800x1216 with the 'coco' dilations


def representative_variants():
    """A deduplicated subset of the compiled variants (all of them take about 2 minutes per
    architecture here): the model's own (bf16 inputs, float32 rpb, head dim 32: every kernel,
    both d(rpb) modes), and per dtype the largest blocks (head dim 64, rpb, both table
    sizes), where registers run out first; and the interior tiles' bias-table builder."""
    from dinat_backbone.analysis.kernel_static import model_variants
    variants = model_variants()
    assert len(set(variants)) == len(variants) == 70
    chosen = [v for v in variants if v.dtype == 'bf16' and v.block_d == 32
              or v.kernel == 'rpb_tiles']
    chosen += [v for v in variants if v.block_d == 64 and v.has_rpb and v.dtype != 'bf16'
               and v.deterministic == (v.rpb_size == 32)]
    return chosen


def test_kernels_do_not_spill():
    """ptxas -v for sm_90 and sm_80 (Triton ships ptxas; no GPU needed): no register spills,
    and the report's last line counts every compiled variant."""
    from dinat_backbone.analysis.kernel_static import static_report
    variants = representative_variants()
    lines = []
    total = static_report(archs=(90, 80), out=lines.append, variants=variants)
    rows = [line for line in lines if line.startswith('| sm_')]
    assert len(rows) == 2 * len(variants)
    spilling = [row for row in rows if row.split(' | ')[4] != '0']
    assert total == 0 and not spilling, '\n'.join(spilling)
    assert lines[-1] == f'spills: 0 bytes in {2 * len(variants)} variants'
    for row in rows:  # occupancy as a number: resident warps per SM / 64
        assert 0 < float(row.strip('| ').split(' | ')[-1]) <= 1


@pytest.mark.parametrize('height,width,dilation', [(9, 10, 1), (15, 16, 2), (22, 21, 3)])
def test_benchmark_gpu_flex_peer_is_neighbourhood_attention(benchmark_gpu, height, width,
                                                            dilation):
    """The FlexAttention peer (eager here: compiled flex is GPU-only) computes na2d with rpb:
    shifted borders, groups of unequal length."""
    from dinat_backbone.ops import na2d_gather
    q, k, v, rpb = benchmark_gpu.random_inputs((1, height, width, 2, 8), 7, torch.float64,
                                               torch.device('cpu'))
    flex = benchmark_gpu.flex_neighbourhood(height, width, dilation, torch.device('cpu'),
                                            compile=False)
    torch.testing.assert_close(flex(q, k, v, rpb), na2d_gather(q, k, v, 7, dilation, rpb=rpb),
                               rtol=0, atol=1e-12)
