"""``tools/convert_checkpoint.py``: published layouts to ours, losslessly, with or without a
prefix, checking the variant. Its ``--task`` mode (mmdet 2 / mmseg 0 models) is tested with
the task checkpoints, in test_task_checkpoints.py."""
import subprocess
import sys

import pytest
import torch

from dinat_backbone.models import DiNAT
from dinat_backbone.weights import convert_to_backbone, load_pretrained, read_checkpoint

from helpers import TOOLS, load_tool
from tiny_checkpoints import (assert_same_tensors, expected_from_hf, hf_state, shape_only_state,
                              tiny_dinat)

convert_checkpoint = load_tool('convert_checkpoint')


@pytest.mark.parametrize('source', ['original', 'cls_layer_scale', 'backbone_all'])
def test_convert_tool_round_trip_is_lossless(hf_dir, original_files, tmp_path, source):
    src = (original_files['state_dict'] if source == 'original'
           else hf_dir / source / 'model.safetensors')
    expected, _ = convert_to_backbone(read_checkpoint(str(src)))
    dst = tmp_path / 'out.pth'
    assert convert_checkpoint.main([str(src), str(dst)]) == 0
    saved = torch.load(dst, weights_only=False)
    assert set(saved) == {'state_dict', 'meta'}
    assert_same_tensors(saved['state_dict'], expected)
    assert saved['meta']['source_layout'] == ('original' if source == 'original'
                                              else 'huggingface')
    # converting the converted file changes nothing
    again = tmp_path / 'again.pth'
    assert convert_checkpoint.main([str(dst), str(again)]) == 0
    assert_same_tensors(torch.load(again, weights_only=False)['state_dict'], expected)
    # the prefixed form carries the same tensors, and loads as a backbone init too
    prefixed = tmp_path / 'prefixed.pth'
    assert convert_checkpoint.main([str(src), str(prefixed), '--prefix', 'backbone.']) == 0
    state = torch.load(prefixed, weights_only=False)['state_dict']
    assert_same_tensors({k[len('backbone.'):]: v for k, v in state.items()}, expected)
    model = tiny_dinat(layer_scale=1e-5 if source == 'cls_layer_scale' else 0.)
    report = load_pretrained(model, str(prefixed))
    assert report.stripped_prefixes == ['backbone.']


def test_convert_tool_command_line(hf_dir, tmp_path):
    dst = tmp_path / 'cli.pth'
    result = subprocess.run(
        [sys.executable, str(TOOLS / 'convert_checkpoint.py'),
         str(hf_dir / 'cls' / 'pytorch_model.bin'), str(dst), '--keep-classifier'],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'huggingface layout' in result.stdout
    saved = torch.load(dst, weights_only=False)['state_dict']
    assert_same_tensors(saved, expected_from_hf(hf_state(hf_dir, 'cls'), False, classifier=True))


def test_convert_tool_checks_the_arch(tmp_path):
    with torch.device('meta'):
        small = DiNAT(arch='small')
    src = tmp_path / 'small.pth'
    torch.save(shape_only_state(small), src)
    with pytest.raises(ValueError, match='checkpoint looks like DiNAT-Small .* expected '
                                         'DiNAT-Mini'):
        convert_checkpoint.main([str(src), str(tmp_path / 'x.pth'), '--arch', 'mini'])
    assert not (tmp_path / 'x.pth').exists()
