"""``dinat_backbone.engine.runner``, the Runner set-up of tools/train.py and tools/test.py, called
directly: config loading, work_dir, the dataset checks and ``--launcher pytorch`` on CPU (the
tools' command lines are tested in test_tools.py)."""
import os

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

from dinat_backbone.engine.runner import (check_dataset_paths, load_config, set_work_dir,
                                          setup_distributed)

from helpers import free_port


def _exit_message(function, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        function(*args)
    return str(exit_info.value.code)


def test_load_config_errors(tmp_path):
    assert 'Config file not found' in _exit_message(load_config, str(tmp_path / 'nope.py'))
    config = tmp_path / 'other_codebase.py'
    config.write_text("default_scope = 'mmpretrain'\n")
    message = _exit_message(load_config, str(config))
    assert "default_scope is 'mmpretrain'" in message and "'mmseg'" in message


def test_work_dir_priority(tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path / 'from_config')))
    set_work_dir(cfg, str(tmp_path / 'from_cli'), 'configs/x.py')
    assert cfg.work_dir == str(tmp_path / 'from_cli')
    cfg = Config(dict(work_dir=str(tmp_path / 'from_config')))
    set_work_dir(cfg, None, 'configs/x.py')
    assert cfg.work_dir == str(tmp_path / 'from_config')
    cfg = Config(dict())
    set_work_dir(cfg, None, 'configs/upernet_x.py')
    assert cfg.work_dir == os.path.join('./work_dirs', 'upernet_x')
    (tmp_path / 'file').write_text('')
    assert 'is a file' in _exit_message(set_work_dir, Config(dict()), str(tmp_path / 'file'), '')


def test_dataset_paths_inside_wrappers(tmp_path):
    (tmp_path / 'ade' / 'images').mkdir(parents=True)
    leaf = dict(type='ADE20KDataset', data_root=str(tmp_path / 'ade'),
                data_prefix=dict(img_path='images', seg_map_path='annotations'))
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='ConcatDataset', datasets=[dict(type='RepeatDataset', times=2, dataset=leaf)]))))
    message = _exit_message(check_dataset_paths, cfg, ['train_dataloader'])
    missing = message.split('Missing:')[1].split('This config')[0]
    assert f'{tmp_path}/ade/annotations (data_prefix.seg_map_path)' in missing
    assert 'images' not in missing  # present
    assert 'Standard layout of ADE20K' in message
    (tmp_path / 'ade' / 'annotations').mkdir()
    check_dataset_paths(cfg, ['train_dataloader', 'val_dataloader'])  # all there; no val set
    remote = dict(leaf, data_root='s3://bucket/ade')
    check_dataset_paths(Config(dict(test_dataloader=dict(dataset=remote))), ['test_dataloader'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='the path for machines without CUDA')
def test_launcher_pytorch_without_cuda(monkeypatch):
    cfg = Config(dict(model=dict(backbone=dict(norm_cfg=dict(type='BN')),
                                 decode_head=dict(norm_cfg=dict(type='SyncBN'))),
                      sync_bn='torch'))
    setup_distributed(cfg, 'none')  # no-op
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert 'torchrun' in _exit_message(setup_distributed, cfg, 'slurm')
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    assert 'MASTER_PORT' in _exit_message(setup_distributed, cfg, 'pytorch')

    for key, value in dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    try:
        setup_distributed(cfg, 'pytorch')
        assert dist.is_initialized() and dist.get_backend() == 'gloo'
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model.decode_head.norm_cfg.type == 'BN' and 'sync_bn' not in cfg
