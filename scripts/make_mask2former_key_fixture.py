#!/usr/bin/env python
"""Write the detectron2 key/shape layout of the 8 published Mask2Former-DiNAT-L checkpoints.

The reference (SHI-Labs/Neighborhood-Attention-Transformer, ``mask2former/``) published eight
detectron2 checkpoints, ``mask2former_dinat_large_{task}.pth``. Neither detectron2 (torch 1.9,
compiled ops) nor the files themselves are reachable from the project's machines, so this script
builds the models the way the reference's ``train_m2f.py`` does and records what their
``state_dict()`` holds: every key with its shape, grouped into ``backbone.``,
``sem_seg_head.pixel_decoder.``, ``sem_seg_head.predictor.`` and ``criterion.``, plus the
per-task settings and the class order detectron2 trains with. The tests then build
checkpoints in that layout without any download.

Real source that runs (nothing is re-implemented):

- facebookresearch/Mask2Former at the commit the reference's submodule pins (9b0651c):
  ``add_maskformer2_config``, ``MaskFormer`` with its ``SetCriterion`` and ``HungarianMatcher``,
  ``MaskFormerHead``, ``MSDeformAttnPixelDecoder`` (its Python ``MSDeformAttn``),
  ``MultiScaleMaskedTransformerDecoder``; category tables of ``register_ade20k_panoptic.py``
  and ``register_ade20k_instance.py`` (read as literals).
- the reference's ``mask2former/``: ``dinat.py`` (``D2DiNAT``), ``add_dinat_config`` from
  ``train_m2f.py``, ``configs/*/dinat/*.yaml`` with their ``_BASE_`` chain, and the README's
  config -> checkpoint links.
- facebookresearch/detectron2 v0.6 (the version the reference pins): the default config
  (``config/defaults.py``), ``add_deeplab_config`` (called by ``train_m2f.py``), ``Conv2d``
  (``layers/wrappers.py``), ``ShapeSpec``, ``Backbone``, and the category tables of
  ``data/datasets/builtin_meta.py`` (read as literals).

Shims, all build-only (see ``_install_shims``): yacs's ``CfgNode`` (attribute dict, strict
merge, ``_BASE_`` chains, string values decoded as Python literals; no type coercion, which
does not touch any shape), ``configurable``, fvcore's ``Registry`` and ``c2_xavier_fill``,
``get_norm`` (only ``'GN'`` and ``''``, the two the configs use), ``build_backbone`` /
``build_sem_seg_head``, ``MetadataCatalog``, timm's ``DropPath`` / ``trunc_normal_``, NATTEN
0.14's ``NeighborhoodAttention2D`` (parameters ``qkv``, ``rpb [heads, 2k-1, 2k-1]``, ``proj``,
as in NATTEN 0.14.x), and an empty ``MultiScaleDeformableAttention`` (the compiled op). Names
the models import but only call in ``forward`` or data loading raise when called.

Usage (CLONE/... are git clones of the public repositories; any export of these commits works)::

    mkdir -p /tmp/m2f /tmp/natref /tmp/d2
    git -C CLONE/Mask2Former archive 9b0651c | tar -x -C /tmp/m2f
    git -C CLONE/Neighborhood-Attention-Transformer archive d334f5b mask2former \\
        | tar -x -C /tmp/natref
    git -C CLONE/detectron2 archive v0.6 | tar -x -C /tmp/d2
    python scripts/make_mask2former_key_fixture.py --mask2former /tmp/m2f \\
        --reference /tmp/natref/mask2former --detectron2 /tmp/d2

This is a research tool, not part of the package: nothing in ``dinat_backbone`` imports it.
"""
import argparse
import ast
import copy
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import yaml
from torch import nn

CHECKPOINT_BASE_URL = 'https://shi-labs.com/projects/dinat/checkpoints/m2f/'
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'tests', 'data', 'mask2former_dinat_large_d2_keys.json')

# The reference's config of each published checkpoint, relative to its mask2former/ folder
# (there is no COCO semantic model).
SCHEDULES = {'coco': '100ep', 'ade20k': '160k', 'cityscapes': '90k'}
TASK_CONFIGS = {
    f'{dataset}_{kind}': (f'configs/{dataset}/{kind}-segmentation/dinat/'
                          f'maskformer2_dinat_large_IN21k_384_bs16_{schedule}.yaml')
    for dataset, schedule in SCHEDULES.items() for kind in ('panoptic', 'instance', 'semantic')
    if (dataset, kind) != ('coco', 'semantic')
}

# State-dict groups, by key prefix; every key must fall in exactly one.
GROUPS = {
    'backbone': 'backbone.',
    'pixel_decoder': 'sem_seg_head.pixel_decoder.',
    'predictor': 'sem_seg_head.predictor.',
    'criterion': 'criterion.',
}
# What issue 13 states: 117 pixel-decoder + 175 predictor tensors (= mmdet's 292), plus the
# criterion's class weights, which a conversion drops.
EXPECTED_COUNTS = {'pixel_decoder': 117, 'predictor': 175, 'criterion': 1}

# Settings recorded per task (dotted cfg keys); the backbone's are recorded once.
TASK_CFG_KEYS = (
    'MODEL.META_ARCHITECTURE', 'MODEL.SEM_SEG_HEAD.NAME', 'MODEL.SEM_SEG_HEAD.NUM_CLASSES',
    'MODEL.SEM_SEG_HEAD.IN_FEATURES', 'MODEL.SEM_SEG_HEAD.CONVS_DIM',
    'MODEL.SEM_SEG_HEAD.MASK_DIM', 'MODEL.SEM_SEG_HEAD.NORM',
    'MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME', 'MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS',
    'MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES',
    'MODEL.SEM_SEG_HEAD.COMMON_STRIDE', 'MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME',
    'MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE', 'MODEL.MASK_FORMER.HIDDEN_DIM',
    'MODEL.MASK_FORMER.NUM_OBJECT_QUERIES', 'MODEL.MASK_FORMER.NHEADS',
    'MODEL.MASK_FORMER.DIM_FEEDFORWARD', 'MODEL.MASK_FORMER.DEC_LAYERS',
    'MODEL.MASK_FORMER.PRE_NORM', 'MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ',
    'MODEL.MASK_FORMER.NO_OBJECT_WEIGHT', 'MODEL.MASK_FORMER.TEST.SEMANTIC_ON',
    'MODEL.MASK_FORMER.TEST.INSTANCE_ON', 'MODEL.MASK_FORMER.TEST.PANOPTIC_ON',
    'DATASETS.TRAIN', 'DATASETS.TEST')
BACKBONE_CFG_KEYS = ('MODEL.BACKBONE.NAME', 'MODEL.DINAT.EMBED_DIM', 'MODEL.DINAT.DEPTHS',
                     'MODEL.DINAT.NUM_HEADS', 'MODEL.DINAT.KERNEL_SIZE', 'MODEL.DINAT.DILATIONS',
                     'MODEL.DINAT.MLP_RATIO', 'MODEL.DINAT.QKV_BIAS', 'MODEL.DINAT.DROP_PATH_RATE',
                     'MODEL.DINAT.OUT_FEATURES')

NOT_AVAILABLE = [
    'cityscapesScripts (helpers/labels.py): detectron2 numbers the Cityscapes instance classes '
    'in the order of its `labels` with hasInstances and not ignoreInEval '
    '(detectron2/data/datasets/cityscapes.py); that file is not mirrored, so the order recorded '
    'is detectron2 builtin_meta.py\'s CITYSCAPES_THING_CLASSES, whose label ids (from '
    'CITYSCAPES_CATEGORIES) are increasing, as labels.py lists them.',
    'The datasets\' own annotation files (COCO panoptic_*.json, ADE20K panoptic/instance jsons, '
    'Cityscapes gtFine): the orders recorded are the tables detectron2 and Mask2Former map the '
    'dataset ids through.',
]


# --------------------------------------------------------------------------------------------
# Provenance: git blob ids of every source file read, checkable with `git ls-tree COMMIT`.
# --------------------------------------------------------------------------------------------
class SourceTree:
    """A source export (a checkout or `git archive` of one commit) whose files are recorded."""

    def __init__(self, name: str, root: str, commit: str) -> None:
        if not os.path.isdir(root):
            raise SystemExit(f'{name}: {root!r} is not a directory.')
        self.name, self.root, self.commit = name, os.path.abspath(root), commit
        self.blobs: Dict[str, str] = {}

    def path(self, rel: str) -> str:
        full = os.path.join(self.root, rel)
        if not os.path.isfile(full):
            raise SystemExit(f'{self.name}: {rel} not found under {self.root}; is it an export '
                             f'of {self.commit}?')
        self.record(full)
        return full

    def record(self, full: str) -> None:
        with open(full, 'rb') as f:
            data = f.read()
        blob = hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()
        self.blobs[os.path.relpath(full, self.root)] = blob

    def record_modules(self) -> None:
        """Record every imported module whose file lies in this tree."""
        for module in list(sys.modules.values()):
            file = getattr(module, '__file__', None)
            if file and os.path.abspath(file).startswith(self.root + os.sep):
                self.record(os.path.abspath(file))


def load_module(name: str, path: str) -> types.ModuleType:
    """Execute the file at ``path`` as module ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def source_function(path: str, name: str, namespace: Dict[str, Any]) -> Callable:
    """The top-level function ``name`` of the file at ``path``, executed alone in
    ``namespace`` (for functions whose module imports far more than the function needs)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(nodes) != 1:
        raise SystemExit(f'{path}: expected one top-level function {name}, found {len(nodes)}.')
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, 'exec'), namespace)
    return namespace[name]


def literal_assignments(path: str, names: Tuple[str, ...]) -> Dict[str, Any]:
    """Values of the literal assignments ``NAME = [...]`` in the file at ``path``, wherever
    they are (module level or inside a function), read without importing the file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found: Dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                if target.id in found:
                    raise SystemExit(f'{path}: {target.id} is assigned more than once.')
                found[target.id] = ast.literal_eval(node.value)
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f'{path}: no literal assignment of {sorted(missing)}.')
    return found


# --------------------------------------------------------------------------------------------
# Shims: the pieces of detectron2 0.6 / fvcore / timm / NATTEN 0.14 / the compiled MSDeformAttn
# op that the models import. Only what building a model touches is functional.
# --------------------------------------------------------------------------------------------
class CfgNode(dict):
    """The part of yacs's / detectron2's ``CfgNode`` that building a model uses: attribute
    access, and ``merge_from_file`` with ``_BASE_`` chains and yacs's strict key check (a key
    missing from the defaults is an error). String values are decoded as Python literals, as
    yacs does (``"(640, 640)"`` -> a tuple); yacs's type coercion is left out."""

    def __init__(self, init: Optional[dict] = None) -> None:
        super().__init__()
        for key, value in (init or {}).items():
            self[key] = CfgNode(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def get_dotted(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split('.'):
            node = node[part]
        return node

    def merge_from_file(self, path: str) -> List[str]:
        """Merge a yaml file and its ``_BASE_`` chain; returns the files, base first."""
        values, chain = _load_yaml_with_base(path)
        self._merge(values, '')
        return chain

    def _merge(self, values: dict, prefix: str) -> None:
        for key, value in values.items():
            full_key = prefix + key
            if key not in self:
                raise KeyError(f'Non-existent config key: {full_key}')
            if isinstance(value, dict):
                if not isinstance(self[key], CfgNode):
                    raise TypeError(f'{full_key} is not a config node.')
                self[key]._merge(value, full_key + '.')
            else:
                self[key] = _decode_cfg_value(value)


def _decode_cfg_value(value: Any) -> Any:
    # yacs: strings that parse as Python literals become those literals.
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


class _YamlLoader(yaml.SafeLoader):
    """Safe loading, except that the ``!!python/object/apply:eval`` of the ADE20K/Cityscapes
    base configs (INPUT.MIN_SIZE_TRAIN, a data-pipeline setting) is kept as its expression
    instead of being run (detectron2 runs it with ``yaml.unsafe_load``)."""


_YamlLoader.add_constructor(
    'tag:yaml.org,2002:python/object/apply:eval',
    lambda loader, node: 'eval: ' + loader.construct_sequence(node)[0])


def _load_yaml_with_base(path: str) -> Tuple[dict, List[str]]:
    # fvcore's CfgNode.load_yaml_with_base: the file's values override its _BASE_'s, deeply.
    with open(path) as f:
        values = yaml.load(f, Loader=_YamlLoader)
    base = values.pop('_BASE_', None)
    if base is None:
        return values, [path]
    base_values, chain = _load_yaml_with_base(os.path.join(os.path.dirname(path), base))
    _deep_update(base_values, values)
    return base_values, chain + [path]


def _deep_update(base: dict, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def configurable(init_func: Callable) -> Callable:
    """detectron2's ``@configurable`` on ``__init__``: called with a ``CfgNode`` first, the
    arguments come from ``from_config``; otherwise the call passes through."""

    @functools.wraps(init_func)
    def wrapped(self, *args, **kwargs):
        if args and isinstance(args[0], CfgNode):
            init_func(self, **type(self).from_config(*args, **kwargs))
        else:
            init_func(self, *args, **kwargs)

    return wrapped


class Registry:
    """fvcore's ``Registry``: ``@REGISTRY.register()`` and ``REGISTRY.get(name)``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def register(self, obj: Any = None) -> Any:
        if obj is None:
            return self.register
        if obj.__name__ in self._obj_map:
            raise KeyError(f'{obj.__name__} is already registered in {self._name}.')
        self._obj_map[obj.__name__] = obj
        return obj

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            raise KeyError(f'No object named {name!r} in registry {self._name}.')
        return self._obj_map[name]


def get_norm(norm: str, out_channels: int) -> Optional[nn.Module]:
    """detectron2's ``get_norm`` for the norms Mask2Former's configs use."""
    if not norm:
        return None
    if norm != 'GN':
        raise NotImplementedError(f'get_norm({norm!r}) is not shimmed; only GN is used.')
    return nn.GroupNorm(32, out_channels)


def c2_xavier_fill(module: nn.Module) -> None:
    """fvcore's ``c2_xavier_fill``."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class NeighborhoodAttention2D(nn.Module):
    """NATTEN 0.14.5/0.14.6's module signature and parameters (0.14.2, the pinned release,
    takes no ``bias`` and always has ``rpb``; the reference's current ``dinat.py`` passes
    ``bias=True`` to NATTEN < 0.17). The operator itself is not shimmed."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1,
                                                2 * kernel_size - 1))
        else:
            self.register_parameter('rpb', None)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)


class DropPath(nn.Module):
    """timm's ``DropPath`` (no parameters); only built here."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob


def _not_here(qualname: str) -> Callable:
    """A stand-in for a name the models import but only use when they run or load data."""

    def raise_(*args, **kwargs):
        raise RuntimeError(f'{qualname} is not available: this script only builds the models.')

    return raise_


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _install_shims(d2: SourceTree) -> Dict[str, Registry]:
    """Put detectron2 (real v0.6 files where they only need torch, shims elsewhere), fvcore,
    timm, NATTEN, torchvision and the compiled op into ``sys.modules``."""
    registries = {name: Registry(name) for name in ('BACKBONE', 'SEM_SEG_HEADS', 'META_ARCH')}
    _module('detectron2', __path__=[])
    _module('detectron2.config', CfgNode=CfgNode, configurable=configurable)
    # config/defaults.py does `from .config import CfgNode as CN`.
    _module('detectron2.config.config', CfgNode=CfgNode)
    shape_spec = load_module('detectron2.layers.shape_spec',
                             d2.path('detectron2/layers/shape_spec.py'))
    wrappers = load_module('detectron2.layers.wrappers', d2.path('detectron2/layers/wrappers.py'))
    _module('detectron2.layers', ShapeSpec=shape_spec.ShapeSpec, Conv2d=wrappers.Conv2d,
            get_norm=get_norm, DeformConv=_not_here('detectron2.layers.DeformConv'))
    backbone = load_module('detectron2.modeling.backbone.backbone',
                           d2.path('detectron2/modeling/backbone/backbone.py'))

    def build_backbone(cfg: CfgNode) -> nn.Module:
        # detectron2/modeling/backbone/build.py
        input_shape = shape_spec.ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
        model = registries['BACKBONE'].get(cfg.MODEL.BACKBONE.NAME)(cfg, input_shape)
        assert isinstance(model, backbone.Backbone)
        return model

    def build_sem_seg_head(cfg: CfgNode, input_shape: dict) -> nn.Module:
        # detectron2/modeling/meta_arch/semantic_seg.py
        return registries['SEM_SEG_HEADS'].get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)

    _module('detectron2.modeling', ShapeSpec=shape_spec.ShapeSpec, Backbone=backbone.Backbone,
            BACKBONE_REGISTRY=registries['BACKBONE'],
            SEM_SEG_HEADS_REGISTRY=registries['SEM_SEG_HEADS'],
            META_ARCH_REGISTRY=registries['META_ARCH'], build_backbone=build_backbone,
            build_sem_seg_head=build_sem_seg_head)
    _module('detectron2.modeling.backbone', Backbone=backbone.Backbone)
    _module('detectron2.modeling.postprocessing',
            sem_seg_postprocess=_not_here('sem_seg_postprocess'))
    _module('detectron2.data', MetadataCatalog=types.SimpleNamespace(
        get=lambda name: types.SimpleNamespace(name=name)))
    _module('detectron2.structures', **{name: _not_here(name) for name in
                                        ('Boxes', 'ImageList', 'Instances', 'BitMasks')})
    _module('detectron2.utils', __path__=[])
    _module('detectron2.utils.registry', Registry=Registry)
    _module('detectron2.utils.memory', retry_if_cuda_oom=_not_here('retry_if_cuda_oom'))
    _module('detectron2.utils.comm', get_world_size=_not_here('get_world_size'))
    _module('detectron2.projects', __path__=[])
    _module('detectron2.projects.point_rend', __path__=[])
    _module('detectron2.projects.point_rend.point_features',
            point_sample=_not_here('point_sample'),
            get_uncertain_point_coords_with_randomness=_not_here(
                'get_uncertain_point_coords_with_randomness'))
    _module('fvcore', __path__=[])
    _module('fvcore.nn', __path__=[])
    _module('fvcore.nn.weight_init', c2_xavier_fill=c2_xavier_fill)
    _module('timm', __path__=[])
    _module('timm.models', __path__=[])
    _module('timm.models.layers', DropPath=DropPath, trunc_normal_=nn.init.trunc_normal_)
    # No `natten.context`: dinat.py then takes its NATTEN < 0.17 path.
    _module('natten', NeighborhoodAttention2D=NeighborhoodAttention2D, __version__='0.14.6')
    _module('torchvision', __version__='0.10.0')  # utils/misc.py only imports it
    _module('MultiScaleDeformableAttention')  # the compiled op, used only in forward
    return registries


def import_sources(m2f: SourceTree, ref: SourceTree, d2: SourceTree
                   ) -> Tuple[Dict[str, Registry], Callable[[], CfgNode]]:
    """Import the real model code; returns the registries and a ``get_cfg`` that does what
    the reference's ``m2f_dinat_setup`` does before merging a config file."""
    registries = _install_shims(d2)
    defaults = load_module('detectron2.config.defaults', d2.path('detectron2/config/defaults.py'))
    add_deeplab_config = load_module(
        'detectron2.projects.deeplab.config',
        d2.path('projects/DeepLab/deeplab/config.py')).add_deeplab_config
    # Mask2Former's package __init__ files register datasets and import every model; make the
    # two top packages bare so that only the modules below run.
    _module('mask2former', __path__=[os.path.join(m2f.root, 'mask2former')])
    _module('mask2former.modeling', __path__=[os.path.join(m2f.root, 'mask2former', 'modeling')])
    with warnings.catch_warnings():
        # torch >= 2.4 deprecates the `torch.cuda.amp.autocast` decorator Mask2Former uses.
        warnings.filterwarnings('ignore', category=FutureWarning, message='.*autocast')
        for name in ('mask2former.config', 'mask2former.maskformer_model',
                     'mask2former.modeling.pixel_decoder.msdeformattn',
                     'mask2former.modeling.meta_arch.mask_former_head',
                     'mask2former.modeling.transformer_decoder'):
            importlib.import_module(name)
    add_maskformer2_config = sys.modules['mask2former.config'].add_maskformer2_config
    load_module('dinat', ref.path('dinat.py'))  # registers D2DiNAT
    add_dinat_config = source_function(ref.path('train_m2f.py'), 'add_dinat_config',
                                       {'CfgNode': CfgNode})
    m2f.record_modules()

    def get_cfg() -> CfgNode:
        cfg = copy.deepcopy(defaults._C)
        add_deeplab_config(cfg)
        add_maskformer2_config(cfg)
        add_dinat_config(cfg)
        return cfg

    return registries, get_cfg


# --------------------------------------------------------------------------------------------
# Class order: what each contiguous class index (row of class_embed) means in detectron2.
# --------------------------------------------------------------------------------------------
def _table(entries: List[dict]) -> Dict[str, list]:
    """Category dicts (``id``, ``name``, ``isthing``) in class-index order, as columns."""
    return {'ids': [c['id'] for c in entries], 'names': [c['name'] for c in entries],
            'isthing': [c['isthing'] for c in entries]}


def read_categories(m2f: SourceTree, d2: SourceTree) -> Dict[str, dict]:
    """Per task, the category of each class index, from the tables detectron2 maps through."""
    m2f_src = f'facebookresearch/Mask2Former@{m2f.commit}'
    d2_src = f'facebookresearch/detectron2@{d2.commit}'
    ade_pan_file = 'mask2former/data/datasets/register_ade20k_panoptic.py'
    ade_ins_file = 'mask2former/data/datasets/register_ade20k_instance.py'
    meta_file = 'detectron2/data/datasets/builtin_meta.py'
    ade_pan = literal_assignments(m2f.path(ade_pan_file),
                                  ('ADE20K_150_CATEGORIES', ))['ADE20K_150_CATEGORIES']
    ade_ins = literal_assignments(m2f.path(ade_ins_file), ('ADE_CATEGORIES', ))['ADE_CATEGORIES']
    meta = literal_assignments(d2.path(meta_file), (
        'COCO_CATEGORIES', 'CITYSCAPES_CATEGORIES', 'ADE20K_SEM_SEG_CATEGORIES',
        'CITYSCAPES_THING_CLASSES', 'CITYSCAPES_STUFF_CLASSES'))
    # The files the class-index rules below cite, recorded for provenance.
    m2f.path('mask2former/data/datasets/register_coco_panoptic_annos_semseg.py')
    m2f.path('datasets/prepare_ade20k_sem_seg.py')
    d2.path('detectron2/data/datasets/cityscapes.py')
    d2.path('detectron2/data/datasets/cityscapes_panoptic.py')
    coco = meta['COCO_CATEGORIES']
    cityscapes = meta['CITYSCAPES_CATEGORIES']
    if [c['trainId'] for c in cityscapes] != list(range(len(cityscapes))):
        raise SystemExit('CITYSCAPES_CATEGORIES is not listed in trainId order.')
    if [c['name'] for c in cityscapes] != meta['CITYSCAPES_STUFF_CLASSES']:
        raise SystemExit('CITYSCAPES_STUFF_CLASSES differs from CITYSCAPES_CATEGORIES.')
    by_name = {c['name']: c for c in cityscapes}
    cityscapes_things = [by_name[name] for name in meta['CITYSCAPES_THING_CLASSES']]
    thing_ids = [c['id'] for c in cityscapes_things]
    if thing_ids != sorted(thing_ids) or not all(c['isthing'] for c in cityscapes_things):
        raise SystemExit('CITYSCAPES_THING_CLASSES are not things in label-id order.')
    return {
        'coco_panoptic': dict(
            source=f'{d2_src} {meta_file} COCO_CATEGORIES',
            class_index=f'position in the list ({m2f_src} mask2former/data/datasets/'
            'register_coco_panoptic_annos_semseg.py get_metadata: enumerate(COCO_CATEGORIES))',
            **_table(coco)),
        'coco_instance': dict(
            source=f'{d2_src} {meta_file} COCO_CATEGORIES with isthing == 1',
            class_index='position among the things (builtin_meta.py _get_coco_instances_meta: '
            'enumerate(thing_ids))',
            **_table([c for c in coco if c['isthing']])),
        'ade20k_panoptic': dict(
            source=f'{m2f_src} {ade_pan_file} ADE20K_150_CATEGORIES',
            class_index='position in the list (get_metadata: enumerate(ADE20K_150_CATEGORIES)); '
            'things and stuff interleaved',
            **_table(ade_pan)),
        'ade20k_instance': dict(
            source=f'{m2f_src} {ade_ins_file} ADE_CATEGORIES (all things)',
            class_index='position in the list (_get_ade_instances_meta: enumerate(thing_ids))',
            **_table([dict(c, isthing=1) for c in ade_ins])),
        'ade20k_semantic': dict(
            source=f'{d2_src} {meta_file} ADE20K_SEM_SEG_CATEGORIES (names only: ids are '
            'positions, isthing is not recorded there)',
            class_index=f'position in the list (ADE20K label - 1, {m2f_src} '
            'datasets/prepare_ade20k_sem_seg.py)',
            ids=list(range(len(meta['ADE20K_SEM_SEG_CATEGORIES']))),
            names=meta['ADE20K_SEM_SEG_CATEGORIES']),
        'cityscapes_panoptic': dict(
            source=f'{d2_src} {meta_file} CITYSCAPES_CATEGORIES (ids are label ids)',
            class_index='trainId (detectron2/data/datasets/cityscapes_panoptic.py); the list is '
            'in trainId order',
            **_table(cityscapes)),
        'cityscapes_instance': dict(
            source=f'{d2_src} {meta_file} CITYSCAPES_THING_CLASSES, ids and isthing from '
            'CITYSCAPES_CATEGORIES',
            class_index='position among the cityscapesScripts labels with hasInstances and not '
            'ignoreInEval (detectron2/data/datasets/cityscapes.py); see not_available',
            **_table(cityscapes_things)),
        'cityscapes_semantic': dict(
            source=f'{d2_src} {meta_file} CITYSCAPES_CATEGORIES (ids are label ids)',
            class_index='trainId (gtFine labelTrainIds, detectron2/data/datasets/cityscapes.py '
            'load_cityscapes_semantic); the list is in trainId order',
            **_table(cityscapes)),
    }


def read_checkpoint_urls(ref: SourceTree) -> Dict[str, str]:
    """Config path -> checkpoint URL, from the model-zoo tables of the reference README."""
    with open(ref.path('README.md')) as f:
        text = f.read()
    return dict(re.findall(r'\[YAML file\]\((configs/[^)]+)\).*?\[Download\]\((https://[^)]+)\)',
                           text))


# --------------------------------------------------------------------------------------------
# Building the models and writing the fixture.
# --------------------------------------------------------------------------------------------
def group_of(key: str) -> str:
    groups = [name for name, prefix in GROUPS.items() if key.startswith(prefix)]
    if len(groups) != 1:
        raise SystemExit(f'State-dict key {key!r} falls in {len(groups)} groups of {GROUPS}.')
    return groups[0]


def describe_task(task: str, registries: Dict[str, Registry], get_cfg: Callable[[], CfgNode],
                  ref: SourceTree) -> Tuple[dict, Dict[str, Dict[str, List[int]]], dict]:
    """Build one task's model; returns its metadata, its state-dict shapes by group, and the
    backbone settings."""
    cfg = get_cfg()
    chain = cfg.merge_from_file(ref.path(TASK_CONFIGS[task]))
    for path in chain:
        ref.record(path)
    model = registries['META_ARCH'].get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    state = model.state_dict()
    groups: Dict[str, Dict[str, List[int]]] = {name: {} for name in GROUPS}
    for key, tensor in state.items():
        group = group_of(key)
        groups[group][key[len(GROUPS[group]):]] = list(tensor.shape)
    buffers = sorted(key for key, _ in model.named_buffers() if key in state)
    predictor = model.sem_seg_head.predictor
    meta = dict(
        config_files=[os.path.relpath(path, ref.root) for path in reversed(chain)],
        num_classes=model.sem_seg_head.num_classes,
        num_queries=predictor.num_queries,
        num_decoder_layers=len(predictor.transformer_self_attention_layers),
        num_parameters=sum(p.numel() for p in model.parameters()),
        buffers=buffers,
        counts={name: len(group) for name, group in groups.items()},
        cfg={key: cfg.get_dotted(key) for key in TASK_CFG_KEYS},
    )
    backbone_cfg = {key: cfg.get_dotted(key) for key in BACKBONE_CFG_KEYS}
    return meta, groups, backbone_cfg


def check_counts(task: str, groups: Dict[str, Dict[str, List[int]]]) -> None:
    """Fail, listing the keys, when a head group does not hold what issue 13 states."""
    for name, expected in EXPECTED_COUNTS.items():
        if len(groups[name]) != expected:
            keys = '\n  '.join(GROUPS[name] + key for key in groups[name])
            raise SystemExit(f'{task}: {len(groups[name])} {name} tensors, expected {expected}:'
                             f'\n  {keys}')


def _dump(obj: Any) -> str:
    # One key per line, numeric lists (shapes, ids) on one line: readable and small.
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    return re.sub(r'\[\s+([-0-9.,\s]+?)\s+\]',
                  lambda m: '[' + re.sub(r',\s+', ', ', m.group(1)) + ']', text) + '\n'


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--mask2former', required=True,
                        help='export of facebookresearch/Mask2Former (repository root)')
    parser.add_argument('--reference', required=True,
                        help="the reference's mask2former/ folder (dinat.py, train_m2f.py, "
                        'configs/, README.md)')
    parser.add_argument('--detectron2', required=True,
                        help='export of facebookresearch/detectron2 v0.6 (repository root)')
    parser.add_argument('--mask2former-commit', default='9b0651c6c1d5b3af2e6da0589b719c514ec0d69a')
    parser.add_argument('--reference-commit', default='d334f5bb0bd73cad05e5aeaf7c14cce3876a9650')
    parser.add_argument('--detectron2-commit',
                        default='v0.6 (d1e04565d3bec8719335b88be9e9b961bf3ec464)')
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    m2f = SourceTree('Mask2Former', args.mask2former, args.mask2former_commit)
    ref = SourceTree('reference mask2former/', args.reference, args.reference_commit)
    d2 = SourceTree('detectron2', args.detectron2, args.detectron2_commit)
    registries, get_cfg = import_sources(m2f, ref, d2)
    categories = read_categories(m2f, d2)
    urls = read_checkpoint_urls(ref)

    tasks: Dict[str, dict] = {}
    task_groups: Dict[str, Dict[str, Dict[str, List[int]]]] = {}
    backbone_cfgs = {}
    print(f'{"task":22s} {"backbone":>8s} {"pix.dec":>7s} {"predictor":>9s} {"criterion":>9s} '
          f'{"classes":>7s} {"queries":>7s} {"params":>12s}')
    for task in TASK_CONFIGS:
        with torch.no_grad():
            meta, groups, backbone_cfgs[task] = describe_task(task, registries, get_cfg, ref)
        counts = meta['counts']
        print(f'{task:22s} {counts["backbone"]:8d} {counts["pixel_decoder"]:7d} '
              f'{counts["predictor"]:9d} {counts["criterion"]:9d} {meta["num_classes"]:7d} '
              f'{meta["num_queries"]:7d} {meta["num_parameters"]:12,d}')
        check_counts(task, groups)
        url = urls.get(TASK_CONFIGS[task])
        if url != CHECKPOINT_BASE_URL + f'mask2former_dinat_large_{task}.pth':
            raise SystemExit(f'{task}: the README links {TASK_CONFIGS[task]} to {url}.')
        if len(categories[task]['names']) != meta['num_classes']:
            raise SystemExit(f'{task}: {len(categories[task]["names"])} categories but '
                             f'NUM_CLASSES {meta["num_classes"]}.')
        tasks[task] = dict(checkpoint=os.path.basename(url), url=url, **meta,
                           categories=categories[task])
        task_groups[task] = groups
    if any(cfg != backbone_cfgs['coco_panoptic'] for cfg in backbone_cfgs.values()):
        raise SystemExit(f'The backbone settings differ between tasks: {backbone_cfgs}')

    # A group identical in every task is stored once, under "shared".
    shared = {name: task_groups['coco_panoptic'][name] for name in GROUPS
              if all(groups[name] == task_groups['coco_panoptic'][name]
                     for groups in task_groups.values())}
    for task, groups in task_groups.items():
        tasks[task]['state_dict'] = {name: 'shared' if name in shared else groups[name]
                                     for name in GROUPS}
    ref.record_modules()
    fixture = dict(
        about='Key -> shape of MaskFormer.state_dict() (a detectron2 checkpoint stores it under '
        '"model") for the 8 published Mask2Former-DiNAT-L checkpoints, built from the real '
        'source by scripts/make_mask2former_key_fixture.py. Full key = groups[group] + key. '
        'Per task, a group is either "shared" (see shared[group]) or its own map.',
        provenance=dict(
            script='scripts/make_mask2former_key_fixture.py',
            torch=torch.__version__,
            sources={tree.name: dict(commit=tree.commit, git_blobs=dict(sorted(tree.blobs.items())))
                     for tree in (m2f, ref, d2)},
            natten='shim of NATTEN 0.14.x NeighborhoodAttention2D: qkv, rpb, proj'),
        groups=GROUPS,
        expected_counts=EXPECTED_COUNTS,
        backbone_cfg=backbone_cfgs['coco_panoptic'],
        shared=shared,
        tasks=tasks,
        not_available=NOT_AVAILABLE,
    )
    text = _dump(fixture)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'shared groups: {sorted(shared)}; non-backbone tensors per task: '
          f'{EXPECTED_COUNTS["pixel_decoder"]} + {EXPECTED_COUNTS["predictor"]} = '
          f'{EXPECTED_COUNTS["pixel_decoder"] + EXPECTED_COUNTS["predictor"]} '
          '(+ criterion.empty_weight)')
    print(f'wrote {args.out} ({len(text.encode()) / 1024:.1f} KiB)')


if __name__ == '__main__':
    main()
