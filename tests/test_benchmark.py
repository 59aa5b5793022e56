"""FLOP counting (neighbourhood attention and Swin's window attention counted alike, checked
against hand-computed counts), memory measurement in clean worker processes, and
tools/benchmark.py end to end on tiny inputs."""
import importlib.util
import re
from types import ModuleType
from typing import List

import pytest
import torch
import torch.nn as nn

from dinat_backbone import DiNAT
from dinat_backbone.analysis.benchmark_utils import CleanProcessMemory
from dinat_backbone.analysis.flops import counted_na2d, flop_analyzer, na2d_flops
from dinat_backbone.models import DiNATBlock, NeighborhoodAttention2D, dilation_preset
from dinat_backbone.ops import na2d

from helpers import REPO_ROOT, assert_ok, run_script


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location('tools_benchmark',
                                                  REPO_ROOT / 'tools' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attention(batch: int, heads: int, height: int, width: int, window: int,
               head_dim: int) -> int:
    """QK and AV multiply-adds: every query against ``window`` keys, twice."""
    return 2 * batch * heads * height * width * window * head_dim


def _linear(tokens: int, c_in: int, c_out: int) -> int:
    return tokens * c_in * c_out


def _layer_norm(tokens: int, channels: int) -> int:
    return 5 * tokens * channels  # mmengine's estimate for an affine norm


def _conv3x3(out_h: int, out_w: int, c_in: int, c_out: int) -> int:
    return out_h * out_w * c_out * c_in * 9


# ------------------------------------------------------------------------ neighbourhood attention
def test_na2d_flops_formula():
    assert na2d_flops(2, 12, 14, 4, 8, 5) == 2 * 2 * 4 * 12 * 14 * 25 * 8
    assert na2d_flops(1, 10, 10, 3, 16, (3, 5)) == 2 * 1 * 3 * 10 * 10 * 15 * 16
    with pytest.raises(ValueError):
        na2d_flops(1, 10, 10, 3, 16, 4)  # even kernel


@pytest.mark.parametrize('height, width, padded_h, padded_w', [
    (12, 14, 12, 14),   # k*d = 10 fits: no padding
    (6, 9, 10, 10),     # smaller than k*d: qkv and attention run on the zero-padded 10x10 map
])
def test_attention_layer_flops_exact(height, width, padded_h, padded_w):
    batch, channels, heads, kernel = 2, 32, 4, 5
    layer = NeighborhoodAttention2D(channels, heads, kernel_size=kernel, dilation=2).eval()
    analyzer = flop_analyzer(layer, torch.randn(batch, height, width, channels))
    qkv = _linear(batch * padded_h * padded_w, channels, 3 * channels)
    attention = _attention(batch, heads, padded_h, padded_w, kernel * kernel, channels // heads)
    proj = _linear(batch * height * width, channels, channels)
    assert dict(analyzer.by_operator()) == {'linear': qkv + proj, 'na2d_counted': attention}
    assert analyzer.total() == qkv + attention + proj


def test_block_flops_exact():
    channels, heads, kernel, height, width = 32, 4, 7, 14, 16
    block = DiNATBlock(channels, heads, kernel_size=kernel, dilation=2, mlp_ratio=3.).eval()
    analyzer = flop_analyzer(block, torch.randn(1, height, width, channels))
    tokens = height * width
    expected = (2 * _layer_norm(tokens, channels)
                + _linear(tokens, channels, 3 * channels)
                + _attention(1, heads, height, width, kernel * kernel, channels // heads)
                + _linear(tokens, channels, channels)
                + _linear(tokens, channels, 3 * channels) + _linear(tokens, 3 * channels, channels))
    assert analyzer.total() == expected


def test_tiny_dinat_flops_exact():
    """A whole (tiny) backbone: tokenizer, blocks, downsamplers, output norms; nothing of the
    tiled operator's internals (bmm, baddbmm) may leak into the count."""
    arch = dict(embed_dims=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
    kernel, size = 3, 96
    model = DiNAT(arch, kernel_size=kernel, dilations=[[2], [1, 3], [1], [1]]).eval()
    analyzer = flop_analyzer(model, torch.randn(1, 3, size, size))

    expected = _conv3x3(48, 48, 3, 8) + _conv3x3(24, 24, 8, 16) + _layer_norm(24 * 24, 16)
    side = 24
    for level, depth in enumerate(arch['depths']):
        channels, heads, tokens = 16 * 2**level, arch['num_heads'][level], side * side
        block = (2 * _layer_norm(tokens, channels) + _linear(tokens, channels, 3 * channels)
                 + _attention(1, heads, side, side, kernel * kernel, channels // heads)
                 + _linear(tokens, channels, channels)
                 + 2 * _linear(tokens, channels, 2 * channels))
        expected += depth * block + _layer_norm(tokens, channels)  # blocks, output norm
        if level < 3:
            side //= 2
            expected += (_conv3x3(side, side, channels, 2 * channels)
                         + _layer_norm(side * side, 2 * channels))
    assert analyzer.total() == expected
    assert set(analyzer.by_operator()) == {'conv', 'layer_norm', 'linear', 'na2d_counted'}


def test_counted_op_changes_nothing_but_the_trace():
    model = DiNAT(dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
                       mlp_ratio=2.), dilations=[[2], [1], [1], [1]]).eval()
    x = torch.randn(1, 3, 64, 64)
    other = DiNAT(dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
                       mlp_ratio=2.), dilations=[[2], [1], [1], [1]])
    layers = [m for m in model.modules() if isinstance(m, NeighborhoodAttention2D)]
    with torch.no_grad():
        expected = model(x)
        with counted_na2d(model):
            assert all(layer.attention_op is not na2d for layer in layers)
            assert all(m.attention_op is na2d for m in other.modules()
                       if isinstance(m, NeighborhoodAttention2D))
            counted = model(x)
    assert all(layer.attention_op is na2d for layer in layers)
    for a, b in zip(expected, counted):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------- Swin, by the same analysis
class _SwinAttention(nn.Module):
    """mmseg's shifted-window attention on a fixed map size (the tracer takes tensors only)."""

    def __init__(self, channels: int, heads: int, window: int, hw_shape: tuple) -> None:
        super().__init__()
        from mmseg.models.backbones.swin import ShiftWindowMSA
        self.attn = ShiftWindowMSA(channels, heads, window, shift_size=window // 2)
        self.hw_shape = hw_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, self.hw_shape)


@pytest.mark.parametrize('height, width, padded_h, padded_w', [
    (14, 21, 14, 21),   # multiples of the window
    (10, 12, 14, 14),   # Swin pads to whole windows, and computes (and is counted) on them
])
def test_swin_window_attention_flops_exact(height, width, padded_h, padded_w):
    batch, channels, heads, window = 2, 32, 4, 7
    layer = _SwinAttention(channels, heads, window, (height, width)).eval()
    analyzer = flop_analyzer(layer, torch.randn(batch, height * width, channels))
    tokens = batch * padded_h * padded_w
    attention = _attention(batch, heads, padded_h, padded_w, window * window, channels // heads)
    assert analyzer.by_operator()['matmul'] == attention
    assert analyzer.total() == (_linear(tokens, channels, 3 * channels) + attention
                                + _linear(tokens, channels, channels))


# ------------------------------------------------------------------------- memory measurement
def _allocating_job(mib: int):
    """A run that holds ``mib`` MiB of written memory at its peak (workers unpickle this)."""
    if mib < 0:
        raise ValueError('negative size')

    def run() -> None:
        torch.ones(mib * 2**18).sum()  # 4-byte floats
    return run


def test_clean_process_memory_measures_the_run():
    memory = CleanProcessMemory()
    try:
        peaks = [memory.peak_mib(_allocating_job, mib) for mib in (64, 256)]
        with pytest.raises(RuntimeError, match='ValueError: negative size'):
            memory.peak_mib(_allocating_job, -1)
        assert memory.peak_mib(_allocating_job, 64) == pytest.approx(peaks[0], abs=4)
    finally:
        memory.close()
    assert 60 < peaks[0] < 64 + 16 and 252 < peaks[1] < 256 + 16
    assert not memory._server.is_alive()


# ------------------------------------------------------------------------------ tools/benchmark.py
def test_level_sizes_and_fitted_dilations():
    bench = _load_benchmark()
    model = DiNAT('mini', dilations='imagenet').eval()
    with torch.no_grad():
        shapes = [tuple(o.shape[-2:]) for o in model(torch.randn(1, 3, 100, 70))]
    assert bench.level_sizes(100, 70) == shapes == [(25, 18), (13, 9), (7, 5), (4, 3)]

    depths = DiNAT.arch_zoo['tiny']['depths']
    for height, width, preset in [(512, 512, 'ade20k'), (800, 1216, 'coco')]:
        dilations, lowered = bench.fitted_dilations(preset, depths, height, width)
        assert not lowered and dilations == dilation_preset(preset, depths)
    # 64x64: maps 16, 8, 4, 2 allow dilations up to 2, 1, 1, 1 with k = 7
    dilations, lowered = bench.fitted_dilations('ade20k', [3, 4, 6, 5], 64, 64)
    assert lowered and dilations == [[1, 2, 1], [1] * 4, [1] * 6, [1] * 5]


def test_bad_size_is_a_clear_error(capsys):
    bench = _load_benchmark()
    for size, message in [('512', 'HxW:preset'),
                          ('512x512:nope', "unknown dilation preset 'nope'")]:
        with pytest.raises(SystemExit):
            bench.parse_args(['--sizes', size])
        assert message in capsys.readouterr().err


def _table(text: str, first_cell: str) -> List[List[str]]:
    """Rows (lists of cells) of the markdown table whose header starts with ``first_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f'| {first_cell} |'))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


def _number(cell: str) -> float:
    return float(cell.rstrip('x%').replace(',', ''))


def test_benchmark_quick_prints_every_row():
    result = run_script('benchmark.py', ['--quick'], timeout=240)
    assert_ok(result)
    rows = _table(result.stdout, 'model')
    expected = [(model, size) for size in ('64x64 (ade20k)', '64x96 (coco)')
                for model in ('dinat-mini', 'dinat-tiny', 'swin-t', 'resnet-50')]
    assert [(row[0], row[1]) for row in rows] == expected
    for row in rows:
        assert row[2] == '1'
        assert all(_number(cell) > 0 for cell in row[3:5] + row[6:8])  # params, FLOPs, times
        assert all(_number(cell) >= 0 for cell in row[5:6] + row[8:10])  # attn FLOPs, memory
        assert all(cell.endswith('x') for cell in row[10:])  # ratios to Swin-T
        if row[0] == 'swin-t':
            assert row[10:] == ['1.00x'] * 3
    # DiNAT-T and Swin-T have the same size (27.4M / 27.5M parameters)
    params = {row[0]: _number(row[3]) for row in rows}
    assert params['dinat-tiny'] == pytest.approx(27.4, abs=0.05)
    assert params['swin-t'] == pytest.approx(27.5, abs=0.05)
    assert params['resnet-50'] == pytest.approx(23.5, abs=0.05)


def test_benchmark_sections():
    """--with-cp, --memory-scaling and --profile on tiny inputs."""
    result = run_script('benchmark.py', [
        '--models', 'dinat-mini', '--sizes', '64x64:ade20k', '--batch', '1', '--repeats', '1',
        '--skip-backward', '--quick', '--with-cp', '--memory-scaling', '--profile'], timeout=240)
    assert_ok(result)
    out = result.stdout

    row, = _table(out, 'model')
    assert row[:3] == ['dinat-mini', '64x64 (ade20k)', '1'] and row[7] == '-'  # no backward
    cp_rows = _table(out, 'with_cp')
    assert [r[0] for r in cp_rows] == ['False', 'True'] and cp_rows[0][3] == '1.00x'
    assert re.search(r'Outputs and all \d+ parameter gradients: bit-identical', out)

    scaling = _table(out, 'input')
    assert [r[0] for r in scaling] == ['64x64', '128x128', '256x256']
    assert [r[1] for r in scaling] == ['256', '1024', '4096']  # level-0 tokens
    assert [r[6] for r in scaling] == ['1x', '4x', '16x']

    ops = _table(out, 'operator')
    assert len(ops) == 15
    assert all(op[0].startswith(('`aten::', '`dinat_na2d::')) for op in ops)
    kinds = _table(out, 'kind of work')
    assert sum(_number(k[1]) for k in kinds) == pytest.approx(100, abs=0.5)
    assert any(k[0].startswith('attention operator') and _number(k[1]) > 0 for k in kinds)


def test_operator_benchmark_runs_its_peers():
    """tools/benchmark_op.py on the smallest level: a row per dilation, with the backend that
    na2d picks (the CPU kernels at d=1, the tiled version where a group fits one tile)."""
    result = run_script('benchmark_op.py', ['--levels', '4', '--repeats', '1',
                                            '--skip', 'natten', 'naive'], timeout=240)
    assert_ok(result)
    rows = _table(result.stdout, 'level')
    assert [(r[3], r[4]) for r in rows] == [('1', 'cpu'), ('2', 'torch')]
    for row in rows:
        assert all(_number(cell) > 0 for cell in row[5:11])  # ours, tiled and window times
