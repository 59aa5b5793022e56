"""Every config under ``configs/``: loads, matches the paper's recipe, builds and trains.

* Discovery: each config (``_base_`` excluded) is listed below as a paper config, an alias or
  a sample config, so a new config cannot slip through untested.
* Recipe: dilations, drop path, weights, lr / betas / weight decay, schedule, batch size and
  head widths against the tables of the DiNAT paper and reference configs.
* Decay rules: the optimizer wrapper built on the model puts every ``rpb`` and every
  LayerNorm parameter of the backbone in a group without weight decay, and everything else of
  the backbone in a decaying one.
* Build and run: each model, shrunk in the test (tiny DiNAT, SyncBN -> BN, 64 px inputs), takes
  one training step (loss backward) and one inference step.
* Data: paper configs read the real datasets only; sample configs read only the sample, and
  train for a couple of iterations through the Runner on the generated sample data.
"""
import copy
import functools
import inspect
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope

import dinat_backbone  # noqa: F401  (registers DiNAT in mmdet and mmseg)
from dinat_backbone.engine.runner import sync_bn_to_bn
from dinat_backbone.models import DiNAT, dilation_preset

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / 'configs'
ALL_CONFIGS = sorted(
    str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob('*.py') if '_base_' not in p.parts)
# Mask2Former configs have their own recipe tests (tests/test_mask2former_configs.py,
# tests/test_mask2former_samples.py); test_config_loads still covers them here.
MASK2FORMER_CONFIGS = [name for name in ALL_CONFIGS if 'mask2former' in name]

IN1K = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_{}_in1k_224.pth'
IN22K_LARGE = ('https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/'
               'dinat_large_in22k_224.pth')
WIDTHS = {'mini': 64, 'tiny': 64, 'small': 96, 'base': 128, 'large': 192}


def _url(arch: str) -> str:
    return IN22K_LARGE if arch == 'large' else IN1K.format(arch)


# Per-block dilations as written out in the reference configs (SHI-Labs/
# Neighborhood-Attention-Transformer, detection/ and segmentation/configs/dinat/).
def _reference_dilations(task: str, arch: str) -> List[List[int]]:
    r = 1 if arch == 'mini' else 3
    if task == 'coco':
        return [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * r, [1, 3, 1, 3, 1]]
    if arch == 'large':  # ADE20K 640
        return [[1, 20, 1], [1, 5, 1, 10],
                [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5], [1, 2, 1, 2, 1]]
    return [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * r, [1, 2, 1, 2, 1]]


# The paper's tables (DiNAT, arXiv 2209.15001, and the reference repository's model tables):
# config, arch, drop path, lr, parameters (millions).
SEG = [  # UPerNet, ADE20K, 160k iterations, AdamW wd 0.01
    ('segmentation/upernet_dinat-m_8xb2-160k_ade20k-512x512.py', 'mini', 0.2, 6e-5, 50),
    ('segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py', 'tiny', 0.3, 6e-5, 58),
    ('segmentation/upernet_dinat-s_8xb2-160k_ade20k-512x512.py', 'small', 0.5, 6e-5, 82),
    ('segmentation/upernet_dinat-b_8xb2-160k_ade20k-512x512.py', 'base', 0.5, 6e-5, 123),
    ('segmentation/upernet_dinat-l_8xb2-160k_ade20k-640x640.py', 'large', 0.3, 6e-5, 238),
]
MASK_RCNN = [  # COCO, 3x, AdamW wd 0.05
    ('detection/mask-rcnn_dinat-m_fpn_ms-crop-3x_coco.py', 'mini', 0.2, 1e-4, 40),
    ('detection/mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py', 'tiny', 0.2, 1e-4, 48),
    ('detection/mask-rcnn_dinat-s_fpn_ms-crop-3x_coco.py', 'small', 0.35, 1e-4, 70),
]
CASCADE = [  # COCO, 3x, AdamW wd 0.05, 4conv1fc + GIoU heads
    ('detection/cascade-mask-rcnn_dinat-m_fpn_ms-crop-3x_coco.py', 'mini', 0.2, 1e-4, 77),
    ('detection/cascade-mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py', 'tiny', 0.3, 1e-4, 85),
    ('detection/cascade-mask-rcnn_dinat-s_fpn_ms-crop-3x_coco.py', 'small', 0.5, 1e-4, 108),
    ('detection/cascade-mask-rcnn_dinat-b_fpn_ms-crop-3x_coco.py', 'base', 0.6, 7.5e-5, 147),
    ('detection/cascade-mask-rcnn_dinat-l_fpn_ms-crop-3x_coco.py', 'large', 0.6, 7.5e-5, 258),
]
PAPER: Dict[str, dict] = {}
for _name, _arch, _dp, _lr, _params in SEG:
    PAPER[_name] = dict(task='ade20k', method='EncoderDecoder', arch=_arch, drop_path=_dp,
                        lr=_lr, weight_decay=0.01, params_m=_params,
                        crop=640 if _arch == 'large' else 512,
                        preset='ade20k-640' if _arch == 'large' else 'ade20k')
for _rows, _method in ((MASK_RCNN, 'MaskRCNN'), (CASCADE, 'CascadeRCNN')):
    for _name, _arch, _dp, _lr, _params in _rows:
        PAPER[_name] = dict(task='coco', method=_method, arch=_arch, drop_path=_dp, lr=_lr,
                            weight_decay=0.05, params_m=_params, preset='coco')

ALIASES = {
    'segmentation/upernet_dinat_tiny_ade20k.py':
    'segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py',
}
SAMPLES = {
    'segmentation/sample/upernet_dinat_sample_ade20k.py': 'ade20k',
    'detection/sample/mask-rcnn_dinat_sample_coco.py': 'coco',
    'detection/sample/cascade-mask-rcnn_dinat_sample_coco.py': 'coco',
}
REAL_DATA_ROOT = {'ade20k': 'data/ade/ADEChallengeData2016', 'coco': 'data/coco/'}


@functools.lru_cache(maxsize=None)
def _load_cached(name: str) -> Config:
    return Config.fromfile(str(CONFIG_DIR / name))


def load(name: str) -> Config:
    """A fresh copy of a config (parsing ``mmdet::``/``mmseg::`` bases takes seconds)."""
    return copy.deepcopy(_load_cached(name))


def task_of(cfg: Config) -> str:
    return {'mmseg': 'ade20k', 'mmdet': 'coco'}[cfg.default_scope]


# ---------------------------------------------------------------------------------- discovery
def test_every_config_is_covered():
    listed = set(PAPER) | set(ALIASES) | set(SAMPLES)
    covered = set(ALL_CONFIGS) - set(MASK2FORMER_CONFIGS)
    assert covered == listed, (f'untested configs: {sorted(covered - listed)}; '
                               f'missing configs: {sorted(listed - covered)}')


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_loads(name):
    cfg = load(name)
    assert cfg.custom_imports == dict(imports=['dinat_backbone'], allow_failed_imports=False)
    assert cfg.default_scope in ('mmseg', 'mmdet')
    assert cfg.model.backbone.type == 'DiNAT'
    # saves that survive a kill (dinat_backbone/engine/checkpoint_hook.py,
    # tests/test_crash_safe_saves.py)
    assert cfg.default_hooks.checkpoint.type == 'CrashSafeCheckpointHook'
    # The backbone arguments are real DiNAT arguments (no swallowed leftovers of a base).
    unknown = set(cfg.model.backbone) - set(inspect.signature(DiNAT).parameters) - {'type'}
    assert not unknown, f'unknown DiNAT arguments {unknown}'


def test_alias_is_exactly_tiny():
    for alias, target in ALIASES.items():
        assert load(alias)._cfg_dict.to_dict() == load(target)._cfg_dict.to_dict()


def test_model_zoo_points_at_these_configs():
    from dinat_backbone.weights import zoo
    for entry in zoo.TASK_CHECKPOINTS.values():
        name = str(Path(entry.config).relative_to('configs'))
        if entry.method == 'Mask2Former':
            assert name in MASK2FORMER_CONFIGS, entry.config  # loaded in test_mask2former_weights
            continue
        assert name in PAPER, entry.config
        cfg = load(name)
        assert cfg.model.backbone.init_cfg.checkpoint == zoo.get_pretrained(entry.pretrained).url
        assert cfg.model.backbone.arch == entry.arch


# ----------------------------------------------------------------------------- paper recipe
@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_recipe(name):
    exp = PAPER[name]
    cfg = load(name)
    model, backbone = cfg.model, cfg.model.backbone
    arch, width = exp['arch'], WIDTHS[exp['arch']]
    assert model.type == exp['method']

    # backbone
    assert backbone.arch == arch
    assert backbone.kernel_size == 7
    assert backbone.dilations == exp['preset']
    depths = DiNAT.arch_zoo[arch]['depths']
    assert dilation_preset(backbone.dilations, depths) == _reference_dilations(exp['task'], arch)
    assert backbone.drop_path_rate == exp['drop_path']
    assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=_url(arch))
    widths = [width * 2**i for i in range(4)]

    # optimizer: AdamW, no decay on rpb and norms
    optim = cfg.optim_wrapper
    assert optim.type == 'OptimWrapper'
    assert optim.optimizer == dict(type='AdamW', lr=exp['lr'], betas=(0.9, 0.999),
                                   weight_decay=exp['weight_decay'])
    assert optim.paramwise_cfg == dict(custom_keys={'rpb': dict(decay_mult=0.),
                                                    'norm': dict(decay_mult=0.)})
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs

    if exp['task'] == 'ade20k':
        assert (model.decode_head.type, model.auxiliary_head.type) == ('UPerHead', 'FCNHead')
        assert model.decode_head.in_channels == widths
        assert model.decode_head.num_classes == model.auxiliary_head.num_classes == 150
        assert model.auxiliary_head.in_index == 2
        assert model.auxiliary_head.in_channels == widths[2]
        assert model.decode_head.norm_cfg.type == 'SyncBN'
        assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.by_epoch, warmup.begin, warmup.end) == \
            ('LinearLR', False, 0, 1500)
        assert warmup.start_factor == 1e-6
        assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == \
            ('PolyLR', 1.0, 0.0, 1500, 160000, False)
        crop = (exp['crop'], exp['crop'])
        assert tuple(cfg.crop_size) == crop and tuple(model.data_preprocessor.size) == crop
        crops = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
        assert [tuple(t.crop_size) for t in crops] == [crop]
    else:
        assert model.neck.in_channels == widths
        assert cfg.train_cfg.type == 'EpochBasedTrainLoop' and cfg.train_cfg.max_epochs == 36
        warmup, steps = cfg.param_scheduler
        assert (warmup.type, warmup.by_epoch, warmup.begin, warmup.end, warmup.start_factor) \
            == ('LinearLR', False, 0, 500, 0.001)
        assert (steps.type, steps.by_epoch, steps.end, list(steps.milestones), steps.gamma) \
            == ('MultiStepLR', True, 36, [27, 33], 0.1)
        assert cfg.auto_scale_lr.base_batch_size == 16
        # DETR-style multi-scale + crop augmentation
        pipeline = cfg.train_dataloader.dataset.pipeline
        choice = [t for t in pipeline if t.type == 'RandomChoice']
        assert len(choice) == 1 and len(choice[0].transforms) == 2
        assert [t.type for t in choice[0].transforms[1]] == \
            ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
        assert choice[0].transforms[1][1].crop_size == (384, 600)
        assert model.roi_head.mask_head.num_classes == 80
        if exp['method'] == 'CascadeRCNN':
            heads = model.roi_head.bbox_head
            assert len(heads) == 3
            for head in heads:
                assert (head.type, head.num_shared_convs, head.num_shared_fcs) == \
                    ('ConvFCBBoxHead', 4, 1)
                assert head.loss_bbox.type == 'GIoULoss' and head.reg_decoded_bbox
                assert head.norm_cfg.type == 'SyncBN'
            assert [h.bbox_coder.target_stds for h in heads] == [
                [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]


def test_large_640_data_settings_are_mmsegs():
    """The Large config restates mmseg's ade20k_640x640 dataset settings; they must agree."""
    import mmseg
    cfg = load('segmentation/upernet_dinat-l_8xb2-160k_ade20k-640x640.py')
    ref = Config.fromfile(
        str(Path(mmseg.__file__).parent / '.mim/configs/_base_/datasets/ade20k_640x640.py'))
    assert cfg.crop_size == ref.crop_size == (640, 640)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        ours = cfg[loader].dataset.to_dict()
        ours.pop('_scope_', None)
        assert ours == ref[loader].dataset.to_dict(), loader


# ---------------------------------------------------------------------------------- data paths
def _dataloaders(cfg: Config):
    return [cfg[k] for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


@pytest.mark.parametrize('name', sorted(PAPER) + sorted(ALIASES))
def test_paper_configs_read_the_real_datasets(name):
    cfg = load(name)
    root = REAL_DATA_ROOT[task_of(cfg)]
    assert cfg.data_root == root
    for loader in _dataloaders(cfg):
        assert loader.dataset.data_root == root
        assert 'metainfo' not in loader.dataset  # all 150 / 80 classes
    if task_of(cfg) == 'coco':
        for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
            assert evaluator.ann_file == root + 'annotations/instances_val2017.json'
            assert evaluator.metric == ['bbox', 'segm']
    assert 'data/sample' not in cfg.pretty_text


@pytest.mark.parametrize('name', sorted(SAMPLES))
def test_sample_configs_read_only_the_sample(name):
    cfg = load(name)
    root = {'ade20k': 'data/sample/ade20k', 'coco': 'data/sample/coco/'}[SAMPLES[name]]
    assert REAL_DATA_ROOT[SAMPLES[name]] not in cfg.pretty_text
    for loader in _dataloaders(cfg):
        assert loader.dataset.data_root == root
    if SAMPLES[name] == 'coco':
        for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
            assert evaluator.ann_file == root + 'annotations/instances_val2017.json'
            assert evaluator.metric == ['bbox', 'segm']
        from dinat_backbone.datasets.sample_data import COCO_SAMPLE_CLASSES
        for loader in _dataloaders(cfg):
            assert tuple(loader.dataset.metainfo.classes) == COCO_SAMPLE_CLASSES
    assert cfg.model.backbone.init_cfg is None  # no download for a demo
    assert 'SyncBN' not in cfg.pretty_text


# ------------------------------------------------------------------------- build and run
TINY_ARCH = dict(embed_dims=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
TINY_DILATIONS = [[1], [1, 2], [2, 1], [1]]
TINY_WIDTHS = [16, 32, 64, 128]


def _set_all(node, key: str, value) -> None:
    """Set ``key`` in every dict of ``node`` (a dict or a list of dicts)."""
    for item in node if isinstance(node, (list, tuple)) else [node]:
        item[key] = value


def shrink(cfg: Config) -> ConfigDict:
    """The config's model at test size: tiny DiNAT (the variant's layer scale kept), BN, 64 px,
    narrow heads, few RoIs. Everything else (structure, losses, recipe) is the config's."""
    model = copy.deepcopy(cfg.model)
    backbone = model.backbone
    arch = dict(TINY_ARCH)
    if isinstance(backbone.arch, str) and 'layer_scale' in DiNAT.arch_zoo[backbone.arch]:
        arch['layer_scale'] = DiNAT.arch_zoo[backbone.arch]['layer_scale']
    backbone.update(arch=arch, kernel_size=3, dilations=TINY_DILATIONS, init_cfg=None)
    sync_bn_to_bn(model)
    if cfg.default_scope == 'mmseg':
        model.data_preprocessor.size = (64, 64)
        model.decode_head.update(in_channels=TINY_WIDTHS, channels=16)
        model.auxiliary_head.update(in_channels=TINY_WIDTHS[model.auxiliary_head.in_index],
                                    channels=16)
    else:
        model.neck.update(in_channels=TINY_WIDTHS, out_channels=32)
        model.rpn_head.update(in_channels=32, feat_channels=32)
        roi = model.roi_head
        _set_all(roi.bbox_roi_extractor, 'out_channels', 32)
        _set_all(roi.mask_roi_extractor, 'out_channels', 32)
        for head in roi.bbox_head if isinstance(roi.bbox_head, list) else [roi.bbox_head]:
            head.update(in_channels=32, fc_out_channels=64)
            if 'conv_out_channels' in head:
                head.conv_out_channels = 32
        _set_all(roi.mask_head, 'in_channels', 32)
        _set_all(roi.mask_head, 'conv_out_channels', 32)
        rcnn = model.train_cfg.rcnn
        for stage in rcnn if isinstance(rcnn, list) else [rcnn]:
            stage.sampler.num = 32
        model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    return model


def build_model(cfg: Config, model_cfg: ConfigDict, init: bool = True) -> torch.nn.Module:
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    __import__(f'{scope}.utils', fromlist=['register_all_modules']).register_all_modules(
        init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = registry.build(model_cfg)
        if init:
            model.init_weights()
    return model


def build_optim_wrapper(cfg: Config, model: torch.nn.Module):
    from mmengine.optim import build_optim_wrapper as build
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return build(model, copy.deepcopy(cfg.optim_wrapper))


def seg_batch(size=(64, 64), batch=2, num_classes=150) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, *size), generator=gen, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, *size), generator=gen)
        label[:, :4] = 255  # some ignored pixels
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def det_batch(size=(64, 64), batch=2, num_classes=80) -> dict:
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=batch, image_shapes=(3, *size), num_items=[2, 3],
                          num_classes=num_classes, with_mask=True)


def _names_by_param(model: torch.nn.Module) -> Dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', sorted(PAPER) + sorted(SAMPLES))
def test_builds_trains_and_predicts(name):
    """One training step (loss backward, optimizer step) and one inference step at 64 px."""
    cfg = load(name)
    model = build_model(cfg, shrink(cfg))
    optim_wrapper = build_optim_wrapper(cfg, model)

    # weight decay: none for rpb and the backbone's LayerNorms, the configured one elsewhere
    wd = cfg.optim_wrapper.optimizer.weight_decay
    names = _names_by_param(model)
    decay = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    assert set(decay) == {n for n, p in model.named_parameters() if p.requires_grad}
    layer_norms = {f'{m}.{p}' for m, mod in model.named_modules()
                   if isinstance(mod, torch.nn.LayerNorm) for p, _ in mod.named_parameters()}
    assert layer_norms and all(n.startswith('backbone.') for n in layer_norms)
    rpbs = {n for n in decay if n.endswith('.attn.rpb')}
    assert len(rpbs) == sum(TINY_ARCH['depths'])
    no_decay = {n for n, d in decay.items() if d == 0}
    assert no_decay == layer_norms | rpbs, sorted(no_decay ^ (layer_norms | rpbs))
    assert {d for n, d in decay.items() if n not in no_decay} == {wd}
    assert decay['backbone.patch_embed.norm.weight'] == 0
    assert decay['backbone.levels.0.downsample.norm.bias'] == 0
    assert decay['backbone.norm3.weight'] == 0
    assert decay['backbone.levels.2.blocks.1.norm2.weight'] == 0
    assert decay['backbone.levels.2.blocks.1.attn.qkv.weight'] == wd

    # one training step
    data = seg_batch() if cfg.default_scope == 'mmseg' else det_batch(
        num_classes=cfg.model.roi_head.mask_head.num_classes)
    model.train()
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    # what model.train_step does, with a look at the gradients before the step
    losses = model(**model.data_preprocessor(copy.deepcopy(data), True), mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert loss.isfinite()
    optim_wrapper.backward(loss)
    for n, p in model.backbone.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), f'no gradient for {n}'
    optim_wrapper.step()
    assert any(not torch.equal(before[n], p) for n, p in model.backbone.named_parameters())

    # one inference step
    model.eval()
    with torch.no_grad():
        outputs = model.test_step(copy.deepcopy(data))
    assert len(outputs) == 2
    if cfg.default_scope == 'mmseg':
        assert outputs[0].pred_sem_seg.data.shape == (1, 64, 64)
    else:
        assert 'masks' in outputs[0].pred_instances


@pytest.mark.parametrize('name', sorted(PAPER))
def test_full_size_model_has_the_published_size(name):
    """The unshrunk model builds (no weights loaded) with the published parameter count."""
    cfg = load(name)
    cfg.model.backbone.init_cfg = None
    sync_bn_to_bn(cfg.model)
    model = build_model(cfg, cfg.model, init=False)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params_m - PAPER[name]['params_m']) < 0.6, f'{params_m:.2f}M'
    assert model.backbone.dilations == _reference_dilations(PAPER[name]['task'],
                                                            PAPER[name]['arch'])


# --------------------------------------------------------------------- sample configs, for real
@pytest.mark.parametrize('name', sorted(SAMPLES))
def test_sample_config_runs_on_sample_data(name, sample_data_root, tmp_path):
    """Two training iterations, a validation with the real metric and a checkpoint, through
    mmengine's Runner, on the generated sample (a subset of it), with the config's model."""
    from mmengine.runner import Runner
    cfg = load(name)
    root = sample_data_root[SAMPLES[name]]
    for loader in _dataloaders(cfg):
        loader.dataset.data_root = root
        loader.dataset.indices = 4
    if SAMPLES[name] == 'coco':
        for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
            evaluator.ann_file = str(Path(root) / 'annotations' / 'instances_val2017.json')
        # after two iterations no score reaches 0.05; keep them all so the metric has input
        cfg.model.test_cfg.rcnn.score_thr = 0.
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.val_loop.run()
    key = 'mIoU' if SAMPLES[name] == 'ade20k' else 'coco/segm_mAP'
    assert key in metrics
    assert (tmp_path / 'iter_2.pth').is_file()
