"""The published detectron2 Mask2Former-DiNAT models on mmdet 3.x (panoptic, instance) and
mmseg 1.x (semantic).

The reference trained Mask2Former with DiNAT-L in detectron2 (facebookresearch/Mask2Former at
9b0651c with the reference's ``mask2former/dinat.py``) and published 8 checkpoints, one per
entry of :data:`TASKS`. Each holds ``MaskFormer.state_dict()`` under ``'model'``:

* ``backbone.*``: ``D2DiNAT``, whose parameter names are ours (kept as they are);
* ``sem_seg_head.pixel_decoder.*`` (117 tensors): ``MSDeformAttnPixelDecoder``;
* ``sem_seg_head.predictor.*`` (175 tensors): ``MultiScaleMaskedTransformerDecoder``;
* ``criterion.empty_weight``: the loss's class weights (a buffer; dropped, the configs' loss
  has its own).

mmdet 3.3's ``Mask2Former`` holds the same 292 head tensors under ``panoptic_head.``, mmseg
1.2's (which subclasses mmdet's head) under ``decode_head.``; :func:`convert_mask2former`
renames them by :data:`PIXEL_DECODER_RULES` and :data:`PREDICTOR_RULES`, read from
``msdeformattn.py`` / ``mask2former_transformer_decoder.py`` (Mask2Former) and
``msdeformattn_pixel_decoder.py`` / ``mask2former_layers.py`` / ``mask2former_head.py`` (mmdet):

* The pixel decoder builds ``input_proj`` (Conv2d + GroupNorm) and the level embedding for res5,
  res4, res3 in that order, as mmdet builds ``input_convs`` (ConvModule: ``conv``, ``gn``) and
  ``level_encoding``. Its deformable encoder layers name the same ``MSDeformAttn`` parameters
  as mmcv's ``MultiScaleDeformableAttention`` (same shapes and head/level/point layout); the FPN
  part names ``adapter_{i+1}`` / ``layer_{i+1}`` what mmdet calls ``lateral_convs.i`` /
  ``output_convs.i``.
* The decoder keeps three lists of post-norm layers and runs, per layer, cross-attention, then
  self-attention, then the FFN; mmdet's ``Mask2FormerTransformerDecoderLayer`` runs that order
  with ``norms.0``, ``norms.1``, ``norms.2``. ``mask_embed`` is an MLP (``layers.0..2``) there
  and ``Sequential(Linear, ReLU, Linear, ReLU, Linear)`` here (``0``, ``2``, ``4``).

Class order: each detectron2 model's ``class_embed`` row ``i`` is class ``i`` of its detectron2
dataset; mmdet/mmseg number classes as their datasets list them. The orders agree except for
the panoptic ADE20K and Cityscapes models: detectron2 interleaves things and stuff (ADE20K's
150-class order, Cityscapes' trainIds) while mmdet's panoptic head needs the things first. There
the rows are permuted by class name; the "no object" row stays last.
"""
import importlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .keys import CheckpointKeyError, StateDict, list_keys

__all__ = ['Mask2FormerTask', 'Mask2FormerConversion', 'TASKS', 'PIXEL_DECODER_RULES',
           'PREDICTOR_RULES', 'is_detectron2_mask2former', 'identify_task',
           'convert_mask2former', 'check_model_task']

# detectron2's Cityscapes trainIds 0-10 are stuff and 11-18 things (CITYSCAPES_CATEGORIES).
CITYSCAPES_STUFF = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                    'traffic sign', 'vegetation', 'terrain', 'sky')
CITYSCAPES_THINGS = ('person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')
# Mask2Former's ADE20K_150_CATEGORIES (register_ade20k_panoptic.py; ADE20K's 150-class order,
# things and stuff interleaved), spelled as mmdet's ADE20KPanopticDataset spells them:
# 'airplane' and 'window' are 'plane' and 'window ' there.
ADE20K_150 = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road, route', 'bed', 'window',
    'grass', 'cabinet', 'sidewalk, pavement', 'person', 'earth, ground', 'door', 'table',
    'mountain, mount', 'plant', 'curtain', 'chair', 'car', 'water', 'painting, picture', 'sofa',
    'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock, stone', 'wardrobe, closet, press', 'lamp', 'tub', 'rail', 'cushion',
    'base, pedestal, stand', 'box', 'column, pillar', 'signboard, sign',
    'chest of drawers, chest, bureau, dresser', 'counter', 'sand', 'sink', 'skyscraper',
    'fireplace', 'refrigerator, icebox', 'grandstand, covered stand', 'path', 'stairs',
    'runway', 'case, display case, showcase, vitrine',
    'pool table, billiard table, snooker table', 'pillow', 'screen door, screen',
    'stairway, staircase', 'river', 'bridge, span', 'bookcase', 'blind, screen', 'coffee table',
    'toilet, can, commode, crapper, pot, potty, stool, throne', 'flower', 'book', 'hill',
    'bench', 'countertop', 'stove', 'palm, palm tree', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel, hut, hutch, shack, shanty', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning, sunshade, sunblind',
    'street lamp', 'booth', 'tv', 'airplane', 'dirt track', 'clothes', 'pole',
    'land, ground, soil', 'bannister, banister, balustrade, balusters, handrail',
    'escalator, moving staircase, moving stairway', 'ottoman, pouf, pouffe, puff, hassock',
    'bottle', 'buffet, counter, sideboard', 'poster, posting, placard, notice, bill, card',
    'stage', 'van', 'ship', 'fountain',
    'conveyer belt, conveyor belt, conveyer, conveyor, transporter', 'canopy',
    'washer, automatic washer, washing machine', 'plaything, toy', 'pool', 'stool',
    'barrel, cask', 'basket, handbasket', 'falls', 'tent', 'bag', 'minibike, motorbike',
    'cradle', 'oven', 'ball', 'food, solid food', 'step, stair', 'tank, storage tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen',
    'blanket, cover', 'sculpture', 'hood, exhaust hood', 'sconce', 'vase', 'traffic light',
    'tray', 'trash can', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board',
    'shower', 'radiator', 'glass, drinking glass', 'clock', 'flag')


@dataclass(frozen=True)
class Mask2FormerTask:
    """One published detectron2 Mask2Former-DiNAT-L model and the mmdet/mmseg model it loads
    into.

    Attributes:
        name: ``'coco_panoptic'`` etc. (the checkpoint is ``mask2former_dinat_large_{name}.pth``).
        kind: ``'panoptic'`` or ``'instance'`` (mmdet ``Mask2Former``) or ``'semantic'`` (mmseg).
        num_classes: classes without "no object".
        num_queries: object queries.
        things: how many of the classes are things (mmdet lists them first); ``num_classes``
            for instance models, 0 for semantic ones.
        classes: the model's class order: the mmdet/mmseg dataset class whose ``METAINFO``
            lists it (``'module.Class'``), or the names.
        d2_classes: detectron2's class order, where it differs, in the same spelling.
    """
    name: str
    kind: str
    num_classes: int
    num_queries: int
    things: int
    classes: Union[str, Tuple[str, ...]]
    d2_classes: Optional[Tuple[str, ...]] = None

    @property
    def head(self) -> str:
        """The head's attribute in the mmdet/mmseg model: the prefix of its keys."""
        return 'decode_head' if self.kind == 'semantic' else 'panoptic_head'

    def describe(self) -> str:
        """E.g. ``'panoptic, 100 things + 50 stuff, 200 queries'``."""
        if self.kind == 'panoptic':
            classes = f'{self.things} things + {self.num_classes - self.things} stuff'
        else:
            classes = f'{self.num_classes} classes'
        return f'{self.kind}, {classes}, {self.num_queries} queries'

    def model_classes(self) -> Tuple[str, ...]:
        """The class names in the order of the mmdet/mmseg model's class indices."""
        if isinstance(self.classes, tuple):
            return self.classes
        module, name = self.classes.rsplit('.', 1)
        return tuple(getattr(importlib.import_module(module), name).METAINFO['classes'])

    def class_order(self) -> Optional[List[int]]:
        """For each class index of the mmdet/mmseg model, detectron2's index of that class;
        None where the orders agree."""
        if self.d2_classes is None:
            return None
        target = self.model_classes()
        if sorted(target) != sorted(self.d2_classes):
            # a renamed class in an mmdet/mmseg release: fail rather than guess
            raise RuntimeError(
                f'{self.name}: the model\'s classes ({self.classes}) are not a permutation of '
                f'detectron2\'s: only in the model {sorted(set(target) - set(self.d2_classes))}, '
                f'only in detectron2 {sorted(set(self.d2_classes) - set(target))}.')
        index = {name: i for i, name in enumerate(self.d2_classes)}
        return [index[name] for name in target]


_TASKS = (
    Mask2FormerTask('coco_panoptic', 'panoptic', 133, 200, 80,
                    'mmdet.datasets.CocoPanopticDataset'),
    Mask2FormerTask('coco_instance', 'instance', 80, 200, 80, 'mmdet.datasets.CocoDataset'),
    Mask2FormerTask('ade20k_panoptic', 'panoptic', 150, 200, 100,
                    'mmdet.datasets.ADE20KPanopticDataset', d2_classes=ADE20K_150),
    Mask2FormerTask('ade20k_instance', 'instance', 100, 200, 100,
                    'mmdet.datasets.ADE20KInstanceDataset'),
    Mask2FormerTask('ade20k_semantic', 'semantic', 150, 100, 0, 'mmseg.datasets.ADE20KDataset'),
    # mmdet 3.3 has no Cityscapes panoptic dataset: the order is that of the model-only config
    Mask2FormerTask('cityscapes_panoptic', 'panoptic', 19, 200, 8,
                    CITYSCAPES_THINGS + CITYSCAPES_STUFF,
                    d2_classes=CITYSCAPES_STUFF + CITYSCAPES_THINGS),
    Mask2FormerTask('cityscapes_instance', 'instance', 8, 200, 8,
                    'mmdet.datasets.CityscapesDataset'),
    Mask2FormerTask('cityscapes_semantic', 'semantic', 19, 100, 0,
                    'mmseg.datasets.CityscapesDataset'),
)
TASKS: Dict[str, Mask2FormerTask] = {task.name: task for task in _TASKS}

Rule = Tuple[str, Union[str, Callable[['re.Match[str]'], str]]]
_P = r'(weight|bias)'
_MHA = r'(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)'  # nn.MultiheadAttention
_MSDA = r'((?:sampling_offsets|attention_weights|value_proj|output_proj)\.(?:weight|bias))'


def _fpn(name: str, part: str) -> Callable[['re.Match[str]'], str]:
    # detectron2 adds the FPN level idx as adapter_{idx + 1} / layer_{idx + 1}
    return lambda m: f'{name}.{int(m[1]) - 1}.{part}.{m[2]}'


# Keys under sem_seg_head.pixel_decoder. -> under {head}.pixel_decoder. (full matches)
PIXEL_DECODER_RULES: Tuple[Rule, ...] = (
    (rf'input_proj\.(\d+)\.0\.{_P}', r'input_convs.\1.conv.\2'),
    (rf'input_proj\.(\d+)\.1\.{_P}', r'input_convs.\1.gn.\2'),
    (r'transformer\.level_embed', 'level_encoding.weight'),
    (rf'transformer\.encoder\.layers\.(\d+)\.self_attn\.{_MSDA}',
     r'encoder.layers.\1.self_attn.\2'),
    (rf'transformer\.encoder\.layers\.(\d+)\.norm1\.{_P}', r'encoder.layers.\1.norms.0.\2'),
    (rf'transformer\.encoder\.layers\.(\d+)\.linear1\.{_P}',
     r'encoder.layers.\1.ffn.layers.0.0.\2'),
    (rf'transformer\.encoder\.layers\.(\d+)\.linear2\.{_P}', r'encoder.layers.\1.ffn.layers.1.\2'),
    (rf'transformer\.encoder\.layers\.(\d+)\.norm2\.{_P}', r'encoder.layers.\1.norms.1.\2'),
    (rf'adapter_(\d+)\.{_P}', _fpn('lateral_convs', 'conv')),
    (rf'adapter_(\d+)\.norm\.{_P}', _fpn('lateral_convs', 'gn')),
    (rf'layer_(\d+)\.{_P}', _fpn('output_convs', 'conv')),
    (rf'layer_(\d+)\.norm\.{_P}', _fpn('output_convs', 'gn')),
    (rf'mask_features\.{_P}', r'mask_feature.\1'),
)
# Keys under sem_seg_head.predictor. -> under {head}. (full matches)
PREDICTOR_RULES: Tuple[Rule, ...] = (
    (rf'transformer_cross_attention_layers\.(\d+)\.multihead_attn\.{_MHA}',
     r'transformer_decoder.layers.\1.cross_attn.attn.\2'),
    (rf'transformer_cross_attention_layers\.(\d+)\.norm\.{_P}',
     r'transformer_decoder.layers.\1.norms.0.\2'),
    (rf'transformer_self_attention_layers\.(\d+)\.self_attn\.{_MHA}',
     r'transformer_decoder.layers.\1.self_attn.attn.\2'),
    (rf'transformer_self_attention_layers\.(\d+)\.norm\.{_P}',
     r'transformer_decoder.layers.\1.norms.1.\2'),
    (rf'transformer_ffn_layers\.(\d+)\.linear1\.{_P}',
     r'transformer_decoder.layers.\1.ffn.layers.0.0.\2'),
    (rf'transformer_ffn_layers\.(\d+)\.linear2\.{_P}',
     r'transformer_decoder.layers.\1.ffn.layers.1.\2'),
    (rf'transformer_ffn_layers\.(\d+)\.norm\.{_P}', r'transformer_decoder.layers.\1.norms.2.\2'),
    (rf'decoder_norm\.{_P}', r'transformer_decoder.post_norm.\1'),
    (r'(query_feat|query_embed|level_embed)\.weight', r'\1.weight'),
    (rf'class_embed\.{_P}', r'cls_embed.\1'),
    (rf'mask_embed\.layers\.(\d+)\.{_P}', lambda m: f'mask_embed.{2 * int(m[1])}.{m[2]}'),
)
_PIXEL_DECODER = 'sem_seg_head.pixel_decoder.'
_PREDICTOR = 'sem_seg_head.predictor.'
_DROPPED = ('criterion.empty_weight', )
_CLASS_EMBED = _PREDICTOR + 'class_embed.'
_COMPILED = {group: [(re.compile(pattern), repl) for pattern, repl in rules]
             for group, rules in ((_PIXEL_DECODER, PIXEL_DECODER_RULES),
                                  (_PREDICTOR, PREDICTOR_RULES))}


@dataclass
class Mask2FormerConversion:
    """What :func:`convert_mask2former` did."""
    task: Mask2FormerTask
    kept: int = 0  # backbone tensors, names unchanged
    # per group ('sem_seg_head.predictor. -> panoptic_head.'): 'module -> module' (layer
    # indices as N) -> tensors
    renamed: Dict[str, Dict[str, int]] = field(default_factory=dict)
    permuted: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """Part of the loading log line."""
        parts = [f'Mask2Former {self.task.name} ({self.task.describe()})',
                 f'backbone.* kept ({self.kept} tensors)']
        for group, rules in self.renamed.items():
            renames = ', '.join(f'{rule} (x{count})' for rule, count in rules.items())
            parts.append(f'renamed {group} ({sum(rules.values())} tensors): {renames}')
        return '; '.join(parts + self.permuted)


def is_detectron2_mask2former(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` has the keys of a detectron2 Mask2Former (``sem_seg_head.*``)."""
    return any(isinstance(k, str) and k.startswith(_PREDICTOR) for k in state_dict)


def identify_task(state_dict: Mapping[str, torch.Tensor]) -> Mask2FormerTask:
    """The published model a detectron2 Mask2Former state dict is, by its class and query
    counts (each of the 8 has its own pair).

    Raises:
        ValueError: no published model has these counts (or the keys to count are absent).
    """
    try:
        num_classes = state_dict[_CLASS_EMBED + 'weight'].shape[0] - 1
        num_queries = state_dict[_PREDICTOR + 'query_feat.weight'].shape[0]
    except KeyError as error:
        raise ValueError(f'Not a detectron2 Mask2Former state dict: no {error}.') from None
    for task in TASKS.values():
        if (task.num_classes, task.num_queries) == (num_classes, num_queries):
            return task
    known = ', '.join(f'{t.name} ({t.num_classes}, {t.num_queries})' for t in TASKS.values())
    raise ValueError(f'A detectron2 Mask2Former with {num_classes} classes and {num_queries} '
                     'queries is none of the published DiNAT models, so its class order is '
                     f'unknown; (classes, queries) of those: {known}.')


# What the rename log leaves out: parameter names, and the sub-modules of the attention modules
_PARAMETER = re.compile(r'\.((sampling_offsets|attention_weights|value_proj|output_proj|out_proj)'
                        r'\.)?(weight|bias|in_proj_weight|in_proj_bias)$')
_LAYER_INDEX = re.compile(r'((?:_layers|coder\.layers|input_proj|input_convs)\.)\d+')


def _pattern(key: str) -> str:
    """The module of ``key`` with its layer index as N (for the rename log)."""
    return _LAYER_INDEX.sub(r'\1N', _PARAMETER.sub('', key))


def _rename(key: str, head: str) -> Optional[Tuple[str, str, str]]:
    """(source group, target group, renamed rest) of a head key; None if no rule (or two)
    matches."""
    for group, rules in _COMPILED.items():
        if not key.startswith(group):
            continue
        rest = key[len(group):]
        found = [(pattern, repl) for pattern, repl in rules if pattern.fullmatch(rest)]
        if len(found) != 1:
            return None
        pattern, repl = found[0]
        target = f'{head}.pixel_decoder.' if group == _PIXEL_DECODER else f'{head}.'
        return group, target, pattern.sub(repl, rest)
    return None


def _permute_rows(tensor: torch.Tensor, order: List[int]) -> torch.Tensor:
    # the last row ("no object") stays last
    return tensor[torch.tensor(order + [len(order)])]


def convert_mask2former(state_dict: Mapping[str, torch.Tensor]
                        ) -> Tuple[StateDict, Mask2FormerConversion]:
    """A detectron2 Mask2Former-DiNAT state dict (``checkpoint['model']``) in mmdet 3.x /
    mmseg 1.x names, and what was done.

    The published model is identified by :func:`identify_task`; every key is accounted for:
    ``backbone.*`` kept, each head key renamed by exactly one rule, ``criterion.empty_weight``
    dropped; the classifier rows reordered to the mmdet/mmseg class order. The input is not
    modified. Checking the result against a model (shapes, nothing missing) is
    :func:`dinat_backbone.weights.task.check_task_state_dict`'s part.

    Raises:
        ValueError: not one of the published models (class/query counts), or not a
            detectron2 Mask2Former.
        CheckpointKeyError: keys no rule maps (or two keys mapped to the same name).
    """
    task = identify_task(state_dict)
    conversion = Mask2FormerConversion(task)
    converted: StateDict = OrderedDict()
    unmapped, sources = [], {}
    for key, value in state_dict.items():
        if key in _DROPPED:
            conversion.dropped.append(key)
            continue
        if key.startswith('backbone.'):
            new = key
            conversion.kept += 1
        else:
            renamed = _rename(key, task.head)
            if renamed is None:
                unmapped.append(key)
                continue
            group, target, rest = renamed
            new = target + rest
            rules = conversion.renamed.setdefault(f'{group} -> {target}', {})
            rule = f'{_pattern(key[len(group):])} -> {_pattern(rest)}'
            rules[rule] = rules.get(rule, 0) + 1
        if new in sources:
            raise CheckpointKeyError(f'{sources[new]} and {key} would both become {new}.')
        sources[new] = key
        converted[new] = value
    if unmapped:
        raise CheckpointKeyError(
            f'No detectron2 -> {task.head} rule (dinat_backbone.weights.mask2former) maps '
            f'{len(unmapped)} keys of this Mask2Former checkpoint: {list_keys(unmapped)}.')
    order = task.class_order()
    if order is not None:
        for key in ('cls_embed.weight', 'cls_embed.bias'):
            converted[f'{task.head}.{key}'] = _permute_rows(converted[f'{task.head}.{key}'],
                                                            order)
        dataset = task.classes if isinstance(task.classes, str) else 'things first'
        conversion.permuted.append(
            f'cls_embed rows permuted from detectron2\'s class order to {dataset} '
            f'({sum(i != j for i, j in enumerate(order))} of {task.num_classes} moved; '
            '"no object" last)')
    return converted, conversion


def check_model_task(task: Mask2FormerTask, model: nn.Module) -> None:
    """Refuse to load the published ``task`` model into a model of another task (kind, class
    counts, queries), naming both.

    Raises:
        ValueError: ``model`` is not an mmdet/mmseg Mask2Former, or one for another task.
    """
    from mmdet.models.dense_heads import Mask2FormerHead  # mmseg's subclasses it

    heads = [(attribute, getattr(model, attribute, None))
             for attribute in ('panoptic_head', 'decode_head')]
    heads = [(attribute, head) for attribute, head in heads
             if isinstance(head, Mask2FormerHead)]
    checkpoint = f'the published {task.name} model ({task.describe()})'
    if not heads:
        raise ValueError(f'The checkpoint is {checkpoint}, a Mask2Former; the model is a '
                         f'{type(model).__name__} without a Mask2Former head.')
    got = _describe_head(*heads[0])
    if got != task.describe():
        raise ValueError(f'Wrong task: the checkpoint is {checkpoint}, the model is {got}. '
                         f'Use the config of the mask2former_dinat_large_{task.name} '
                         'model-zoo entry.')


def _describe_head(attribute: str, head: nn.Module) -> str:
    """A Mask2Former head's task in :meth:`Mask2FormerTask.describe`'s words."""
    if attribute == 'decode_head':  # mmseg: semantic
        return f'semantic, {head.num_classes} classes, {head.num_queries} queries'
    things, stuff = head.num_things_classes, head.num_stuff_classes
    if stuff:
        return f'panoptic, {things} things + {stuff} stuff, {head.num_queries} queries'
    return f'instance, {things} classes, {head.num_queries} queries'
