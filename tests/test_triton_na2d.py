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


@pytest.mark.parametrize('deterministic', [False, True])
def test_kernels_compile_for_hopper(deterministic):
    """The interpreter checks values, not types or layouts: the bfloat16 kernels (head dim 32,
    rpb) must also lower to sm_90 machine code (Triton ships ptxas; no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dinat_backbone.ops import _triton_kernels as kernels
    from dinat_backbone.ops.triton_na2d import TILE
    pointers = dict.fromkeys(['Q', 'K', 'V', 'OUT', 'DOUT', 'DQ', 'DK', 'DV'], '*bf16')
    pointers.update(dict.fromkeys(['RPB', 'LSE', 'DELTA', 'DRPB'], '*fp32'))
    common = dict(HAS_RPB=True, PRECISION='tf32', BLOCK_D=32, TILE_Y=TILE, TILE_X=TILE)
    launches = [
        (kernels._na2d_bwd_query_kernel, dict(KEYS_Y=TILE, KEYS_X=TILE, RPB_Y=16, RPB_X=16,
                                              DETERMINISTIC=deterministic), 8)]
    if not deterministic:
        launches += [(kernels._na2d_fwd_kernel, dict(KEYS_Y=TILE, KEYS_X=TILE), 4),
                     (kernels._na2d_bwd_key_kernel, dict(QUERIES_Y=TILE, QUERIES_X=TILE), 8)]
    for fn, constants, warps in launches:
        constants = dict(common, **constants)
        signature = {name: 'constexpr' if name in constants else
                     pointers.get(name, 'fp32' if 'scale' in name else 'i32')
                     for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, signature, constants),
                                  target=GPUTarget('cuda', 90, 32), options={'num_warps': warps})
        assert compiled.asm['cubin'], fn.__name__
        assert 'mma' in compiled.asm['ptx'], fn.__name__  # the matmuls use tensor cores


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
