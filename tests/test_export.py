"""ONNX export (``tools/export_onnx.py``): a tiny DiNAT backbone and the UPerNet sample segmentor
run in onnxruntime as in PyTorch at sizes other than the traced one, with batch, height and
width dynamic, including sizes at which attention pads levels smaller than
``kernel_size * dilation`` while the traced size pads none, and the reverse.

Symbolic tracing is slow on CPU (about 15 s per block), so each model is exported once, with
one block per level."""
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dinat_backbone.models import DiNAT

from helpers import REPO_ROOT, SAMPLE_SEG_CONFIG, assert_ok, load_tool

export_onnx = load_tool('export_onnx')

# Two levels (the segmentor test covers four): attention needs k*d = 12 and 6 pixels wide maps.
BACKBONE = dict(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2], mlp_ratio=2.),
                kernel_size=3, dilations=[[4], [2]], out_indices=(0, 1))
MEAN, STD = [100., 110., 120.], [50., 60., 70.]
# Traced at 64x64, where no level of the backbone is padded. Checked (batch, height, width)
# where both levels are padded in width (45x30: maps 12x8, 6x4) or height (21x100: 6x25, 3x13),
# or neither (90x70: 23x18, 12x9); odd sizes, batch 1 and 2.
EXPORT_SHAPE = (64, 64)
CHECK_INPUTS = [(2, 45, 30), (1, 21, 100), (1, 90, 70)]


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Seeded random values for every parameter and BN statistic (no identity layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.2
                if name.endswith('running_var'):
                    values = values.abs() + 0.5
                tensor.copy_(values)


def run_onnx(path: str, x: torch.Tensor) -> list:
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {'image': x.numpy()})


def test_help_explains_the_tool():
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'export_onnx.py'),
                             '--help'], capture_output=True, text=True, timeout=120)
    assert_ok(result)
    for text in ('--model {backbone,segmentor}', '--shape H W', '--opset', '--out',
                 '--seg-output', 'dynamic', 'onnxruntime'):
        assert text in result.stdout


def test_unknown_arch_missing_config_and_wrong_codebase_fail_clearly(tmp_path, capsys):
    assert export_onnx.main(['nano']) == 1
    assert "'nano' is neither a config file" in capsys.readouterr().err
    assert export_onnx.main([str(tmp_path / 'missing.py')]) == 1
    assert 'Config file not found' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='needs an mmseg config file'):
        export_onnx.main(['mini', '--model', 'segmentor'])


def test_backbone_export_command(tmp_path, capsys):
    model = DiNAT(**BACKBONE, drop_path_rate=0.).eval()
    randomise(model, seed=1)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'backbone.pth')
    config = tmp_path / 'tiny_dinat.py'
    config.write_text(f"model = dict(\n    backbone=dict(type='DiNAT', **{BACKBONE!r}),\n"
                      f"    data_preprocessor=dict(mean={MEAN}, std={STD}, bgr_to_rgb=True))\n")
    out = tmp_path / 'backbone.onnx'

    status = export_onnx.main([str(config), '--checkpoint', str(tmp_path / 'backbone.pth'),
                               '--out', str(out), '--shape', *map(str, EXPORT_SHAPE),
                               '--verify-shapes', '37', '50', '20', '28'])
    printed = capsys.readouterr().out
    assert status == 0, printed
    # The tool's own check, at two other sizes.
    diffs = re.findall(r'Verified (\d+x\d+) \(batch (\d)\) with onnxruntime: max abs '
                       r'difference (\S+)', printed)
    assert [d[:2] for d in diffs] == [('37x50', '1'), ('20x28', '2')]
    assert all(float(d[2]) < 1e-4 for d in diffs), printed

    proto = onnx.load(str(out))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in proto.graph.input]
    assert dims == [['batch', 3, 'height', 'width']]
    assert [v.name for v in proto.graph.output] == ['level0', 'level1']
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata['strides']) == [4, 8]
    assert json.loads(metadata['mean']) == MEAN and json.loads(metadata['bgr_to_rgb']) is True

    for batch, height, width in CHECK_INPUTS:
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            expected = model(x)
        got = run_onnx(str(out), x)
        assert len(got) == len(expected) == 2
        for level, (ours, theirs) in enumerate(zip(got, expected)):
            assert ours.shape == tuple(theirs.shape), (height, width, level)
            diff = float(np.abs(ours - theirs.numpy()).max())
            assert diff < 1e-4, f'{height}x{width} level {level}: max abs diff {diff}'


@pytest.fixture(scope='module')
def sample_segmentor_config(tmp_path_factory) -> str:
    """The UPerNet sample config with one block per level (export time), dilations > 1 kept:
    levels 2 and 3 (k*d = 6 and 3) are padded at 64x64 already, level 0 (12) at 45x30."""
    path = tmp_path_factory.mktemp('export') / 'upernet_sample_one_block.py'
    path.write_text(f"_base_ = [{str(SAMPLE_SEG_CONFIG)!r}]\n"
                    "model = dict(backbone=dict(arch=dict(depths=[1, 1, 1, 1]),\n"
                    "                           dilations=[[4], [2], [2], [1]]))\n")
    return str(path)


def test_upernet_sample_segmentor_export(sample_segmentor_config, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    # The reference: mmseg's own model, built without the tool, with random weights.
    init_default_scope('mmseg')
    segmentor = MODELS.build(Config.fromfile(sample_segmentor_config).model).eval()
    randomise(segmentor, seed=2)
    checkpoint = tmp_path / 'segmentor.pth'
    torch.save({'state_dict': segmentor.state_dict(), 'meta': {}}, checkpoint)

    module, names, metadata = export_onnx.build_model(
        sample_segmentor_config, 'segmentor', checkpoint=str(checkpoint))
    assert names == ['logits'] and metadata['num_classes'] == '150'
    out = export_onnx.export_onnx(module, str(tmp_path / 'upernet.onnx'), EXPORT_SHAPE, names,
                                  metadata=metadata)
    for batch, height, width in CHECK_INPUTS:
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(width))
        with torch.no_grad():
            # mmseg's whole-image inference: decode head, then resize to the input.
            expected = segmentor.encode_decode(x, [dict(img_shape=(height, width))] * batch)
        (got, ) = run_onnx(out, x)
        assert got.shape == (batch, 150, height, width)
        diff = float(np.abs(got - expected.numpy()).max())
        assert diff < 1e-4, f'{height}x{width}: max abs diff {diff}'


@pytest.mark.parametrize('output_size', [1, 2, 3, 6, (2, 5), (None, 3)])
def test_adaptive_pooling_replacement_matches_pytorch_at_every_size(output_size):
    """What the exported PPM computes (torch's own export fixes the traced size's bins)."""
    pool = torch.nn.AdaptiveAvgPool2d(output_size)
    head = torch.nn.Sequential(torch.nn.Identity(), pool)
    assert export_onnx.replace_adaptive_pooling(head) == 1
    assert isinstance(head[1], export_onnx.AdaptiveAvgPool2dForExport)
    for height, width in [(16, 16), (12, 7), (1, 4), (2, 7), (5, 3), (6, 25), (1, 1)]:
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        torch.testing.assert_close(head(x), pool(x), rtol=0, atol=1e-12)
