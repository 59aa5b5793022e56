"""The model zoo (``weights.zoo``): its tables (names, URLs, reported results, configs) and
docs/model_zoo.md written from them."""
import dataclasses
from pathlib import Path

import pytest

from dinat_backbone.models import DiNAT
from dinat_backbone.weights import read_checkpoint
from dinat_backbone.weights.zoo import (IMAGENET_CHECKPOINTS, TASK_CHECKPOINTS, fetch_checkpoint,
                                        get_checkpoint_url, get_hf_url, get_pretrained,
                                        list_checkpoints, resolve_checkpoint)

from helpers import REPO_ROOT, free_port, serve


def test_model_zoo_tables():
    assert get_checkpoint_url('dinat_mini.in1k') == \
        'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
    assert resolve_checkpoint('dinat_tiny.in1k').endswith('/imagenet1k/dinat_tiny_in1k_224.pth')
    assert resolve_checkpoint('/some/file.pth') == '/some/file.pth'
    assert get_hf_url('dinat_base.in1k') == \
        'https://huggingface.co/shi-labs/dinat-base-in1k-224/resolve/main/pytorch_model.bin'
    with pytest.raises(KeyError):
        get_checkpoint_url('dinat_huge.in1k')
    with pytest.raises(KeyError, match='no Hugging Face port'):
        get_hf_url('dinat_large.in22k')
    assert [(c.arch, c.top1, c.params_m) for c in IMAGENET_CHECKPOINTS.values()][:4] == [
        ('mini', 81.8, 20), ('tiny', 82.7, 28), ('small', 83.8, 51), ('base', 84.4, 90)]
    assert get_pretrained('dinat_large_384.in22k_ft_in1k').top1 == 87.4
    assert get_pretrained('dinat_large_384_k11.in22k_ft_in1k').kernel_size == 11
    assert all(c.url.startswith('https://shi-labs.com/projects/dinat/checkpoints/')
               and c.license == 'MIT' for c in list(IMAGENET_CHECKPOINTS.values())
               + list(TASK_CHECKPOINTS.values()))
    assert all(c.arch in DiNAT.arch_zoo for c in IMAGENET_CHECKPOINTS.values())

    # 13 mmdet 2 / mmseg 0 models + the 8 Mask2Former ones (tests/test_mask2former_weights.py)
    assert len(TASK_CHECKPOINTS) == 21 and len(list_checkpoints()) == 21 + len(
        IMAGENET_CHECKPOINTS)
    assert sum(c.method == 'Mask2Former' for c in TASK_CHECKPOINTS.values()) == 8
    configs = sorted(c.config for c in TASK_CHECKPOINTS.values())
    assert configs[:5] == [f'configs/detection/cascade-mask-rcnn_dinat-{a}_fpn_ms-crop-3x_coco.py'
                           for a in 'blmst']
    assert 'configs/segmentation/upernet_dinat-l_8xb2-160k_ade20k-640x640.py' in configs
    assert 'configs/segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py' in configs
    assert [c for c in configs if not (REPO_ROOT / c).is_file()] == []
    results = {(c.method, c.arch): (c.box_ap, c.mask_ap, c.miou, c.miou_ms)
               for c in TASK_CHECKPOINTS.values()}
    assert results[('Mask R-CNN', 'small')] == (49.3, 44.0, None, None)
    assert results[('Cascade Mask R-CNN', 'large')] == (55.3, 47.8, None, None)
    assert results[('UPerNet', 'mini')] == (None, None, 45.8, 47.2)
    assert results[('UPerNet', 'large')] == (None, None, 54.0, 54.9)
    assert TASK_CHECKPOINTS['upernet_dinat-l_8xb2-160k_ade20k-640x640'].pretrained == \
        'dinat_large.in22k'
    assert all(c.pretrained in IMAGENET_CHECKPOINTS for c in TASK_CHECKPOINTS.values())


def test_model_zoo_doc_has_every_row_with_its_command():
    text = (REPO_ROOT / 'docs' / 'model_zoo.md').read_text()
    # Mask2Former rows have other columns: tests/test_mask2former_weights.py checks them.
    entries = [e for e in TASK_CHECKPOINTS.values() if e.method != 'Mask2Former']
    assert len(entries) == 13
    for entry in entries:
        assert (REPO_ROOT / entry.config).is_file(), entry.config
        command = f'python tools/test.py {entry.config} \\\n    {entry.url}'
        assert command + '\n' in text, entry.name
        scores = (f'{entry.box_ap} | {entry.mask_ap}' if entry.dataset == 'COCO' else
                  f'{entry.miou} | {entry.miou_ms}')
        links = (f'[{Path(entry.config).name}](../{entry.config}) | '
                 f'[{Path(entry.url).name}]({entry.url}) |')
        assert f'| {scores} | {entry.params_m}M | {entry.flops_g}G | {links}' in text, entry.name
        assert (command + ' --tta\n' in text) == (entry.dataset == 'ADE20K'), entry.name
    for path in ('data/coco/', 'instances_val2017.json', 'val2017/',
                 'data/ade/ADEChallengeData2016/', 'images/', 'annotations/', 'validation/'):
        assert path in text


def test_unreachable_urls_and_zoo_names_fail_with_one_line(monkeypatch, tmp_path):
    """Offline (here: a port nobody listens on, and a missing file on a live server), a URL or
    zoo name fails with one line naming the URL and what to give instead; nothing is cached."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))  # the download cache
    dead = f'http://127.0.0.1:{free_port()}/imagenet1k/dinat_tiny_in1k_224.pth'
    with pytest.raises(ConnectionError) as error:
        read_checkpoint(dead)
    message = str(error.value)
    assert message.startswith(f'Cannot download {dead}: ') and '\n' not in message
    assert "give the file's path instead, e.g. checkpoint='/path/to/dinat_tiny_in1k_224.pth'" \
        in message
    assert 'put the file at ' in message and 'dinat_tiny_in1k_224.pth, or give' in message
    assert error.value.__cause__ is None and error.value.__suppress_context__

    # a zoo name whose host is unreachable: the name and its URL are named
    entry = IMAGENET_CHECKPOINTS['dinat_tiny.in1k']
    monkeypatch.setitem(IMAGENET_CHECKPOINTS, entry.name, dataclasses.replace(entry, url=dead))
    backbone = DiNAT(arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                               mlp_ratio=1.),
                     init_cfg=dict(type='Pretrained', checkpoint='dinat_tiny.in1k'))
    with pytest.raises(ConnectionError, match=r"^Cannot download 'dinat_tiny\.in1k' \(http://"):
        backbone.init_weights()

    # an HTTP error is a URL that cannot be fetched too
    (tmp_path / 'served').mkdir()
    with serve(tmp_path / 'served') as base:
        with pytest.raises(ConnectionError) as error:
            fetch_checkpoint(f'{base}/missing.pth')
    assert str(error.value).startswith(
        f'Cannot download {base}/missing.pth: File not found. Nothing was cached. Without '
        'network access')
    assert not list((tmp_path / 'torch').rglob('*.pth'))
    assert fetch_checkpoint('/some/file.pth') == '/some/file.pth'
