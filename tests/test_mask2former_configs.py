"""The Mask2Former-DiNAT-L paper configs (``configs/{detection,segmentation}/mask2former/``).

* Recipe: every config against the reference (SHI-Labs/Neighborhood-Attention-Transformer,
  ``mask2former/configs/*/*/dinat/*.yaml`` on facebookresearch/Mask2Former's base configs):
  backbone, queries, classes, optimizer, clipping, batch, schedule, crop, evaluators.
* Inherited data: the settings restated from mmdet's / mmseg's own configs still equal them.
* Decay rules: the optimizer built from each config on its full model gives every parameter the
  learning rate and weight decay that the reference's ``build_optimizer`` gives it
  (re-implemented here from Mask2Former's train_net.py, not from the configs' keys).
* One training step of each paper model (DiNAT-L, full head; only the input size is the
  test's) on a 64 px synthetic batch, and inference through mmdet's API for the model-only
  Cityscapes panoptic config.
* Data: the real dataset roots, and a missing dataset names its expected layout.
"""
import copy
import functools
import math
import os.path as osp
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope

from dinat_backbone.engine.runner import DATASET_LAYOUTS, check_dataset_paths
from dinat_backbone.models import DiNAT, dilation_preset

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / 'configs'
DET = 'detection/mask2former/mask2former_dinat-l-in22k_'
SEG = 'segmentation/mask2former/mask2former_dinat-l-in22k_'
COCO_PANOPTIC = DET + '16xb1-lsj-737.5k_coco-panoptic.py'
CITYSCAPES_PANOPTIC = DET + 'cityscapes-panoptic-inference.py'

# The reference configs: every task uses this backbone (its DINAT block), these weights (the
# in22k 224 model with rpb interpolated to 21x21) and these per-block dilations.
PRETRAINED = ('https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/'
              'dinat_large_in22k_224_11x11interp.pth')
REFERENCE_DILATIONS = [[1, 14, 1], [1, 4, 1, 7],
                       [1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3], [1, 1, 1, 1, 1]]
WIDTHS = [192, 384, 768, 1536]


def _expected(task, things, stuff, queries, iters, crop, dataset, data_root, evaluators,
              schedule='poly'):
    return dict(task=task, things=things, stuff=stuff, queries=queries, iters=iters, crop=crop,
                dataset=dataset, data_root=data_root, evaluators=evaluators, schedule=schedule)


# Per config: task, classes (things, stuff), queries, iterations, crop, dataset and evaluators.
# COCO: LSJ at 1024 with steps; ADE20K 160k at 640; Cityscapes 90k at 512x1024; poly LR there.
PAPER = {
    COCO_PANOPTIC: _expected('panoptic', 80, 53, 200, 737500, (1024, 1024),
                             'CocoPanopticDataset', 'data/coco/',
                             ['CocoPanopticMetric', 'CocoMetric'], schedule='step'),
    DET + '16xb1-lsj-737.5k_coco.py': _expected(
        'instance', 80, 0, 200, 737500, (1024, 1024), 'CocoDataset', 'data/coco/',
        ['CocoMetric'], schedule='step'),
    DET + '16xb1-160k_ade20k-panoptic-640x640.py': _expected(
        'panoptic', 100, 50, 200, 160000, (640, 640), 'ADE20KPanopticDataset',
        'data/ade/ADEChallengeData2016/', ['CocoPanopticMetric']),
    DET + '16xb1-160k_ade20k-instance-640x640.py': _expected(
        'instance', 100, 0, 200, 160000, (640, 640), 'ADE20KInstanceDataset',
        'data/ade/ADEChallengeData2016/', ['CocoMetric']),
    DET + '16xb1-90k_cityscapes-instance-512x1024.py': _expected(
        'instance', 8, 0, 200, 90000, (512, 1024), 'CityscapesDataset', 'data/cityscapes/',
        ['CocoMetric', 'CityScapesMetric']),
    SEG + '8xb2-160k_ade20k-640x640.py': _expected(
        'semantic', 150, None, 100, 160000, (640, 640), 'ADE20KDataset',
        'data/ade/ADEChallengeData2016', ['IoUMetric']),
    SEG + '8xb2-90k_cityscapes-512x1024.py': _expected(
        'semantic', 19, None, 100, 90000, (512, 1024), 'CityscapesDataset', 'data/cityscapes/',
        ['IoUMetric']),
}
# The model-only config: the reference's Cityscapes panoptic model.
MODEL_ONLY = {CITYSCAPES_PANOPTIC: dict(task='panoptic', things=8, stuff=11, queries=200)}
ALL = sorted(PAPER) + sorted(MODEL_ONLY)


def _id(name: str) -> str:
    return osp.splitext(osp.basename(name))[0].split('in22k_')[1]


@functools.lru_cache(maxsize=None)
def _load_cached(name: str) -> Config:
    return Config.fromfile(str(CONFIG_DIR / name))


def load(name: str) -> Config:
    """A fresh copy of a config (parsing ``mmdet::``/``mmseg::`` bases takes seconds)."""
    return copy.deepcopy(_load_cached(name))


def _head(cfg: Config) -> ConfigDict:
    return cfg.model.decode_head if cfg.default_scope == 'mmseg' else cfg.model.panoptic_head


def test_every_mask2former_config_is_covered():
    found = {str(p.relative_to(CONFIG_DIR)) for d in ('detection', 'segmentation')
             for p in (CONFIG_DIR / d / 'mask2former').glob('*.py')}
    assert found == set(ALL)


def test_dilation_preset_is_the_references():
    # >>> dilation_preset('mask2former', [3, 4, 18, 5])  (DiNAT-Large's depths)
    assert dilation_preset('mask2former', [3, 4, 18, 5]) == REFERENCE_DILATIONS
    large = DiNAT.arch_zoo['large']
    assert (large['embed_dims'], large['depths'], large['num_heads']) == \
        (192, [3, 4, 18, 5], [6, 12, 24, 48])


# ---------------------------------------------------------------------------------- recipe
@pytest.mark.parametrize('name', ALL, ids=_id)
def test_model_recipe(name):
    cfg = load(name)
    assert cfg.custom_imports == dict(imports=['dinat_backbone'], allow_failed_imports=False)
    assert cfg.default_hooks.checkpoint.type == 'CrashSafeCheckpointHook'
    assert cfg.model.backbone == dict(
        type='DiNAT', arch='large', kernel_size=11, dilations='mask2former', drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=PRETRAINED))
    head = _head(cfg)
    assert head.type == 'Mask2FormerHead' and head.in_channels == WIDTHS
    exp = {**PAPER, **MODEL_ONLY}[name]
    assert head.num_queries == exp['queries']
    # the reference's MaskFormer head: 6 deformable encoder layers, 9 decoder layers (+1 loss
    # on the learnable queries), 12544 sampled points, weights 2 / 5 / 5, no-object 0.1
    assert head.pixel_decoder.encoder.num_layers == 6 and head.transformer_decoder.num_layers == 9
    train_cfg = head.train_cfg if cfg.default_scope == 'mmseg' else cfg.model.train_cfg
    assert (train_cfg.num_points, train_cfg.oversample_ratio,
            train_cfg.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert (head.loss_cls.loss_weight, head.loss_mask.loss_weight,
            head.loss_dice.loss_weight) == (2.0, 5.0, 5.0)
    if exp['task'] == 'semantic':
        num_classes = head.num_classes
        assert num_classes == exp['things']
    else:
        num_classes = head.num_things_classes + head.num_stuff_classes
        assert (head.num_things_classes, head.num_stuff_classes) == (exp['things'], exp['stuff'])
        fusion = cfg.model.panoptic_fusion_head
        assert (fusion.num_things_classes, fusion.num_stuff_classes) == \
            (exp['things'], exp['stuff'])
        test_cfg = cfg.model.test_cfg
        assert test_cfg.panoptic_on == (exp['task'] == 'panoptic') and test_cfg.instance_on
        # the reference's OVERLAP_THRESHOLD and OBJECT_MASK_THRESHOLD (mmdet's default 0.8)
        assert test_cfg.iou_thr == 0.8 and test_cfg.get('object_mask_thr', 0.8) == 0.8
    assert head.loss_cls.class_weight == [1.0] * num_classes + [0.1]


@pytest.mark.parametrize('name', sorted(PAPER), ids=_id)
def test_training_recipe(name):
    cfg, exp = load(name), PAPER[name]
    # AdamW 1e-4, wd 0.05, full-model gradient-norm clipping 0.01, fp32 (no AmpOptimWrapper)
    optim = cfg.optim_wrapper
    assert optim.type == 'OptimWrapper'
    assert (optim.optimizer.type, optim.optimizer.lr, optim.optimizer.weight_decay) == \
        ('AdamW', 1e-4, 0.05)
    assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
    # batch 16 = GPUs x images per GPU, both in the file name
    gpus, per_gpu = map(int, re.search(r'_(\d+)xb(\d+)-', name).groups())
    assert cfg.train_dataloader.batch_size == per_gpu and gpus * per_gpu == 16
    assert cfg.auto_scale_lr.base_batch_size == 16
    # schedule, evaluated every 5000 iterations
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (exp['iters'], 5000)
    schedulers = cfg.param_scheduler
    schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
    assert len(schedulers) == 1 and not schedulers[0].by_epoch
    assert (schedulers[0].begin, schedulers[0].end) == (0, exp['iters'])
    if exp['schedule'] == 'step':
        assert schedulers[0].type == 'MultiStepLR'
        assert (schedulers[0].milestones, schedulers[0].gamma) == ([655556, 710184], 0.1)
    else:  # detectron2's WarmupPolyLR without warmup
        assert (schedulers[0].type, schedulers[0].power, schedulers[0].eta_min) == \
            ('PolyLR', 0.9, 0)
    # crop (or LSJ size) and the padding to it
    pipeline = cfg.train_dataloader.dataset.pipeline
    crops = [t for t in pipeline if t.type == 'RandomCrop']
    # (height, width); mmdet's RandomCrop takes (width, height)
    assert [_crop_hw(cfg, t) for t in crops] == [exp['crop']]
    if cfg.default_scope == 'mmseg':
        assert tuple(cfg.model.data_preprocessor.size) == exp['crop']
        assert crops[0].cat_max_ratio == 1.0  # the reference's SINGLE_CATEGORY_MAX_AREA
    else:
        pads = cfg.model.data_preprocessor.batch_augments
        # Cityscapes crops are always 512x1024: nothing to pad (the reference pads to 32)
        assert [tuple(p.size) for p in pads or []] == \
            ([] if exp['crop'] == (512, 1024) else [exp['crop']])
    # evaluators
    evaluators = cfg.val_evaluator if isinstance(cfg.val_evaluator, list) else \
        [cfg.val_evaluator]
    assert [e.type for e in evaluators] == exp['evaluators']
    assert cfg.test_evaluator == cfg.val_evaluator


def _crop_hw(cfg: Config, crop: ConfigDict) -> tuple:
    size = tuple(crop.crop_size)
    return size if cfg.default_scope == 'mmseg' else size[::-1]


# A typical image of each dataset, (height, width).
IMAGE_SIZE = {'CocoPanopticDataset': (480, 640), 'CocoDataset': (480, 640),
              'ADE20KPanopticDataset': (512, 683), 'ADE20KInstanceDataset': (512, 683),
              'ADE20KDataset': (512, 683), 'CityscapesDataset': (1024, 2048)}


def _loaded_sample(cfg: Config, task: str, hw: tuple) -> dict:
    """What a training pipeline's loading transforms put in the results, synthetic: an image,
    two thing instances and, for panoptic and semantic tasks, a label map."""
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    h, w = hw
    rng = np.random.default_rng(0)
    results = dict(img=rng.integers(0, 256, (h, w, 3)).astype(np.float32), img_shape=hw,
                   ori_shape=hw, img_path='image.jpg', img_id=0)
    labels = rng.integers(0, 19, (h, w)).astype(np.uint8)
    if cfg.default_scope == 'mmseg':
        results.update(img=results['img'].astype(np.uint8), gt_seg_map=labels,
                       seg_fields=['gt_seg_map'], reduce_zero_label=False)
        return results
    boxes = np.array([[w // 8, h // 8, w // 2, h // 2], [w // 3, h // 3, w - 1, h - 1]])
    masks = np.zeros((2, h, w), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        mask[y1:y2, x1:x2] = 1
    results.update(gt_bboxes=HorizontalBoxes(torch.from_numpy(boxes).float()),
                   gt_bboxes_labels=np.array([0, 1]), gt_ignore_flags=np.zeros(2, bool),
                   gt_masks=BitmapMasks(masks, h, w))
    if task == 'panoptic':
        results.update(gt_seg_map=labels, seg_fields=['gt_seg_map'])
    return results


@pytest.mark.parametrize('name', sorted(PAPER), ids=_id)
def test_train_pipeline_makes_the_paper_crops(name):
    """The training pipeline after its loading transforms, on a synthetic sample of the
    dataset's image size: the packed image and its annotations are the resized image cropped
    to the paper's crop (height x width), or smaller where the resized image is."""
    from mmcv.transforms import Compose
    cfg, exp = load(name), PAPER[name]
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert pipeline[0].type == 'LoadImageFromFile' and pipeline[1].type.startswith('Load')
    hw = IMAGE_SIZE[exp['dataset']]
    np.random.seed(0)  # mmcv's random transforms
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        _registry(cfg.default_scope)
        packed = Compose(pipeline[2:])(_loaded_sample(cfg, exp['task'], hw))
    sample = packed['data_samples']
    w_scale, h_scale = sample.scale_factor
    resized = (round(hw[0] * h_scale), round(hw[1] * w_scale))
    crop = tuple(min(c, r) for c, r in zip(exp['crop'], resized))
    assert tuple(packed['inputs'].shape[1:]) == tuple(sample.img_shape) == crop
    if exp['task'] == 'semantic':
        assert tuple(sample.gt_sem_seg.data.shape[1:]) == crop
    else:
        assert (sample.gt_instances.masks.height, sample.gt_instances.masks.width) == crop
    if exp['task'] == 'panoptic':
        assert tuple(sample.gt_sem_seg.sem_seg.shape[1:]) == crop


def test_model_only_cityscapes_panoptic_config():
    cfg = load(CITYSCAPES_PANOPTIC)
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                'val_dataloader', 'val_cfg', 'val_evaluator', 'test_cfg', 'test_evaluator'):
        assert cfg[key] is None, key
    meta = cfg.test_dataloader.dataset.metainfo
    assert len(meta.thing_classes) == 8 and len(meta.stuff_classes) == 11
    assert meta.classes == meta.thing_classes + meta.stuff_classes  # mmdet: things first
    assert len(meta.palette) == 19
    assert [t.type for t in cfg.test_dataloader.dataset.pipeline] == \
        ['LoadImageFromFile', 'Resize', 'PackDetInputs']


def _plain(node):
    """A config value as plain dicts and lists without the ``_scope_`` marks of inheritance."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(_plain(v) for v in node)
    return node


def _dataset_fields(loader: ConfigDict) -> dict:
    return _plain(loader.dataset.to_dict())


def test_restated_data_equals_mmdets_and_mmsegs():
    """What the configs restate from mmdet/mmseg configs they cannot inherit (a config cannot
    have two bases with the same keys) still equals those configs."""
    import mmdet
    import mmseg
    mmdet_cfg = Path(mmdet.__file__).parent / '.mim/configs/mask2former'
    mmseg_cfg = Path(mmseg.__file__).parent / '.mim/configs/mask2former'

    # COCO instance: mmdet's R-50 instance config on its panoptic one; ours drops the
    # panoptic segmentation folder from data_prefix, which instances never read
    ours = load(DET + '16xb1-lsj-737.5k_coco.py')
    ref = Config.fromfile(str(mmdet_cfg / 'mask2former_r50_8xb2-lsj-50e_coco.py'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        mine, theirs = _dataset_fields(ours[loader]), _dataset_fields(ref[loader])
        assert theirs['data_prefix'].pop('seg').startswith('annotations/panoptic_')
        assert mine == theirs, loader
    for key in ('val_evaluator', 'test_evaluator'):
        assert _plain(ours[key]) == _plain(ref[key]), key
    for key in ('data_preprocessor', 'test_cfg'):
        assert _plain(ours.model[key]) == _plain(ref.model[key]), key

    # Cityscapes semantic: mmseg's Swin-L Cityscapes config, but for the crop's class limit
    ours = load(SEG + '8xb2-90k_cityscapes-512x1024.py')
    ref = Config.fromfile(str(
        mmseg_cfg / 'mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        mine, theirs = _dataset_fields(ours[loader]), _dataset_fields(ref[loader])
        if loader == 'train_dataloader':
            crop = [t for t in theirs['pipeline'] if t['type'] == 'RandomCrop'][0]
            assert crop['cat_max_ratio'] == 0.75
            crop['cat_max_ratio'] = 1.0
        assert mine == theirs, loader
        assert ours[loader].batch_size == ref[loader].batch_size
    assert _plain(ours.model.data_preprocessor) == _plain(ref.model.data_preprocessor)
    assert _plain(ours.model.decode_head.loss_cls) == _plain(ref.model.decode_head.loss_cls)
    for key in ('tta_pipeline', 'val_evaluator', 'test_evaluator', 'param_scheduler',
                'train_cfg', 'crop_size'):
        assert _plain(ours[key]) == _plain(ref[key]), key


# ---------------------------------------------------------------------------------- data
@pytest.mark.parametrize('name', sorted(PAPER), ids=_id)
def test_paper_configs_read_the_real_datasets(name, monkeypatch, tmp_path):
    cfg, exp = load(name), PAPER[name]
    assert 'data/sample' not in str(cfg.to_dict())
    loaders = ['train_dataloader', 'val_dataloader', 'test_dataloader']
    for loader in loaders:
        dataset = cfg[loader].dataset
        assert (dataset.type, dataset.data_root) == (exp['dataset'], exp['data_root'])
        assert 'metainfo' not in dataset  # all classes of the dataset
    # Without the data on disk, the tools stop before building anything and show the layout,
    # which names every file and folder the config reads.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        check_dataset_paths(cfg, loaders)
    message = str(exit_info.value.code)
    layout = DATASET_LAYOUTS[exp['dataset']]
    assert 'Standard layout of ' + layout in message
    for loader in loaders:
        dataset = cfg[loader].dataset
        for path in [dataset.get('ann_file') or '', *dataset.data_prefix.values()]:
            assert osp.basename(path.rstrip('/')) in layout, (loader, path)
    # evaluator files live in the same layout
    evaluators = cfg.val_evaluator if isinstance(cfg.val_evaluator, list) else \
        [cfg.val_evaluator]
    for evaluator in evaluators:
        for key in ('ann_file', 'seg_prefix'):
            if key in evaluator:
                assert evaluator[key].startswith(exp['data_root'])
                assert osp.basename(evaluator[key].rstrip('/')) in layout, evaluator[key]


# -------------------------------------------------------------------- one training step
SIZE = (64, 64)


def _registry(scope: str):
    __import__(f'{scope}.utils', fromlist=['register_all_modules']).register_all_modules(
        init_default_scope=False)
    return __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model without pretrained weights (no download), and the input size made the
    test's: mmdet pads every training batch to the crop size (``batch_augments``, dropped here),
    mmseg to ``size`` (set to the test image's). Nothing else of the config is changed."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    if cfg.default_scope == 'mmseg':
        model_cfg.data_preprocessor.size = SIZE
    else:
        model_cfg.data_preprocessor.batch_augments = None
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        torch.manual_seed(0)
        return _registry(cfg.default_scope).build(model_cfg)


def det_batch(task: str, things: int, stuff: int) -> dict:
    """One 64x64 image with two thing instances (rectangles) and, for panoptic, a semantic map
    with two stuff regions (as LoadPanopticAnnotations makes it: thing pixels carry their
    class, unlabelled pixels 255)."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    gen = torch.Generator().manual_seed(0)
    h, w = SIZE
    boxes = [(4, 6, 30, 40), (34, 10, 60, 58)]  # x1, y1, x2, y2
    masks = np.zeros((len(boxes), h, w), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    labels = torch.tensor([1, things - 1])
    sample = DetDataSample(metainfo=dict(
        img_id=0, img_shape=SIZE, ori_shape=SIZE, scale_factor=(1., 1.), flip=False,
        flip_direction=None))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32), labels=labels,
        masks=BitmapMasks(masks, h, w))
    if task == 'panoptic':
        seg = torch.full((1, h, w), things, dtype=torch.uint8)  # first stuff class
        seg[:, h // 2:] = things + stuff - 1  # last stuff class
        seg[:, :2] = 255
        for label, mask in zip(labels, masks):
            seg[0][torch.from_numpy(mask).bool()] = label
        sample.gt_sem_seg = PixelData(sem_seg=seg)
    image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    return dict(inputs=[image], data_samples=[sample])


def seg_batch(num_classes: int) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *SIZE), generator=gen, dtype=torch.uint8)
    label = torch.randint(0, num_classes, (1, 8, 8), generator=gen)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)  # 8x8 px regions
    label[:, :2] = 255
    sample = SegDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE, pad_shape=SIZE))
    sample.gt_sem_seg = PixelData(data=label)
    return dict(inputs=[image], data_samples=[sample])


_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
          torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)


def reference_lr_and_decay(model: torch.nn.Module, lr: float, weight_decay: float
                           ) -> Dict[str, tuple]:
    """(lr, weight decay) per parameter as Mask2Former's train_net.py ``build_optimizer`` sets
    them: BACKBONE_MULTIPLIER 0.1 on modules named ``*backbone*``, WEIGHT_DECAY_NORM 0 on norm
    layers, WEIGHT_DECAY_EMBED 0 on nn.Embedding, and 0 on Swin's ``relative_position_bias_table``
    / ``absolute_pos_embed`` (DiNAT has neither). mmdet's pixel decoder keeps its level encoding
    in an nn.Embedding where Mask2Former's MSDeformAttn encoder has an nn.Parameter
    (``level_embed``), which that rule decays."""
    result = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f'{module_name}.{param_name}'
            decay = weight_decay
            if 'relative_position_bias_table' in param_name or 'absolute_pos_embed' in param_name:
                decay = 0.
            if isinstance(module, _NORMS):
                decay = 0.
            if isinstance(module, torch.nn.Embedding) and \
                    not module_name.endswith('pixel_decoder.level_encoding'):
                decay = 0.
            result[name] = (lr * 0.1 if 'backbone' in module_name else lr, decay)
    return result


def check_lr_and_decay(cfg: Config, model: torch.nn.Module, optim_wrapper) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    built = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            built[names[id(p)]] = (group['lr'], group['weight_decay'])
    optimizer = cfg.optim_wrapper.optimizer
    expected = reference_lr_and_decay(model, optimizer.lr, optimizer.weight_decay)
    assert built.keys() == expected.keys()
    wrong = {n: (built[n], expected[n]) for n in built
             if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(built[n], expected[n]))}
    assert not wrong, f'{len(wrong)} parameters differ, e.g. {sorted(wrong.items())[:5]}'
    # the cases that matter, spelled out
    rpbs = [n for n in built if n.endswith('.attn.rpb')]
    assert len(rpbs) == 30 and all(built[n] == pytest.approx((1e-5, 0.05)) for n in rpbs)
    assert built['backbone.levels.2.blocks.17.norm2.weight'] == pytest.approx((1e-5, 0.))
    head = 'decode_head' if cfg.default_scope == 'mmseg' else 'panoptic_head'
    assert built[f'{head}.query_feat.weight'] == pytest.approx((1e-4, 0.))
    assert built[f'{head}.pixel_decoder.level_encoding.weight'] == pytest.approx((1e-4, 0.05))


def _batch(cfg: Config) -> dict:
    if cfg.default_scope == 'mmseg':
        return seg_batch(_head(cfg).num_classes)
    head = _head(cfg)
    task = 'panoptic' if head.num_stuff_classes else 'instance'
    return det_batch(task, head.num_things_classes, head.num_stuff_classes)


def train_step(model: torch.nn.Module, data: dict, optim_wrapper=None) -> Dict[str, float]:
    """``model.train_step``, looking at the gradients before the optimizer steps."""
    model.train()
    losses = model(**model.data_preprocessor(copy.deepcopy(data), True), mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert loss.isfinite()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.isfinite().all()]
    assert not no_grad, f'no finite gradient for {no_grad[:5]} ({len(no_grad)})'
    if optim_wrapper is not None:
        optim_wrapper.step()
        optim_wrapper.zero_grad()
    return {k: v.item() for k, v in log_vars.items()}


@pytest.mark.parametrize('name', sorted(PAPER), ids=_id)
def test_paper_model_trains_one_step(name):
    """The full model (DiNAT-L, the paper head) on a 64 px batch: the optimizer groups of the
    config, a loss from every decoder layer and a finite gradient for every parameter."""
    from mmengine.optim import build_optim_wrapper
    cfg = load(name)
    model = build_model(cfg)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    check_lr_and_decay(cfg, model, optim_wrapper)

    # All configs share the optimizer settings (test_training_recipe) and their groups were
    # checked above, so one of them takes the optimizer step too (AdamW on 215M parameters
    # with clipping: seconds on a CPU).
    step = name == COCO_PANOPTIC
    params = dict(model.named_parameters())
    watched = ['backbone.levels.0.blocks.1.attn.rpb', 'backbone.norm3.weight',
               'panoptic_head.cls_embed.weight'] if step else []
    before = {n: params[n].detach().clone() for n in watched}
    log_vars = train_step(model, _batch(cfg), optim_wrapper if step else None)
    # the final and the 9 intermediate decoder outputs, 3 losses each
    assert sum(k.endswith(('loss_cls', 'loss_mask', 'loss_dice')) for k in log_vars) == 30
    assert all(math.isfinite(v) for v in log_vars.values())
    for n in watched:
        assert not torch.equal(before[n], params[n]), f'{n} did not move'


def test_model_only_cityscapes_panoptic_trains_and_predicts():
    """The model-only config builds through mmdet's init_detector (which also reads its test
    dataset's metainfo), predicts a panoptic map of its 19 classes through inference_detector,
    and its model trains (loss and backward; the config has no optimizer)."""
    from mmdet.apis import inference_detector, init_detector
    from mmdet.models.seg_heads.panoptic_fusion_heads.maskformer_fusion_head import \
        INSTANCE_OFFSET
    cfg = load(CITYSCAPES_PANOPTIC)
    # input size only: the test image stays small, and is not padded to 1024 for training
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize'][0]
    resize.scale = SIZE
    cfg.model.data_preprocessor.batch_augments = None
    torch.manual_seed(0)
    model = init_detector(cfg, checkpoint=None, device='cpu')
    assert len(model.dataset_meta['palette']) == 19  # the config's, not random
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = inference_detector(model, image)
    panoptic = result.pred_panoptic_seg.sem_seg
    assert panoptic.shape == (1, 48, 64)
    assert int((panoptic % INSTANCE_OFFSET).max()) <= 19  # 19 classes, 19 = void

    head = cfg.model.panoptic_head
    log_vars = train_step(model, det_batch('panoptic', head.num_things_classes,
                                           head.num_stuff_classes))
    assert all(math.isfinite(v) for v in log_vars.values())


def test_batches_hold_what_the_heads_train_on():
    """The synthetic batches carry thing and stuff labels in range (a guard on the helpers)."""
    data = det_batch('panoptic', 8, 11)
    sample = data['data_samples'][0]
    assert sample.gt_instances.labels.tolist() == [1, 7]
    values = set(sample.gt_sem_seg.sem_seg.unique().tolist())
    assert values == {1, 7, 8, 18, 255}
    labels: List[int] = seg_batch(19)['data_samples'][0].gt_sem_seg.data.unique().tolist()
    assert labels[-1] == 255 and len(labels) > 5
