"""The published COCO / ADE20K models: old (mmdet 2.x / mmseg 0.x) files load and evaluate as the
models they came from, through ``load_from``, ``tools/test.py`` and ``tools/convert_checkpoint.py``.

For each family (Mask R-CNN, Cascade Mask R-CNN with 4conv1fc GIoU heads, UPerNet with an FCN
auxiliary head) the model is built from the project's real config with a tiny DiNAT (SyncBN ->
BN), every tensor is set to seeded random values, and the model is saved as mmdet 2.19.0 /
mmseg 0.20.2 saved it (mmcv-full 1.4.8 ``save_checkpoint``: the old ``meta``, the state dict
with ``_metadata``, an ``optimizer`` entry). The names in that file come from ``OLD_KEYS``,
written from the old sources, not from our model: a key of our model that the old code does not
name, or an old name our model lacks, fails; so do head widths that differ from the old code's
formulas and the reference configs (checked at full size, on the meta device).
"""
import contextlib
import copy
import functools
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import dinat_backbone  # noqa: F401  (registers DiNAT in mmdet and mmseg)
from dinat_backbone.engine.runner import sync_bn_to_bn
from dinat_backbone.models import DiNAT
from dinat_backbone.weights import CheckpointKeyError
from dinat_backbone.weights.task import (TaskCheckpointHook, add_task_checkpoint_hook,
                                         check_task_state_dict, convert_task_checkpoint,
                                         detect_task_layout)
from dinat_backbone.weights.zoo import TASK_CHECKPOINTS

from helpers import REPO_ROOT, load_tool, serve

convert_checkpoint = load_tool('convert_checkpoint')


# ---------------------------------------------------------------------------------------------
# The old names. Sources: reference DiNAT nat.py (identical in detection/ and segmentation/;
# DiNAT(NAT) adds nothing) with natten 0.14.2 natten2d.py; mmdet 2.19.0 mmdet/models/...;
# mmseg 0.20.2 mmseg/models/...; mmcv-full 1.4.8 ConvModule (conv + norm named by infer_abbr:
# 'bn' for BN and SyncBN). Heads as in the reference configs (configs/_base_/models/*_dinat.py
# and the dinat/ leaf configs).
_P = r'(weight|bias)'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_BLOCK = r'backbone\.levels\.\d+\.blocks\.\d+\.'
OLD_BACKBONE = [
    rf'backbone\.patch_embed\.proj\.[01]\.{_P}',  # ConvTokenizer.proj: Sequential(Conv2d, Conv2d)
    rf'backbone\.patch_embed\.norm\.{_P}',  # ConvTokenizer.norm
    rf'{_BLOCK}norm[12]\.{_P}',  # NATLayer.norm1, NATLayer.norm2
    rf'{_BLOCK}attn\.(qkv|proj)\.{_P}',  # NeighborhoodAttention2D.qkv, .proj (natten 0.14.2)
    rf'{_BLOCK}attn\.rpb',  # NeighborhoodAttention2D.rpb
    rf'{_BLOCK}mlp\.fc[12]\.{_P}',  # Mlp.fc1, Mlp.fc2
    r'backbone\.levels\.[0-2]\.downsample\.reduction\.weight',  # ConvDownsampler (bias=False)
    rf'backbone\.levels\.[0-2]\.downsample\.norm\.{_P}',  # NATBlock: no downsample after level 3
    rf'backbone\.norm[0-3]\.{_P}',  # NAT: add_module(f"norm{i_layer}") for out_indices
]
OLD_LAYER_SCALE = [rf'{_BLOCK}gamma[12]']  # NATLayer.gamma1/gamma2 when layer_scale (Base)
OLD_FPN_RPN = [
    rf'neck\.(lateral|fpn)_convs\.\d+\.conv\.{_P}',  # FPN.lateral_convs / fpn_convs[i].conv
    rf'rpn_head\.rpn_(conv|cls|reg)\.{_P}',  # RPNHead._init_layers (num_convs=1: nn.Conv2d)
]
_MASK_HEAD = rf'(convs\.\d+\.conv|upsample|conv_logits)\.{_P}'  # FCNMaskHead (deconv upsample)
OLD_KEYS: Dict[str, List[str]] = {
    'mask_rcnn': OLD_BACKBONE + OLD_FPN_RPN + [
        # StandardRoIHead.bbox_head = Shared2FCBBoxHead(ConvFCBBoxHead): shared_fcs, fc_cls, fc_reg
        rf'roi_head\.bbox_head\.(shared_fcs\.\d+|fc_cls|fc_reg)\.{_P}',
        rf'roi_head\.mask_head\.{_MASK_HEAD}',
    ],
    'cascade': OLD_BACKBONE + OLD_LAYER_SCALE + OLD_FPN_RPN + [
        # CascadeRoIHead.bbox_head: ModuleList of ConvFCBBoxHead(num_shared_convs=4,
        # num_shared_fcs=1, norm_cfg=SyncBN); ConvModule(bias='auto') has no conv bias with a norm
        r'roi_head\.bbox_head\.[0-2]\.shared_convs\.\d+\.conv\.weight',
        rf'roi_head\.bbox_head\.[0-2]\.shared_convs\.\d+\.bn\.{_BN}',
        rf'roi_head\.bbox_head\.[0-2]\.(shared_fcs\.\d+|fc_cls|fc_reg)\.{_P}',
        rf'roi_head\.mask_head\.[0-2]\.{_MASK_HEAD}',  # one mask_head dict, copied per stage
    ],
    'upernet': OLD_BACKBONE + [
        rf'(decode|auxiliary)_head\.conv_seg\.{_P}',  # BaseDecodeHead.conv_seg
        # UPerHead: psp_modules (PPM: Sequential(AdaptiveAvgPool2d, ConvModule)), bottleneck,
        # lateral_convs, fpn_convs, fpn_bottleneck; ConvModules with SyncBN, no conv bias
        r'decode_head\.(psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|'
        r'fpn_bottleneck)\.conv\.weight',
        rf'decode_head\.(psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|'
        rf'fpn_bottleneck)\.bn\.{_BN}',
        r'auxiliary_head\.convs\.0\.conv\.weight',  # FCNHead(num_convs=1, concat_input=False)
        rf'auxiliary_head\.convs\.0\.bn\.{_BN}',
    ],
}
# How many modules the reference configs give each part (module-path regex -> count).
OLD_COUNTS = {
    'mask_rcnn': {r'neck\.lateral_convs\.\d+\.': 4, r'neck\.fpn_convs\.\d+\.': 4,
                  r'roi_head\.bbox_head\.shared_fcs\.\d+\.': 2,  # Shared2FCBBoxHead
                  r'roi_head\.mask_head\.convs\.\d+\.': 4},  # FCNMaskHead(num_convs=4)
    'cascade': {r'neck\.lateral_convs\.\d+\.': 4, r'roi_head\.bbox_head\.\d+\.': 3,  # num_stages
                r'roi_head\.bbox_head\.\d+\.shared_convs\.\d+\.': 12,
                r'roi_head\.bbox_head\.\d+\.shared_fcs\.\d+\.': 3,
                r'roi_head\.mask_head\.\d+\.convs\.\d+\.': 12},
    'upernet': {r'decode_head\.psp_modules\.\d+\.': 4,  # pool_scales=(1, 2, 3, 6)
                r'decode_head\.lateral_convs\.\d+\.': 3, r'decode_head\.fpn_convs\.\d+\.': 3,
                r'auxiliary_head\.convs\.\d+\.': 1},
}
# Output widths by the old code's formulas: RPN 3 anchors x 1 (sigmoid) and x 4 deltas; BBoxHead
# num_classes + 1 and 4 x num_classes (reg_class_agnostic=False); FCNMaskHead and conv_seg
# num_classes (COCO 80, ADE20K 150).
_DET_WIDTHS = {r'rpn_head\.rpn_cls\.weight': 3, r'rpn_head\.rpn_reg\.weight': 12,
               r'roi_head\.bbox_head\.(\d\.)?fc_cls\.weight': 81,
               r'roi_head\.bbox_head\.(\d\.)?fc_reg\.weight': 320,
               r'roi_head\.mask_head\.(\d\.)?conv_logits\.weight': 80}
OLD_WIDTHS = {'mask_rcnn': _DET_WIDTHS, 'cascade': _DET_WIDTHS,
              'upernet': {r'(decode|auxiliary)_head\.conv_seg\.weight': 150}}

# One published model per family: Cascade Base has layer scale, UPerNet Large the 640 config.
FAMILIES = {'mask_rcnn': 'mask-rcnn_dinat-t_fpn_ms-crop-3x_coco',
            'cascade': 'cascade-mask-rcnn_dinat-b_fpn_ms-crop-3x_coco',
            'upernet': 'upernet_dinat-l_8xb2-160k_ade20k-640x640'}


def old_name(key: str, family: str) -> str:
    """The name the old code gives the tensor called ``key`` in our model (they are equal: the
    old pattern must match ``key`` itself, exactly once)."""
    matches = [p for p in OLD_KEYS[family] if re.fullmatch(p, key)]
    assert len(matches) == 1, f'{key}: matched by {len(matches)} old names {matches}'
    return key


# ---------------------------------------------------------------------------------------------
# Configs and models

TINY_ARCH = dict(embed_dims=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
TINY_DILATIONS = [[1], [1, 2], [2, 1], [1]]
TINY_WIDTHS = [16, 32, 64, 128]


@functools.lru_cache(maxsize=None)
def _parsed(family: str) -> Config:
    return Config.fromfile(str(REPO_ROOT / TASK_CHECKPOINTS[FAMILIES[family]].config))


def real_config(family: str) -> Config:
    return copy.deepcopy(_parsed(family))


def _each(node) -> list:
    return node if isinstance(node, list) else [node]


def tiny_config(family: str, data_root: str = 'unused') -> Config:
    """The real config's model with a tiny DiNAT (the variant's layer scale kept), BN and narrow
    heads, and its test settings with the data read from the sample at ``data_root`` at its own
    size."""
    cfg = real_config(family)
    model = cfg.model
    arch = dict(TINY_ARCH)
    layer_scale = DiNAT.arch_zoo[model.backbone.arch].get('layer_scale')
    if layer_scale:
        arch['layer_scale'] = layer_scale
    model.backbone.update(arch=arch, kernel_size=3, dilations=TINY_DILATIONS, init_cfg=None,
                          drop_path_rate=0.)
    sync_bn_to_bn(model)
    for key in ('train_pipeline', 'train_dataloader', 'train_cfg', 'val_dataloader',
                'val_evaluator', 'val_cfg', 'test_pipeline', 'optim_wrapper', 'param_scheduler',
                'auto_scale_lr'):
        cfg.pop(key, None)  # only testing here; mmengine formats the config text three times
    loader = cfg.test_dataloader
    loader.update(num_workers=0, persistent_workers=False)
    loader.dataset.data_root = data_root
    if cfg.default_scope == 'mmseg':
        model.decode_head.update(in_channels=TINY_WIDTHS, channels=16)
        model.auxiliary_head.update(in_channels=TINY_WIDTHS[model.auxiliary_head.in_index],
                                    channels=16)
        loader.dataset.pipeline = [dict(type='LoadImageFromFile'),
                                   dict(type='LoadAnnotations', reduce_zero_label=True),
                                   dict(type='PackSegInputs')]
    else:
        model.neck.update(in_channels=TINY_WIDTHS, out_channels=32)
        model.rpn_head.update(in_channels=32, feat_channels=32)
        roi = model.roi_head
        for part in _each(roi.bbox_roi_extractor) + _each(roi.mask_roi_extractor):
            part.out_channels = 32
        for head in _each(roi.bbox_head):
            head.update(in_channels=32, fc_out_channels=64)
            if 'conv_out_channels' in head:
                head.conv_out_channels = 32
        for head in _each(roi.mask_head):
            head.update(in_channels=32, conv_out_channels=32)
        model.test_cfg.rpn.update(nms_pre=100, max_per_img=30)
        # random heads score ~1/81 per class: keep the 20 best detections of any score
        model.test_cfg.rcnn.update(score_thr=0., max_per_img=20)
    return cfg


def build(cfg: Config, seed: int) -> torch.nn.Module:
    scope = cfg.default_scope
    __import__(f'{scope}.utils', fromlist=['x']).register_all_modules(init_default_scope=False)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(copy.deepcopy(cfg.model)).eval()


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor seeded-random (initialisation leaves many alike) at a sane scale: weights
    with std 1/sqrt(fan-in), norm scales near 1, BN variances positive."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.copy_(torch.randint(0, 1000, tensor.shape, generator=generator))
                continue
            value = torch.randn(tensor.shape, generator=generator)
            if name.endswith('running_var'):
                value = value.abs() + 0.5
            elif tensor.dim() > 1:
                value = value / tensor[0].numel()**0.5
            else:  # biases, norm scales and shifts, running means, layer scales
                value = value * 0.1 + (1. if name.endswith('weight') else 0.)
            tensor.copy_(value)
    return model


@functools.lru_cache(maxsize=None)
def _source(family: str) -> torch.nn.Module:
    return randomize(build(tiny_config(family), seed=0), seed=1)


# ---------------------------------------------------------------------------------------------
# The old files, as mmcv-full 1.4.8 / mmdet 2.19.0 / mmseg 0.20.2 wrote them

def _classes(scope: str) -> tuple:
    # The same names, in the same order, as mmdet 2.19 CocoDataset.CLASSES and mmseg 0.20
    # ADE20KDataset.CLASSES (checked against those sources when this test was written).
    if scope == 'mmdet':
        from mmdet.datasets import CocoDataset
        return tuple(CocoDataset.METAINFO['classes'])
    from mmseg.datasets import ADE20KDataset
    return tuple(ADE20KDataset.METAINFO['classes'])


def old_meta(family: str) -> dict:
    """``meta`` of a published file: save_checkpoint's mmcv_version/time/CLASSES, the runner's
    epoch/iter, train.py's env_info/config/seed/exp_name and checkpoint_config.meta's version
    (mmdet: __version__ + git hash; mmseg: f'{__version__}+{hash}'), Fp16OptimizerHook's
    loss scaler."""
    scope = _parsed(family).default_scope
    meta = dict(env_info='sys.platform: linux\nPyTorch: 1.11.0+cu113\nMMCV: 1.4.8',
                config='model = dict(type=...)  # the mmcv 1.x config text', seed=0,
                exp_name=f'{FAMILIES[family]}.py', CLASSES=_classes(scope),
                mmcv_version='1.4.8', time='Sun Oct  2 04:13:51 2022',
                fp16=dict(loss_scaler=dict(scale=512.0, growth_factor=2.0, backoff_factor=0.5,
                                           growth_interval=2000, _growth_tracker=617)))
    if scope == 'mmdet':
        meta.update(mmdet_version='2.19.0d334f5b', epoch=36, iter=263808)
    else:
        from mmseg.datasets import ADE20KDataset
        meta.update(mmseg_version='0.20.2+d334f5b', epoch=1, iter=160000,
                    PALETTE=[list(c) for c in ADE20KDataset.METAINFO['palette']])
    return meta


def old_checkpoint(model: torch.nn.Module, family: str) -> dict:
    state = model.state_dict()
    old = OrderedDict((old_name(k, family), v.clone()) for k, v in state.items())
    old._metadata = copy.deepcopy(state._metadata)  # mmcv's get_state_dict records versions alike
    return {'meta': old_meta(family), 'state_dict': old,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-6, 'params': [0, 1]}]}}


@pytest.fixture(scope='module')
def old_files(tmp_path_factory) -> Dict[str, Path]:
    out = tmp_path_factory.mktemp('published')
    files = {}
    for family in FAMILIES:
        files[family] = out / Path(TASK_CHECKPOINTS[FAMILIES[family]].url).name
        # mmdet 2.19's publish_model.py saves in the legacy (pre-1.6) format, mmseg's does not
        legacy = _parsed(family).default_scope == 'mmdet'
        torch.save(old_checkpoint(_source(family), family), files[family],
                   _use_new_zipfile_serialization=not legacy)
    return files


# ---------------------------------------------------------------------------------------------
# Comparing models

def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _batch(scope: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        torch.manual_seed(0)
        return demo_mm_inputs(batch_size=2, image_shapes=(3, 64, 80), num_items=[2, 3],
                              num_classes=80, with_mask=True)
    from mmseg.structures import SegDataSample
    inputs = [torch.randint(0, 256, (3, 64, 80), generator=generator, dtype=torch.uint8)
              for _ in range(2)]
    meta = dict(img_shape=(64, 80), ori_shape=(64, 80), pad_shape=(64, 80))
    return dict(inputs=inputs, data_samples=[SegDataSample(metainfo=meta) for _ in range(2)])


def outputs(model: torch.nn.Module, scope: str) -> list:
    """Raw head outputs (mode='tensor'; the auxiliary head too) and final predictions."""
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(_batch(scope), False)
        raw = [model(**data, mode='tensor')]
        if scope == 'mmseg':
            raw.append(model.auxiliary_head(model.extract_feat(data['inputs'])))
        preds = model.test_step(_batch(scope))
    if scope == 'mmdet':
        fields = [(p.pred_instances.bboxes, p.pred_instances.scores, p.pred_instances.labels,
                   p.pred_instances.masks) for p in preds]
        assert all(len(f[1]) > 0 for f in fields), 'no detections: a weak comparison'
    else:
        fields = [(p.seg_logits.data, p.pred_sem_seg.data) for p in preds]
    return raw + fields


def assert_same_model(model: torch.nn.Module, source: torch.nn.Module, scope: str) -> None:
    got, expected = model.state_dict(), source.state_dict()
    assert list(got) == list(expected)
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, different[:10]
    assert _equal(outputs(model, scope), outputs(source, scope))


# ---------------------------------------------------------------------------------------------
# The key mapping against the old sources, at full size


@functools.lru_cache(maxsize=None)
def _full_size(family: str) -> torch.nn.Module:
    """The real config's model, on the meta device (shapes only)."""
    with torch.device('meta'):
        return build(real_config(family), seed=0)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_old_names_cover_the_real_config_exactly(family):
    """Full-size model of the real config (meta device): each key has exactly one old name,
    each old name is used, the reference configs' module counts and the old code's output
    widths hold, and the parameter count is the published one."""
    model = _full_size(family)
    state = model.state_dict()
    used = {p: [k for k in state if re.fullmatch(p, k)] for p in OLD_KEYS[family]}
    for key in state:
        old_name(key, family)
    assert not [p for p, keys in used.items() if not keys], 'old names our model lacks'
    assert not any(k.startswith('data_preprocessor.') for k in state)  # non-persistent buffers
    for prefix, count in OLD_COUNTS[family].items():
        found = {m.group(0) for k in state for m in [re.match(prefix, k)] if m}
        assert len(found) == count, (prefix, sorted(found))
    for pattern, width in OLD_WIDTHS[family].items():
        shapes = [state[k].shape[0] for k in state if re.fullmatch(pattern, k)]
        assert shapes and set(shapes) == {width}, (pattern, shapes)
    published = TASK_CHECKPOINTS[FAMILIES[family]].params_m
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == published


# ---------------------------------------------------------------------------------------------
# The pure functions


def test_layout_detection_and_meta_conversion(old_files):
    det = torch.load(old_files['mask_rcnn'], weights_only=False)
    seg = torch.load(old_files['upernet'], weights_only=False)
    assert detect_task_layout(det) == 'mmdet2' and detect_task_layout(seg) == 'mmseg0'
    # mmcv 1.x CLASSES without a version string: the heads tell the codebase
    for checkpoint, layout in ((det, 'mmdet2'), (seg, 'mmseg0')):
        bare_meta = {k: v for k, v in checkpoint['meta'].items() if not k.endswith('_version')}
        assert detect_task_layout({**checkpoint, 'meta': bare_meta}) == layout
    assert detect_task_layout(det['state_dict']) == 'state_dict'
    assert detect_task_layout({'state_dict': det['state_dict'], 'meta': {
        'mmengine_version': '0.10.7', 'dataset_meta': {'classes': ('a', )}}}) == 'mmengine'

    state_dict, report = convert_task_checkpoint(seg)
    assert report.layout == 'mmseg0' and report.saved_by == 'mmseg 0.20.2+d334f5b'
    assert report.meta['dataset_meta'] == {'classes': seg['meta']['CLASSES'],
                                           'palette': seg['meta']['PALETTE']}
    assert report.meta['converted_from'] == {'layout': 'mmseg0', 'mmseg_version': '0.20.2+d334f5b',
                                             'mmcv_version': '1.4.8'}
    assert report.meta['cfg'] == seg['meta']['config']
    assert report.meta['experiment_name'] == seg['meta']['exp_name']
    assert {report.meta[k] for k in ('seed', 'iter', 'epoch')} == {0, 160000, 1}
    assert not {'CLASSES', 'PALETTE', 'config', 'exp_name', 'fp16', 'mmseg_version'} & set(
        report.meta)
    assert report.dropped == ['optimizer', 'meta.fp16']
    assert list(state_dict) == list(seg['state_dict'])  # no key renamed, order kept
    assert all(state_dict[k] is v for k, v in seg['state_dict'].items())  # no copies
    assert state_dict._metadata == seg['state_dict']._metadata
    assert 'no state-dict key renamed' in report.summary()


def test_conversion_is_pure_and_idempotent(old_files):
    checkpoint = torch.load(old_files['cascade'], weights_only=False)
    before = copy.deepcopy(checkpoint)
    state_dict, report = convert_task_checkpoint(checkpoint)
    assert checkpoint.keys() == before.keys() and checkpoint['meta'] == before['meta']
    assert _equal(list(checkpoint['state_dict'].values()), list(before['state_dict'].values()))
    assert report.meta['dataset_meta'] == {'classes': before['meta']['CLASSES']}
    again, report2 = convert_task_checkpoint({'state_dict': state_dict, 'meta': report.meta})
    assert report2.layout == 'mmengine' and report2.meta == report.meta
    assert report2.dropped == [] and report2.meta_changes == []
    assert list(again) == list(state_dict) and all(again[k] is state_dict[k] for k in again)
    with pytest.raises(ValueError, match='Not a whole-model checkpoint'):
        convert_task_checkpoint({'meta': {}, 'epoch': 3})


# ---------------------------------------------------------------------------------------------
# Loading through mmengine's Runner (load_from in a config) and tools/test.py


def _runner(cfg: Config, work_dir: Path, name: str, **settings):
    from mmengine.runner import Runner
    cfg = copy.deepcopy(cfg)
    for key, value in dict(work_dir=str(work_dir), **settings).items():
        cfg[key] = value
    path = work_dir / f'{name}.py'  # the file name makes the runner's experiment name unique
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(path))
    return Runner.from_cfg(Config.fromfile(str(path)))


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_load_from_in_a_config_gives_the_same_model(family, old_files, tmp_path):
    """``load_from`` (a URL for Mask R-CNN, a file otherwise) with the hook in the config."""
    cfg = tiny_config(family)
    add_task_checkpoint_hook(cfg)
    served = (serve(old_files[family].parent) if family == 'mask_rcnn'
              else contextlib.nullcontext())
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        with served as base:
            load_from = f'{base}/{old_files[family].name}' if base else str(old_files[family])
            runner = _runner(cfg, tmp_path / 'run', family, load_from=load_from)
            fresh = runner.model.state_dict()
            assert not any(torch.equal(fresh[k], v)
                           for k, v in _source(family).state_dict().items()
                           if v.is_floating_point())
            runner.load_or_resume()
    finally:
        torch.hub.set_dir(old_hub)
    scope = cfg.default_scope
    assert_same_model(runner.model, _source(family), scope)
    log = next((tmp_path / 'run').glob('*/*.log')).read_text()
    layout = 'mmdet2 layout saved by mmdet 2.19.0' if scope == 'mmdet' else \
        'mmseg0 layout saved by mmseg 0.20.2'
    assert f'Task checkpoint {load_from}: {layout}' in log
    assert 'dropped optimizer, meta.fp16' in log
    assert re.search(r'\d+ tensors checked against the model: none missing, unexpected or of '
                     'another shape', log)


def test_keys_that_do_not_fit_are_errors_naming_them(old_files, tmp_path):
    model = build(tiny_config('mask_rcnn'), seed=0)
    old = torch.load(old_files['mask_rcnn'], weights_only=False)

    def check(edit, **kwargs):
        checkpoint = copy.deepcopy(old)
        edit(checkpoint['state_dict'])
        state_dict, report = convert_task_checkpoint(checkpoint)
        return check_task_state_dict(state_dict, model, report, **kwargs)

    def rename(sd):
        sd['roi_head.mask_head.conv_logit.weight'] = sd.pop('roi_head.mask_head.conv_logits.weight')

    with pytest.raises(CheckpointKeyError) as error:
        check(rename)
    message = str(error.value)
    assert 'missing from the checkpoint: roi_head.mask_head.conv_logits.weight' in message
    assert 'unexpected in the checkpoint: roi_head.mask_head.conv_logit.weight' in message

    def class_agnostic(sd):  # the reference cascade *base* config's Shared2FC heads
        sd['roi_head.bbox_head.fc_reg.weight'] = sd['roi_head.bbox_head.fc_reg.weight'][:4]
        sd['roi_head.bbox_head.fc_reg.bias'] = sd['roi_head.bbox_head.fc_reg.bias'][:4]

    with pytest.raises(ValueError, match=r'roi_head\.bbox_head\.fc_reg\.weight: \(4, 64\) vs '
                                         r'\(320, 64\)'):
        check(class_agnostic)
    report = check(class_agnostic, strict=False)  # a warning, mmengine then loads what fits
    assert len(report.mismatched) == 2 and not report.missing

    def no_counter(sd):  # BN counters are optional, as for mmengine and torch
        for key in [k for k in sd if k.endswith('num_batches_tracked')]:
            del sd[key]

    assert not check(no_counter).missing

    # another variant's published file: the message says which config it needs
    full_size = _full_size('mask_rcnn')  # DiNAT-Tiny
    with torch.device('meta'):
        small = DiNAT(arch='small', dilations='coco').state_dict()
    checkpoint = {'meta': old['meta'], 'state_dict': {
        **full_size.state_dict(), **{f'backbone.{k}': v for k, v in small.items()}}}
    state_dict, report = convert_task_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="backbone is DiNAT-Small, the model's DiNAT-Tiny"):
        check_task_state_dict(state_dict, full_size, report)

    # through the Runner: the error stops loading; resuming from an old file is refused
    cfg = tiny_config('mask_rcnn')
    add_task_checkpoint_hook(cfg)
    bad = tmp_path / 'renamed.pth'
    checkpoint = copy.deepcopy(old)
    rename(checkpoint['state_dict'])
    torch.save(checkpoint, bad)
    with pytest.raises(CheckpointKeyError, match='conv_logit.weight'):
        _runner(cfg, tmp_path / 'bad', 'bad', load_from=str(bad)).load_or_resume()
    with pytest.raises(ValueError, match='Cannot resume training from .* mmdet 2.19.0'):
        _runner(cfg, tmp_path / 'resume', 'resume', load_from=str(old_files['mask_rcnn']),
                resume=True).load_or_resume()


def test_the_hook_is_added_once_and_registered():
    cfg = Config(dict(custom_hooks=[dict(type='EMAHook')]))
    add_task_checkpoint_hook(cfg)
    add_task_checkpoint_hook(cfg)
    assert cfg.custom_hooks == [dict(type='EMAHook'),
                                dict(type='TaskCheckpointHook', strict=True)]
    from mmengine.registry import HOOKS
    for scope in ('mmdet', 'mmseg'):
        with DefaultScope.overwrite_default_scope(scope):
            assert isinstance(HOOKS.build(dict(type='TaskCheckpointHook')), TaskCheckpointHook)


def test_tools_test_py_evaluates_the_old_file_as_the_converted_one(old_files, sample_data_root,
                                                                   tmp_path, capsys):
    """``tools/test.py CONFIG CHECKPOINT`` (and ``--tta``) on the ADE20K-format sample: the old
    file and the one converted by tools/convert_checkpoint.py give the same label maps."""
    test_tool = load_tool('test')
    cfg = tiny_config('upernet', sample_data_root['ade20k'])
    converted = tmp_path / 'converted.pth'
    assert convert_checkpoint.main(['--task', str(old_files['upernet']), str(converted)]) == 0
    results = {}
    for name, checkpoint in (('old', old_files['upernet']), ('converted', converted)):
        config = tmp_path / f'upernet_{name}.py'
        cfg.dump(str(config))
        results[name] = test_tool.main([str(config), str(checkpoint), '--work-dir',
                                        str(tmp_path / name), '--out',
                                        str(tmp_path / f'{name}_pred')])
    log = capsys.readouterr().out
    assert 'mmseg0 layout saved by mmseg 0.20.2' in log and 'mmengine layout' in log
    assert log.count('none missing, unexpected or of another shape') == 2
    assert results['old'] == results['converted'] and 'mIoU' in results['old']
    old_maps = sorted((tmp_path / 'old_pred').glob('*.png'))
    assert len(old_maps) == 8
    for path in old_maps:
        assert path.read_bytes() == (tmp_path / 'converted_pred' / path.name).read_bytes()
        assert len(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))) > 1  # informative

    config = tmp_path / 'upernet_tta.py'
    cfg.dump(str(config))
    metrics = test_tool.main([str(config), str(old_files['upernet']), '--tta', '--work-dir',
                              str(tmp_path / 'tta')])
    assert 'mIoU' in metrics and 'none missing' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# tools/convert_checkpoint.py --task


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_convert_tool_round_trip_is_lossless(family, old_files, tmp_path, capsys):
    cfg = tiny_config(family)
    config = tmp_path / f'{family}.py'
    cfg.dump(str(config))
    old = torch.load(old_files[family], weights_only=False)
    dst = tmp_path / 'converted.pth'
    assert convert_checkpoint.main(['--task', str(old_files[family]), str(dst),
                                    '--config', str(config)]) == 0
    assert 'none missing, unexpected or of another shape' in capsys.readouterr().out
    saved = torch.load(dst, weights_only=False)
    assert set(saved) == {'state_dict', 'meta'}
    assert list(saved['state_dict']) == list(old['state_dict'])
    assert _equal(list(saved['state_dict'].values()), list(old['state_dict'].values()))
    assert all(saved['state_dict'][k].dtype == v.dtype for k, v in old['state_dict'].items())
    assert saved['state_dict']._metadata == old['state_dict']._metadata
    assert saved['meta']['dataset_meta']['classes'] == old['meta']['CLASSES']
    assert saved['meta']['converted_from']['by'].endswith('tools/convert_checkpoint.py --task')
    # converting the converted file changes nothing
    again = tmp_path / 'again.pth'
    assert convert_checkpoint.main(['--task', str(dst), str(again)]) == 0
    resaved = torch.load(again, weights_only=False)
    assert resaved['meta'] == saved['meta']
    assert list(resaved['state_dict']) == list(saved['state_dict'])
    assert _equal(list(resaved['state_dict'].values()), list(saved['state_dict'].values()))
    # and the converted file builds the very model the old one came from
    model = build(cfg, seed=0)
    model.load_state_dict(resaved['state_dict'])
    assert_same_model(model, _source(family), cfg.default_scope)


def test_convert_tool_names_what_does_not_fit(old_files, tmp_path):
    config = tmp_path / 'mask_rcnn.py'
    tiny_config('mask_rcnn').dump(str(config))
    with pytest.raises(CheckpointKeyError, match=r'missing from the checkpoint: neck\.'):
        convert_checkpoint.main(['--task', str(old_files['upernet']), str(tmp_path / 'x.pth'),
                                 '--config', str(config)])
    assert not (tmp_path / 'x.pth').exists()
    with pytest.raises(SystemExit):
        convert_checkpoint.main(['--task', str(old_files['upernet']), str(tmp_path / 'x.pth'),
                                 '--prefix', 'backbone.'])
    with pytest.raises(SystemExit):
        convert_checkpoint.main([str(old_files['upernet']), str(tmp_path / 'x.pth'),
                                 '--config', str(config)])
