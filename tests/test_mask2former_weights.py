"""The 8 published detectron2 Mask2Former-DiNAT-L models on mmdet 3.3 / mmseg 1.2, without
downloading them.

The detectron2 side comes from ``tests/data/mask2former_dinat_large_d2_keys.json`` (every key
and shape of the 8 checkpoints and their class tables, built from the real Mask2Former and
reference source; ``test_mask2former_fixture.py`` checks it). The mmdet/mmseg side is the real
model built from this project's config of each model-zoo entry.

* At full size (meta device): the fixture's 705 tensors convert to exactly the keys and shapes
  of each config's model.
* At test size: a detectron2 checkpoint is written from the fixture with seeded random values
  around a tiny DiNAT (the head keeps its real shapes; only the pixel decoder's input
  projections take the tiny widths), converted, loaded strictly, and run. Values are checked
  where they land: named tensor pairs read from both sources, one decoder layer and one encoder
  layer computed as detectron2 computes them, and each class's classifier row found by name.
* Loading goes through the Runner hook (``load_from`` / ``tools/test.py``) and
  ``tools/convert_checkpoint.py --task``; a checkpoint of another task is refused.
"""
import copy
import functools
import json
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope

import dinat_backbone  # noqa: F401  (registers DiNAT in mmdet and mmseg)
from dinat_backbone.models import DiNAT
from dinat_backbone.weights.keys import CheckpointKeyError
from dinat_backbone.weights.mask2former import TASKS, convert_mask2former
from dinat_backbone.weights.task import (TaskCheckpointHook, add_task_checkpoint_hook,
                                         check_task_state_dict, convert_task_checkpoint,
                                         detect_task_layout)
from dinat_backbone.weights.zoo import TASK_CHECKPOINTS
from helpers import DATA_DIR, REPO_ROOT, load_tool

FIXTURE = DATA_DIR / 'mask2former_dinat_large_d2_keys.json'
NAMES = ('coco_panoptic', 'coco_instance', 'ade20k_panoptic', 'ade20k_instance',
         'ade20k_semantic', 'cityscapes_panoptic', 'cityscapes_instance', 'cityscapes_semantic')
PIXEL_DECODER, PREDICTOR = 'sem_seg_head.pixel_decoder.', 'sem_seg_head.predictor.'
TINY_BACKBONE = dict(
    arch=dict(embed_dims=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.),
    kernel_size=3, dilations=[[1], [1, 2], [2, 1], [1]], drop_path_rate=0.)
TINY_WIDTHS = [16, 32, 64, 128]
LARGE_WIDTHS = [192, 384, 768, 1536]
# Spelling differences between detectron2's class tables and mmdet's (ADE20K panoptic).
D2_TO_MMDET_NAMES = {'plane': 'airplane', 'window ': 'window'}


@pytest.fixture(scope='module')
def fixture() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


def d2_shapes(fixture: dict, name: str) -> Dict[str, List[int]]:
    """Full key -> shape of one published checkpoint's ``model`` (shared groups expanded)."""
    shapes = {}
    for group, prefix in fixture['groups'].items():
        stored = fixture['tasks'][name]['state_dict'][group]
        keys = fixture['shared'][group] if stored == 'shared' else stored
        shapes.update({prefix + key: shape for key, shape in keys.items()})
    return shapes


def zoo_entry(name: str):
    return TASK_CHECKPOINTS[f'mask2former_dinat_large_{name}']


@functools.lru_cache(maxsize=None)
def _parsed(name: str) -> Config:
    return Config.fromfile(str(REPO_ROOT / zoo_entry(name).config))


def paper_config(name: str) -> Config:
    return copy.deepcopy(_parsed(name))


def head_of(cfg_model) -> str:
    return 'decode_head' if 'decode_head' in cfg_model else 'panoptic_head'


def tiny_config(name: str) -> Config:
    """The zoo config with a tiny DiNAT; the Mask2Former head as it is, only its input widths
    follow the backbone."""
    cfg = paper_config(name)
    cfg.model.backbone.update(init_cfg=None, **TINY_BACKBONE)
    cfg.model[head_of(cfg.model)].in_channels = TINY_WIDTHS
    return cfg


def build(cfg: Config, meta: bool = False) -> torch.nn.Module:
    scope = cfg.default_scope
    __import__(f'{scope}.utils', fromlist=['x']).register_all_modules(init_default_scope=False)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    torch.manual_seed(0)
    with torch.device('meta' if meta else 'cpu'), \
            DefaultScope.overwrite_default_scope(scope):
        return registry.build(copy.deepcopy(cfg.model)).eval()


@functools.lru_cache(maxsize=None)
def full_size_model(name: str) -> torch.nn.Module:
    cfg = paper_config(name)
    cfg.model.backbone.init_cfg = None
    return build(cfg, meta=True)


def random_like(shape, key: str, generator: torch.Generator) -> torch.Tensor:
    """Seeded values at a sane scale: weights ~ 1/sqrt(fan-in), norm scales (the only 1-d
    weights) near 1, biases near 0."""
    value = torch.randn(shape, generator=generator)
    if len(shape) > 1:
        return value / (torch.Size(shape[1:]).numel() ** 0.5)
    return value * 0.1 + (1. if key.endswith('weight') else 0.)


def d2_checkpoint(fixture: dict, name: str, seed: int = 0) -> dict:
    """A detectron2 checkpoint of the published ``name`` model around a tiny DiNAT: the head
    with the fixture's keys and shapes, except the in-channels of the pixel decoder's input
    projections (res5, res4, res3 for ``input_proj.0..2``, res2 for ``adapter_1``)."""
    generator = torch.Generator().manual_seed(seed)
    backbone = DiNAT(out_indices=(0, 1, 2, 3), **TINY_BACKBONE).state_dict()
    shapes = d2_shapes(fixture, name)
    state = OrderedDict()
    for key in backbone:
        state['backbone.' + key] = random_like(backbone[key].shape, key, generator)
    for key, shape in shapes.items():
        if key.startswith('backbone.'):
            continue
        shape = list(shape)
        for level, large, tiny in ((3, 0, 3), (2, 1, 2), (1, 2, 1)):
            if key == f'{PIXEL_DECODER}input_proj.{large}.0.weight':
                assert shape[1] == LARGE_WIDTHS[level]
                shape[1] = TINY_WIDTHS[tiny]
        if key == f'{PIXEL_DECODER}adapter_1.weight':
            assert shape[1] == LARGE_WIDTHS[0]
            shape[1] = TINY_WIDTHS[0]
        state[key] = random_like(shape, key, generator)
    return {'model': state, 'iteration': 89999,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-6, 'params': [0]}]},
            'scheduler': {'base_lrs': [1e-4], 'last_epoch': 89999}}


# ---------------------------------------------------------------------------------------------
# Full size: the fixture against each zoo config's model


def test_zoo_entries_and_fixture_agree(fixture):
    entries = [e for e in TASK_CHECKPOINTS.values() if e.method == 'Mask2Former']
    assert [e.name for e in entries] == [f'mask2former_dinat_large_{n}' for n in NAMES]
    assert tuple(TASKS) == NAMES == tuple(fixture['tasks'])
    published = {  # mask2former/README.md of the reference
        'coco_panoptic': (58.5, 49.2, 68.3, None), 'coco_instance': (None, 50.8, None, None),
        'ade20k_panoptic': (49.4, 35.0, 56.3, None), 'ade20k_instance': (None, 35.4, None, None),
        'ade20k_semantic': (None, None, None, 58.1),
        'cityscapes_panoptic': (67.2, 44.5, 83.4, None),
        'cityscapes_instance': (None, 45.1, None, None),
        'cityscapes_semantic': (None, None, None, 84.5)}
    for name in NAMES:
        entry, task, d2 = zoo_entry(name), TASKS[name], fixture['tasks'][name]
        assert (entry.pq, entry.mask_ap, entry.miou, entry.miou_ms) == published[name]
        assert entry.url == d2['url'] and (REPO_ROOT / entry.config).is_file()
        assert entry.pretrained == 'dinat_large_k11.in22k' and entry.params_m == 220
        assert (task.num_classes, task.num_queries) == (d2['num_classes'], d2['num_queries'])
        if task.kind != 'semantic':  # semantic models do not tell things from stuff
            assert task.things == sum(d2['categories']['isthing'])
        # each published model has its own (classes, queries): how the converter tells them
    assert len({(t.num_classes, t.num_queries) for t in TASKS.values()}) == len(TASKS)


@pytest.mark.parametrize('name', NAMES)
def test_full_size_conversion_fills_the_zoo_config_model(fixture, name):
    """Every fixture key mapped once (117 + 175 renamed, 413 kept, the criterion dropped) onto
    exactly the keys and shapes of the config's model."""
    d2 = {k: torch.empty(s, device='meta') for k, s in d2_shapes(fixture, name).items()}
    counts = fixture['tasks'][name]['counts']
    assert (counts['pixel_decoder'], counts['predictor']) == (117, 175)
    state_dict, report = convert_task_checkpoint({'model': d2, 'iteration': 1})
    assert report.layout == 'detectron2' and report.detectron2.task is TASKS[name]
    renamed = {group: sum(rules.values()) for group, rules in report.detectron2.renamed.items()}
    head = TASKS[name].head
    assert renamed == {f'{PIXEL_DECODER} -> {head}.pixel_decoder.': 117,
                       f'{PREDICTOR} -> {head}.': 175}
    assert report.detectron2.kept == counts['backbone'] == 413
    assert report.dropped == ['criterion.empty_weight']
    assert len(state_dict) == 413 + 292 == len(d2) - 1
    check_task_state_dict(state_dict, full_size_model(name), report)  # strict: raises
    assert report.num_tensors == 705 and not report.missing and not report.mismatched


# ---------------------------------------------------------------------------------------------
# Test size: convert, load strictly, check the values, run


def model_classes(name: str) -> Tuple[str, ...]:
    """The class order the zoo config's test data uses (its metainfo, or its dataset's)."""
    cfg = _parsed(name)
    dataset = cfg.test_dataloader.dataset
    if dataset.get('metainfo'):
        return tuple(dataset.metainfo['classes'])
    registry = __import__(f'{cfg.default_scope}.registry', fromlist=['DATASETS']).DATASETS
    return tuple(registry.get(dataset.type).METAINFO['classes'])


def class_rows(fixture: dict, name: str) -> List[Tuple[str, int, int]]:
    """(class, detectron2 row, model row) for every class, found by name."""
    d2_names = [D2_TO_MMDET_NAMES.get(n, n) for n in fixture['tasks'][name]['categories']['names']]
    if name == 'ade20k_semantic':
        # detectron2 and mmseg both number the classes by ADE20K label - 1 (mmseg with
        # reduce_zero_label); their spellings differ ('road, route' / 'road'): compare by index
        pipeline = _parsed(name).test_dataloader.dataset.pipeline
        assert [t.get('reduce_zero_label') for t in pipeline if t.type == 'LoadAnnotations'] == \
            [True]
        assert 'ADE20K label - 1' in fixture['tasks'][name]['categories']['class_index']
        return [(n, i, i) for i, n in enumerate(d2_names)]
    target = model_classes(name)
    assert sorted(target) == sorted(d2_names)
    return [(n, i, target.index(n)) for i, n in enumerate(d2_names)]


def forward(model: torch.nn.Module, scope: str) -> list:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), generator=generator, dtype=torch.uint8)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             scale_factor=(1., 1.), batch_input_shape=(64, 64)))
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             pad_shape=(64, 64)))
    with torch.no_grad():
        return model.test_step(dict(inputs=[image], data_samples=[sample]))


@pytest.mark.parametrize('name', NAMES)
def test_tiny_model_loads_strictly_and_runs(fixture, name):
    cfg = tiny_config(name)
    model = build(cfg)
    checkpoint = d2_checkpoint(fixture, name)
    d2 = checkpoint['model']
    state_dict, report = convert_task_checkpoint(checkpoint)
    check_task_state_dict(state_dict, model, report)
    model.load_state_dict(state_dict, strict=True)
    loaded = model.state_dict()
    head = TASKS[name].head

    # named pairs, read from both sources
    pairs = {'backbone.levels.1.blocks.1.attn.rpb': 'backbone.levels.1.blocks.1.attn.rpb'}
    pd, pr = PIXEL_DECODER, PREDICTOR
    for i in (0, 8):
        layer = f'{head}.transformer_decoder.layers.{i}.'
        pairs.update({
            f'{pr}transformer_cross_attention_layers.{i}.multihead_attn.in_proj_weight':
            layer + 'cross_attn.attn.in_proj_weight',
            f'{pr}transformer_cross_attention_layers.{i}.norm.weight': layer + 'norms.0.weight',
            f'{pr}transformer_self_attention_layers.{i}.self_attn.out_proj.weight':
            layer + 'self_attn.attn.out_proj.weight',
            f'{pr}transformer_self_attention_layers.{i}.norm.bias': layer + 'norms.1.bias',
            f'{pr}transformer_ffn_layers.{i}.linear2.weight': layer + 'ffn.layers.1.weight',
            f'{pr}transformer_ffn_layers.{i}.norm.weight': layer + 'norms.2.weight'})
    pairs.update({
        f'{pd}input_proj.0.0.weight': f'{head}.pixel_decoder.input_convs.0.conv.weight',
        f'{pd}input_proj.2.1.bias': f'{head}.pixel_decoder.input_convs.2.gn.bias',
        f'{pd}transformer.level_embed': f'{head}.pixel_decoder.level_encoding.weight',
        f'{pd}transformer.encoder.layers.5.linear1.weight':
        f'{head}.pixel_decoder.encoder.layers.5.ffn.layers.0.0.weight',
        f'{pd}transformer.encoder.layers.5.norm2.weight':
        f'{head}.pixel_decoder.encoder.layers.5.norms.1.weight',
        f'{pd}adapter_1.weight': f'{head}.pixel_decoder.lateral_convs.0.conv.weight',
        f'{pd}layer_1.norm.bias': f'{head}.pixel_decoder.output_convs.0.gn.bias',
        f'{pd}mask_features.weight': f'{head}.pixel_decoder.mask_feature.weight',
        f'{pr}decoder_norm.weight': f'{head}.transformer_decoder.post_norm.weight',
        f'{pr}query_feat.weight': f'{head}.query_feat.weight',
        f'{pr}query_embed.weight': f'{head}.query_embed.weight',
        f'{pr}level_embed.weight': f'{head}.level_embed.weight',
        f'{pr}mask_embed.layers.1.weight': f'{head}.mask_embed.2.weight',
        f'{pr}mask_embed.layers.2.bias': f'{head}.mask_embed.4.bias'})
    for source, target in pairs.items():
        assert torch.equal(loaded[target], d2[source]), (source, target)

    # each class's classifier row, found by name; "no object" stays last
    rows = class_rows(fixture, name)
    for key in ('weight', 'bias'):
        d2_rows, rows_here = d2[f'{pr}class_embed.{key}'], loaded[f'{head}.cls_embed.{key}']
        for class_name, i, j in rows:
            assert torch.equal(rows_here[j], d2_rows[i]), (class_name, i, j)
        assert torch.equal(rows_here[-1], d2_rows[-1])
    moved = sum(i != j for _, i, j in rows)
    assert (moved > 0) == (name in ('ade20k_panoptic', 'cityscapes_panoptic'))
    assert bool(report.detectron2.permuted) == (moved > 0)
    assert report.meta['dataset_meta']['classes'] == model_classes(name)
    assert report.meta['converted_from'] == dict(
        layout='detectron2', model=f'mask2former_dinat_large_{name}', iteration=89999)
    assert report.dropped == ['criterion.empty_weight', 'optimizer', 'scheduler']

    result = forward(model, cfg.default_scope)[0]
    if TASKS[name].kind == 'semantic':
        assert result.seg_logits.data.shape == (TASKS[name].num_classes, 64, 64)
    elif TASKS[name].kind == 'panoptic':
        assert result.pred_panoptic_seg.sem_seg.shape == (1, 64, 64)
    else:
        assert len(result.pred_instances) > 0 and result.pred_instances.masks.shape[1:] == (64, 64)
        assert int(result.pred_instances.labels.max()) < TASKS[name].num_classes


def _layer_norm(x, d2, prefix):
    return F.layer_norm(x, x.shape[-1:], d2[prefix + 'weight'], d2[prefix + 'bias'])


def _d2_attention(query, key, value, d2, prefix):
    # nn.MultiheadAttention(256, 8) with detectron2's weights, sequence-first as there
    return F.multi_head_attention_forward(
        query, key, value, 256, 8, d2[prefix + 'in_proj_weight'], d2[prefix + 'in_proj_bias'],
        None, None, False, 0., d2[prefix + 'out_proj.weight'], d2[prefix + 'out_proj.bias'],
        training=False, need_weights=False)[0]


def _d2_ffn(x, d2, prefix):
    hidden = F.relu(F.linear(x, d2[prefix + 'linear1.weight'], d2[prefix + 'linear1.bias']))
    return x + F.linear(hidden, d2[prefix + 'linear2.weight'], d2[prefix + 'linear2.bias'])


def test_layers_compute_what_detectron2_computes(fixture):
    """One decoder layer, one deformable encoder layer and the mask MLP, with converted
    weights, against detectron2's forward written out with its own tensors
    (mask2former_transformer_decoder.py: CrossAttentionLayer, SelfAttentionLayer, FFNLayer,
    post-norm, in that order; msdeformattn.py: MSDeformAttnTransformerEncoderLayer; MLP)."""
    name = 'coco_panoptic'
    model = build(tiny_config(name))
    d2 = d2_checkpoint(fixture, name)['model']
    model.load_state_dict(convert_mask2former(d2)[0], strict=True)
    head = model.panoptic_head
    generator = torch.Generator().manual_seed(1)
    tgt, query_pos = (torch.randn(5, 1, 256, generator=generator) for _ in range(2))
    memory, pos = (torch.randn(12, 1, 256, generator=generator) for _ in range(2))

    i = 3
    x = _layer_norm(tgt + _d2_attention(tgt + query_pos, memory + pos, memory, d2,
                                        f'{PREDICTOR}transformer_cross_attention_layers.{i}.'
                                        'multihead_attn.'),
                    d2, f'{PREDICTOR}transformer_cross_attention_layers.{i}.norm.')
    x = _layer_norm(x + _d2_attention(x + query_pos, x + query_pos, x, d2,
                                      f'{PREDICTOR}transformer_self_attention_layers.{i}.'
                                      'self_attn.'),
                    d2, f'{PREDICTOR}transformer_self_attention_layers.{i}.norm.')
    expected = _layer_norm(_d2_ffn(x, d2, f'{PREDICTOR}transformer_ffn_layers.{i}.'), d2,
                           f'{PREDICTOR}transformer_ffn_layers.{i}.norm.')
    with torch.no_grad():  # mmdet is batch-first
        got = head.transformer_decoder.layers[i](
            query=tgt.transpose(0, 1), key=memory.transpose(0, 1),
            value=memory.transpose(0, 1), query_pos=query_pos.transpose(0, 1),
            key_pos=pos.transpose(0, 1), cross_attn_mask=None, self_attn_mask=None)
    torch.testing.assert_close(got.transpose(0, 1), expected, rtol=1e-4, atol=1e-5)

    # encoder layer: src = norm1(src + MSDeformAttn(src + pos, ..., src)); then the FFN, norm2.
    # The deformable attention has the same parameter names on both sides; it is taken from
    # the layer, the rest is detectron2's.
    layer = head.pixel_decoder.encoder.layers[2]
    src, src_pos = (torch.randn(1, 21, 256, generator=generator) for _ in range(2))
    levels = dict(spatial_shapes=torch.tensor([[4, 4], [2, 2], [1, 1]]),
                  level_start_index=torch.tensor([0, 16, 20]),
                  reference_points=torch.rand(1, 21, 3, 2, generator=generator))
    prefix = f'{PIXEL_DECODER}transformer.encoder.layers.2.'
    with torch.no_grad():
        attended = layer.self_attn(query=src, key=src, value=src, query_pos=src_pos,
                                   key_padding_mask=None, **levels)  # src + attention
        got = layer(query=src, query_pos=src_pos, key_padding_mask=None, **levels)
    x = _layer_norm(attended, d2, prefix + 'norm1.')
    torch.testing.assert_close(got, _layer_norm(_d2_ffn(x, d2, prefix), d2, prefix + 'norm2.'),
                               rtol=1e-4, atol=1e-5)

    # mask_embed: MLP(256, 256, 256, 3), ReLU between the layers
    y = tgt[:, 0]
    for k in range(3):
        y = F.linear(y, d2[f'{PREDICTOR}mask_embed.layers.{k}.weight'],
                     d2[f'{PREDICTOR}mask_embed.layers.{k}.bias'])
        y = F.relu(y) if k < 2 else y
    with torch.no_grad():
        torch.testing.assert_close(head.mask_embed(tgt[:, 0]), y)


# ---------------------------------------------------------------------------------------------
# load_from / tools/test.py (the Runner hook) and tools/convert_checkpoint.py --task


def test_runner_hook_and_convert_tool(fixture, tmp_path, capsys):
    from mmengine.runner import Runner
    name = 'ade20k_panoptic'  # the classes are permuted here
    checkpoint = d2_checkpoint(fixture, name)
    path = tmp_path / f'mask2former_dinat_large_{name}.pth'
    torch.save(checkpoint, path)
    expected, _ = convert_task_checkpoint(checkpoint)
    assert detect_task_layout(checkpoint) == 'detectron2'
    assert detect_task_layout(checkpoint['model']) == 'detectron2'  # a bare state dict too

    cfg = tiny_config(name)
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                'val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator', 'auto_scale_lr'):
        cfg.pop(key, None)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from = str(path)
    add_task_checkpoint_hook(cfg)  # what tools/test.py does
    runner = Runner.from_cfg(cfg)
    assert any(isinstance(h, TaskCheckpointHook) for h in runner.hooks)
    loaded = runner.load_checkpoint(str(path))
    assert set(loaded) == {'state_dict', 'meta'}
    assert loaded['meta']['converted_from']['model'] == f'mask2former_dinat_large_{name}'
    state = runner.model.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)

    config = tmp_path / 'tiny.py'
    cfg.dump(str(config))
    convert_checkpoint = load_tool('convert_checkpoint')
    dst = tmp_path / 'converted.pth'
    assert convert_checkpoint.main([str(path), str(dst), '--task', '--config', str(config)]) == 0
    out = capsys.readouterr().out
    assert 'detectron2 layout' in out and 'cls_embed rows permuted' in out
    assert 'none missing, unexpected or of another shape' in out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['dataset_meta']['classes'] == model_classes(name)
    assert saved['meta']['converted_from']['by'].endswith('tools/convert_checkpoint.py --task')
    assert all(torch.equal(saved['state_dict'][k], expected[k]) for k in expected)
    # a converted file is an mmengine checkpoint: converting again changes nothing
    again, report = convert_task_checkpoint(saved)
    assert report.layout == 'mmengine' and list(again) == list(expected)


# ---------------------------------------------------------------------------------------------
# Refusals


_PANOPTIC_ADE = 'panoptic, 100 things + 50 stuff, 200 queries'


@pytest.mark.parametrize('source,target,source_task,target_task', [
    ('ade20k_semantic', 'ade20k_panoptic', 'semantic, 150 classes, 100 queries', _PANOPTIC_ADE),
    ('coco_instance', 'coco_panoptic', 'instance, 80 classes, 200 queries',
     'panoptic, 80 things + 53 stuff, 200 queries'),
    ('coco_panoptic', 'coco_instance', 'panoptic, 80 things + 53 stuff, 200 queries',
     'instance, 80 classes, 200 queries'),
    ('ade20k_panoptic', 'ade20k_semantic', _PANOPTIC_ADE, 'semantic, 150 classes, 100 queries'),
    ('cityscapes_semantic', 'ade20k_semantic', 'semantic, 19 classes, 100 queries',
     'semantic, 150 classes, 100 queries'),
    ('ade20k_instance', 'cityscapes_instance', 'instance, 100 classes, 200 queries',
     'instance, 8 classes, 200 queries'),
])
def test_wrong_task_is_refused(fixture, source, target, source_task, target_task):
    d2 = {k: torch.empty(s, device='meta') for k, s in d2_shapes(fixture, source).items()}
    state_dict, report = convert_task_checkpoint({'model': d2})
    message = (f'Wrong task: the checkpoint is the published {source} model ({source_task}), '
               f'the model is {target_task}. Use the config of the '
               f'mask2former_dinat_large_{source} model-zoo entry.')
    for strict in (True, False):  # refused whatever strict says
        with pytest.raises(ValueError) as error:
            check_task_state_dict(state_dict, full_size_model(target), report, strict=strict)
        assert str(error.value) == message


def test_unknown_or_broken_detectron2_checkpoints_are_refused(fixture):
    d2 = {k: torch.empty(s, device='meta') for k, s in d2_shapes(fixture, 'coco_panoptic').items()}
    with pytest.raises(ValueError, match=r'with 10 classes and 200 queries is none of the '
                                         r'published DiNAT models'):
        convert_mask2former({**d2, f'{PREDICTOR}class_embed.weight': torch.empty(11, 256)})
    with pytest.raises(CheckpointKeyError, match=r'maps 1 keys .*predictor\.input_proj\.0\.weight'):
        convert_mask2former({**d2, f'{PREDICTOR}input_proj.0.weight': torch.empty(256, 256)})
    state_dict, report = convert_task_checkpoint({'model': d2})
    with pytest.raises(ValueError, match='a Linear without a Mask2Former head'):
        check_task_state_dict(state_dict, torch.nn.Linear(1, 1), report)


# ---------------------------------------------------------------------------------------------
# docs/model_zoo.md


def test_model_zoo_doc_lists_every_mask2former_model():
    text = (REPO_ROOT / 'docs' / 'model_zoo.md').read_text()
    for name in NAMES:
        entry = zoo_entry(name)
        scores = ' | '.join('-' if v is None else str(v)
                            for v in (entry.pq, entry.mask_ap, entry.miou, entry.miou_ms))
        row = (f'| {scores} | [{Path(entry.config).name}](../{entry.config}) | '
               f'[{Path(entry.url).name}]({entry.url}) |')
        assert row in text, name
        if name == 'cityscapes_panoptic':  # no dataset in mmdet 3.3: convert and predict
            assert (f'python tools/convert_checkpoint.py --task {entry.url} \\\n'
                    f'    mask2former_dinat_large_{name}_mmdet.pth --config {entry.config}\n'
                    in text)
        else:
            assert f'python tools/test.py {entry.config} \\\n    {entry.url}\n' in text, name
