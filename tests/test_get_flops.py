"""tools/get_flops.py: FLOPs of a config's whole model with DiNAT's attention counted exactly
(dinat_backbone.analysis.flops.config_flop_analyzer)."""
import re

import pytest
import torch

from helpers import REPO_ROOT, load_tool

SEG_SAMPLE = REPO_ROOT / 'configs' / 'segmentation' / 'sample' / 'upernet_dinat_sample_ade20k.py'
DET_SAMPLE = REPO_ROOT / 'configs' / 'detection' / 'sample' / 'mask-rcnn_dinat_sample_coco.py'


def _run(capsys, argv):
    assert load_tool('get_flops').main(argv) == 0
    out = capsys.readouterr().out
    total, attention = map(float, re.search(
        r'FLOPs: ([\d.e+-]+) G \(neighbourhood attention: ([\d.e+-]+) G\)', out).groups())
    params = float(re.search(r'Parameters: ([\d.e+-]+) M', out).group(1))
    return out, total * 1e9, attention * 1e9, params * 1e6


def test_segmentor_flops_agree_with_mmengines_count(capsys):
    """The tool's total against mmengine's own analysis of the same model and input (which
    counts the traced attention's einsums to 4 significant digits: test_compile.py)."""
    from mmengine.analysis import get_model_complexity_info, parameter_count
    from mmengine.config import Config
    from mmseg.structures import SegDataSample
    from dinat_backbone.analysis.flops import config_flop_analyzer

    out, total, attention, params = _run(capsys, [str(SEG_SAMPLE), '--shape', '64', '96'])
    assert 'Input shape: (3, 64, 96)' in out
    cfg = Config.fromfile(SEG_SAMPLE)
    model, _ = config_flop_analyzer(cfg, (64, 96))
    assert params == pytest.approx(parameter_count(model)[''], rel=1e-3)
    meta = dict(ori_shape=(64, 96), pad_shape=(64, 96))
    data = model.data_preprocessor({'inputs': [torch.zeros(3, 64, 96)],
                                    'data_samples': [SegDataSample(metainfo=meta)]})
    model.auxiliary_head = None  # mode='tensor' does not run it
    upstream = get_model_complexity_info(model, inputs=data['inputs'], show_table=False,
                                         show_arch=False)['flops']
    assert total == pytest.approx(upstream, rel=0.01)
    assert 0 < attention < total


def test_detector_flops_and_default_shape(capsys):
    out, total, attention, _ = _run(capsys, [str(DET_SAMPLE), '--shape', '96'])
    assert 'Input shape: (3, 96, 96)' in out
    assert 0 < attention < total
    args = load_tool('get_flops').parse_args([str(DET_SAMPLE)])
    assert args.shape is None  # main() then uses DEFAULT_SHAPES['mmdet'], the published size
    assert load_tool('get_flops').DEFAULT_SHAPES == {'mmseg': (512, 2048), 'mmdet': (800, 1280)}


@pytest.mark.parametrize('argv, message', [
    (['missing.py'], "config file not found: 'missing.py'"),
    ([str(SEG_SAMPLE), '--shape', '64', '64', '64'], '--shape takes H W'),
    ([str(SEG_SAMPLE), '--shape', '0'], '--shape takes H W'),
])
def test_bad_arguments_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('get_flops').parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
