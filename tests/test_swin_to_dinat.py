"""The README's "Using the backbone" snippets, applied to upstream mmseg's Swin UPerNet config
and mmdet's Swin Mask R-CNN config as a user would, train one iteration on the samples, with no
weight decay on DiNAT's `rpb` (as in our own configs). Overridden here only what cannot run on
this machine: no download (init_cfg=None), the sample data at a tiny size, SyncBN as BN."""
import re
from pathlib import Path

import torch
from mmengine.config import Config

from dinat_backbone.engine.runner import sync_bn_to_bn

from helpers import REPO_ROOT


def readme_snippet(base_prefix: str) -> str:
    """The README's python block whose ``_base_`` starts with ``base_prefix``."""
    blocks = re.findall(r'```python\n(.*?)```', (REPO_ROOT / 'README.md').read_text(), re.S)
    found = [b for b in blocks if b.startswith(f"_base_ = ['{base_prefix}")]
    assert len(found) == 1, f'expected one README snippet for {base_prefix}'
    return found[0]


def _run_one_iteration(cfg: Config, tmp_path: Path):
    """Build the config's model, optimizer and training dataloader with mmengine's Runner and
    run one ``train_step``; the model and the weight decay of each parameter."""
    from mmengine.runner import Runner
    cfg.model.backbone.init_cfg = None
    sync_bn_to_bn(cfg.model)
    cfg.work_dir = str(tmp_path)
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.indices = 2
    runner = Runner(model=cfg.model, work_dir=cfg.work_dir, train_dataloader=cfg.train_dataloader,
                    optim_wrapper=cfg.optim_wrapper, train_cfg=dict(by_epoch=False, max_iters=1),
                    default_scope=cfg.default_scope)
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    model = runner.model
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: group['weight_decay']
             for group in optim_wrapper.optimizer.param_groups for p in group['params']}
    batch = next(iter(runner.build_dataloader(cfg.train_dataloader)))
    model.train()
    losses = model.train_step(batch, optim_wrapper)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    return model, decay


def _check_decay(model, decay, weight_decay: float) -> None:
    rpbs = {n for n in decay if n.endswith('.attn.rpb')}
    assert len(rpbs) == sum(map(len, model.backbone.dilations)) > 0  # one per block
    assert {decay[n] for n in rpbs} == {0.0}  # Swin's own rule would decay them
    assert decay['backbone.levels.2.blocks.1.norm1.weight'] == 0.0
    assert decay['backbone.levels.2.blocks.1.attn.qkv.weight'] == weight_decay


def test_mmseg_swin_upernet_becomes_dinat(sample_data_root, tmp_path):
    (tmp_path / 'cfg.py').write_text(readme_snippet('mmseg::swin/'))
    cfg = Config.fromfile(tmp_path / 'cfg.py')
    assert cfg.model.backbone.type == 'DiNAT' and cfg.model.decode_head.type == 'UPerHead'
    # the sample at 64 px
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.train_dataloader.dataset.data_root = sample_data_root['ade20k']
    for step in cfg.train_dataloader.dataset.pipeline:
        if step.type == 'RandomResize':
            step.scale = (128, 64)
        elif step.type == 'RandomCrop':
            step.crop_size = (64, 64)
    model, decay = _run_one_iteration(cfg, tmp_path)
    assert model.backbone.dilations[0] == [1, 16, 1]  # the 'ade20k' preset
    _check_decay(model, decay, cfg.optim_wrapper.optimizer.weight_decay)


def test_mmdet_swin_mask_rcnn_becomes_dinat(sample_data_root, tmp_path):
    (tmp_path / 'cfg.py').write_text(readme_snippet('mmdet::swin/'))
    cfg = Config.fromfile(tmp_path / 'cfg.py')
    assert cfg.model.backbone.type == 'DiNAT' and cfg.model.type == 'MaskRCNN'
    # the sample at 96 px instead of the multi-scale 480-800 px crops
    cfg.train_dataloader.dataset.data_root = sample_data_root['coco'] + '/'
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[[s.type for s in pipeline].index('RandomChoice')] = dict(
        type='Resize', scale=(96, 96), keep_ratio=True)
    model, decay = _run_one_iteration(cfg, tmp_path)
    assert model.backbone.dilations[0] == [1, 28, 1]  # the 'coco' preset
    _check_decay(model, decay, cfg.optim_wrapper.optimizer.weight_decay)
