"""The Triton backend without a GPU: the kernels under Triton's interpreter (in a subprocess,
see triton_interpreted_cases.py), the choice of backend for CUDA tensors (fake CUDA tensors:
nothing runs on them), the package without Triton, and the GPU benchmark's CPU smoke mode."""
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dinat_backbone.ops import na2d, select_backend

from helpers import REPO_ROOT, load_tool


def run_python(args, interpret, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                        os.environ.get('PYTHONPATH')])))
    env.pop('TRITON_INTERPRET', None)
    if interpret:
        env['TRITON_INTERPRET'] = '1'
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                            capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


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
    out = run_python(['-c', WITHOUT_TRITON], interpret=False)
    assert 'cuda: torch' in out
    assert 'cpu: (1, 9, 9, 1, 4)' in out
    assert "triton: backend='triton' needs the triton package" in out


def test_benchmark_gpu_smoke_on_cpu():
    out = run_python(['tools/benchmark_gpu.py', '--device', 'cpu', '--smoke'], interpret=True)
    assert 'error:' not in out, out
    triton_row = next(line for line in out.splitlines() if '| float32 | triton |' in line)
    errors = [float(cell) for cell in triton_row.strip('| ').split(' | ')[-5:]]
    assert max(errors) <= 1e-5, triton_row  # out, dq, dk, dv, drpb against float64
    assert 'drpb bit-identical: True' in out
    for peer in ('triton', 'tiled', 'window'):
        assert f'| smoke | 1 | 9x10 | 1x2x8 | 1 | float32 | {peer} |' in out
    assert 'DiNAT-T' in out and 'Swin-T' in out  # measured or skipped with the reason


@pytest.fixture(scope='module')
def benchmark_gpu():
    return load_tool('benchmark_gpu')


def test_benchmark_gpu_uses_the_models_dilations(benchmark_gpu):
    """The tool restates DiNAT-T's dilations (the models need mmengine, the GPU machine has
    only torch): they must stay those of the presets."""
    from dinat_backbone.models import DILATION_PRESETS
    for preset, dilations in benchmark_gpu.LEVEL_DILATIONS.items():
        assert dilations == DILATION_PRESETS[preset]


def representative_variants():
    """A deduplicated subset of the compiled variants (all of them take about 2 minutes per
    architecture here): the model's own (bf16 inputs, float32 rpb, head dim 32: every kernel,
    both d(rpb) modes), and per dtype the largest blocks (head dim 64, rpb, both table
    sizes), where registers run out first."""
    from dinat_backbone.analysis.kernel_static import model_variants
    variants = model_variants()
    assert len(set(variants)) == len(variants) == 68
    chosen = [v for v in variants if v.dtype == 'bf16' and v.block_d == 32]
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
