"""The detectron2 key/shape fixture of the 8 published Mask2Former-DiNAT-L checkpoints
(``tests/data/mask2former_dinat_large_d2_keys.json``, written by
``scripts/make_mask2former_key_fixture.py`` from the Mask2Former and reference sources).

The fixture is the stand-in for checkpoints nobody here can download, so it is checked on its
own terms: each task holds exactly the tensors issue 13 states (117 pixel-decoder + 175
predictor + ``criterion.empty_weight``), the task-dependent shapes follow the task's class and
query counts, the tasks differ nowhere else, the class tables agree with the class counts and
with each other, and the backbone part is exactly the state dict of our DiNAT-L.
"""
import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from dinat_backbone.models import DiNAT

FIXTURE = Path(__file__).resolve().parent / 'data' / 'mask2former_dinat_large_d2_keys.json'
TASKS = ('coco_panoptic', 'coco_instance', 'ade20k_panoptic', 'ade20k_instance',
         'ade20k_semantic', 'cityscapes_panoptic', 'cityscapes_instance', 'cityscapes_semantic')
PREDICTOR = 'sem_seg_head.predictor.'
# The only tensors whose shapes depend on the task: classes (+1 "no object") and queries.
TASK_DEPENDENT = {PREDICTOR + 'class_embed.weight', PREDICTOR + 'class_embed.bias',
                  PREDICTOR + 'query_feat.weight', PREDICTOR + 'query_embed.weight',
                  'criterion.empty_weight'}


@pytest.fixture(scope='module')
def fixture() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


def state_dict_shapes(fixture: dict, task: str, group: str = None) -> Dict[str, List[int]]:
    """Full key -> shape of one task (or of one of its groups), shared groups expanded."""
    shapes = {}
    for name, prefix in fixture['groups'].items():
        if group not in (None, name):
            continue
        stored = fixture['tasks'][task]['state_dict'][name]
        keys = fixture['shared'][name] if stored == 'shared' else stored
        shapes.update({prefix + key: shape for key, shape in keys.items()})
    return shapes


def test_fixture_covers_the_published_checkpoints(fixture):
    assert tuple(fixture['tasks']) == TASKS
    for task, entry in fixture['tasks'].items():
        assert entry['checkpoint'] == f'mask2former_dinat_large_{task}.pth'
        assert entry['url'].endswith('/checkpoints/m2f/' + entry['checkpoint'])
        assert entry['config_files'][0].endswith('.yaml') and '/dinat/' in entry['config_files'][0]
    assert FIXTURE.stat().st_size < 300 * 1024


@pytest.mark.parametrize('task', TASKS)
def test_group_counts(fixture, task):
    entry = fixture['tasks'][task]
    shapes = state_dict_shapes(fixture, task)
    prefixes = fixture['groups'].values()
    assert all(sum(key.startswith(p) for p in prefixes) == 1 for key in shapes)
    counts = {name: len(state_dict_shapes(fixture, task, name)) for name in fixture['groups']}
    assert counts == entry['counts']
    # Issue 13: 117 pixel-decoder + 175 predictor tensors (mmdet's 292) and the criterion's
    # class weights, the one buffer, which a conversion drops.
    assert (counts['pixel_decoder'], counts['predictor']) == (117, 175)
    assert set(state_dict_shapes(fixture, task, 'criterion')) == {'criterion.empty_weight'}
    assert entry['buffers'] == ['criterion.empty_weight']
    # Every tensor but the buffer is a parameter; DiNAT-L Mask2Former is "220M" in the
    # reference README, for every task.
    num_parameters = sum(torch.Size(shape).numel() for key, shape in shapes.items()
                         if key not in entry['buffers'])
    assert num_parameters == entry['num_parameters']
    assert round(num_parameters / 1e6) == 220


@pytest.mark.parametrize('task', TASKS)
def test_shapes_follow_the_task_settings(fixture, task):
    entry, cfg = fixture['tasks'][task], fixture['tasks'][task]['cfg']
    shapes = state_dict_shapes(fixture, task)
    num_classes, num_queries = entry['num_classes'], entry['num_queries']
    hidden = cfg['MODEL.MASK_FORMER.HIDDEN_DIM']
    assert num_classes == cfg['MODEL.SEM_SEG_HEAD.NUM_CLASSES']
    assert num_queries == cfg['MODEL.MASK_FORMER.NUM_OBJECT_QUERIES']
    assert num_queries == (100 if task.endswith('semantic') else 200)
    assert shapes[PREDICTOR + 'class_embed.weight'] == [num_classes + 1, hidden]
    assert shapes[PREDICTOR + 'class_embed.bias'] == [num_classes + 1]
    assert shapes['criterion.empty_weight'] == [num_classes + 1]
    assert shapes[PREDICTOR + 'query_feat.weight'] == [num_queries, hidden]
    assert shapes[PREDICTOR + 'query_embed.weight'] == [num_queries, hidden]
    assert shapes[PREDICTOR + 'mask_embed.layers.2.weight'] == [
        cfg['MODEL.SEM_SEG_HEAD.MASK_DIM'], hidden]
    # DEC_LAYERS counts the prediction on the learnable queries too: 10 -> 9 decoder layers.
    assert entry['num_decoder_layers'] == cfg['MODEL.MASK_FORMER.DEC_LAYERS'] - 1
    for layers in ('transformer_self_attention_layers', 'transformer_cross_attention_layers',
                   'transformer_ffn_layers'):
        indices = {int(key.split('.')[3]) for key in shapes if key.startswith(
            f'{PREDICTOR}{layers}.')}
        assert indices == set(range(entry['num_decoder_layers']))
    encoder = 'sem_seg_head.pixel_decoder.transformer.encoder.layers.'
    encoder_layers = {int(key[len(encoder):].split('.')[0]) for key in shapes
                      if key.startswith(encoder)}
    assert encoder_layers == set(range(cfg['MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS']))
    # The pixel decoder reads res5, res4, res3 (input_proj.0-2) and res2 (adapter_1), whose
    # channels are the backbone's embed_dim * 2**level.
    embed_dim = fixture['backbone_cfg']['MODEL.DINAT.EMBED_DIM']
    conv_dim = cfg['MODEL.SEM_SEG_HEAD.CONVS_DIM']
    for i, level in enumerate((3, 2, 1)):
        assert shapes[f'sem_seg_head.pixel_decoder.input_proj.{i}.0.weight'] == [
            conv_dim, embed_dim * 2**level, 1, 1]
    assert shapes['sem_seg_head.pixel_decoder.adapter_1.weight'] == [conv_dim, embed_dim, 1, 1]


def test_tasks_differ_only_in_class_and_query_tensors(fixture):
    reference = state_dict_shapes(fixture, 'coco_panoptic')
    for task in TASKS:
        shapes = state_dict_shapes(fixture, task)
        assert list(shapes) == list(reference), task
        assert {key for key in shapes if shapes[key] != reference[key]} <= TASK_DEPENDENT


@pytest.mark.parametrize('task', TASKS)
def test_class_tables_match_the_class_counts(fixture, task):
    categories = fixture['tasks'][task]['categories']
    num_classes = fixture['tasks'][task]['num_classes']
    assert len(categories['names']) == len(categories['ids']) == num_classes
    assert len(set(categories['ids'])) == num_classes
    assert len(categories.get('isthing', categories['ids'])) == num_classes


def test_class_tables_agree_across_tasks(fixture):
    def table(task):
        return fixture['tasks'][task]['categories']

    for dataset in ('coco', 'ade20k', 'cityscapes'):
        panoptic, instance = table(f'{dataset}_panoptic'), table(f'{dataset}_instance')
        # The instance classes are the panoptic things, in the same order (ADE20K's come from
        # a second file of Mask2Former's, with other spellings: compare ids).
        things = [i for i, thing in zip(panoptic['ids'], panoptic['isthing']) if thing]
        assert instance['ids'] == things, dataset
    for key in ('ids', 'names', 'isthing'):
        assert table('cityscapes_semantic')[key] == table('cityscapes_panoptic')[key]
    assert len(table('ade20k_semantic')['names']) == len(table('ade20k_panoptic')['names'])
    # The class-order question of issue 13: detectron2's ADE20K panoptic order interleaves
    # things and stuff (mmdet lists things first, so its rows need a permutation); COCO's
    # lists the things first, as mmdet does.
    ade, coco = table('ade20k_panoptic')['isthing'], table('coco_panoptic')['isthing']
    assert ade != sorted(ade, reverse=True)
    assert coco == sorted(coco, reverse=True)


def test_backbone_keys_match_our_dinat_large(fixture):
    cfg = fixture['backbone_cfg']
    assert cfg['MODEL.BACKBONE.NAME'] == 'D2DiNAT'
    large = DiNAT.arch_zoo['large']
    assert (cfg['MODEL.DINAT.EMBED_DIM'], cfg['MODEL.DINAT.DEPTHS'], cfg['MODEL.DINAT.NUM_HEADS'],
            cfg['MODEL.DINAT.MLP_RATIO']) == (large['embed_dims'], large['depths'],
                                              large['num_heads'], large['mlp_ratio'])
    with torch.device('meta'):  # shapes only: no 200M-parameter allocation
        model = DiNAT(arch='large', kernel_size=cfg['MODEL.DINAT.KERNEL_SIZE'],
                      dilations=cfg['MODEL.DINAT.DILATIONS'])
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    prefix = fixture['groups']['backbone']
    published = {key[len(prefix):]: shape
                 for key, shape in state_dict_shapes(fixture, 'coco_panoptic', 'backbone').items()}
    assert sorted(set(ours) ^ set(published)) == []
    assert {key: shape for key, shape in ours.items() if published[key] != shape} == {}
    assert published['levels.0.blocks.0.attn.rpb'] == [6, 21, 21]  # kernel 11 -> 2k - 1
