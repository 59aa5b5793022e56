"""The published COCO / ADE20K DiNAT models (mmdet 2.x / mmseg 0.x files) on mmdet 3.x / mmseg 1.x.

The 13 task checkpoints of :data:`~dinat_backbone.model_zoo.TASK_CHECKPOINTS` are whole
detectors/segmentors saved by mmcv 1.4.8's ``save_checkpoint`` under mmdet 2.19.0 / mmseg 0.20.2
(the versions pinned by the reference ``detection/README.md`` and ``segmentation/README.md``).
:func:`convert_task_checkpoint` turns such a file into what mmdet 3.3 / mmseg 1.2 (mmengine) save,
and :class:`TaskCheckpointHook` does it at load time (``load_from``, ``tools/test.py``), then
checks every key against the model: nothing may be missing, unexpected or of another shape.

What changed, read from both sources. mmdet paths are under ``mmdet/models/`` in 2.19.0 and 3.3.0,
mmseg paths under ``mmseg/models/`` in 0.20.2 and 1.2.2; "keys" are the attributes that make
state-dict keys:

* DiNAT backbone: reference ``NAT`` (``detection/nat.py`` = ``segmentation/nat.py``;
  ``DiNAT(NAT)`` adds nothing) with natten 0.14.2 ``NeighborhoodAttention2D``
  (``natten/natten2d.py``: ``qkv``, ``rpb``, ``proj``). Keys ``patch_embed.proj.{0,1}``,
  ``patch_embed.norm``, ``levels.i.blocks.j.{norm1, attn.{qkv, rpb, proj}, norm2,
  mlp.{fc1, fc2}, gamma1, gamma2}``, ``levels.i.downsample.{reduction, norm}`` (levels 0-2)
  and ``norm{i}`` (out_indices). Ours uses exactly these names: no change.
* ``FPN`` (``necks/fpn.py``): ``lateral_convs.i``, ``fpn_convs.i`` (``ConvModule``). No
  change.
* ``RPNHead`` (``dense_heads/rpn_head.py``, ``_init_layers``): ``rpn_conv`` (``nn.Conv2d``
  for ``num_convs=1``), ``rpn_cls`` (num_base_priors x cls_out_channels = 3), ``rpn_reg``
  (num_base_priors x 4 = 12). No change; 3.3 writes the 4 as ``bbox_coder.encode_size``.
* ``StandardRoIHead`` / ``CascadeRoIHead`` (``roi_heads/standard_roi_head.py``,
  ``cascade_roi_head.py``, ``init_bbox_head``/``init_mask_head``): ``bbox_roi_extractor``
  (RoIAlign, no parameters), ``bbox_head``, ``mask_roi_extractor``, ``mask_head``. Cascade
  has a ``ModuleList`` per stage, and a single ``mask_head`` dict is copied to the 3 stages.
  No change.
* ``Shared2FCBBoxHead`` and ``Shared4Conv1FCBBoxHead`` = ``ConvFCBBoxHead`` with 4 shared
  convs and 1 shared fc (``bbox_heads/convfc_bbox_head.py``, ``__init__`` and
  ``_add_conv_fc_branch``; ``bbox_head.py`` ``BBoxHead``): ``shared_convs.i``
  (``ConvModule``: ``conv``, ``bn``), ``shared_fcs.i`` (``nn.Linear``), ``fc_cls``
  (num_classes + 1 = 81), ``fc_reg`` (4 x 80 = 320 with ``reg_class_agnostic=False``). The
  cls/reg branches are empty. 2.19 builds ``fc_cls``/``fc_reg`` with ``build_linear_layer``
  and 3.3 with ``MODELS.build``: both give ``nn.Linear``. No change.
* ``FCNMaskHead`` (``mask_heads/fcn_mask_head.py``): ``convs.i`` (``ConvModule``),
  ``upsample`` (deconv: ``nn.ConvTranspose2d``), ``conv_logits`` (80 classes). No change.
* Losses (``CrossEntropyLoss``, ``GIoULoss``, ``L1Loss``, ``SmoothL1Loss``): no parameters
  or buffers in either version.
* ``ConvModule`` (mmcv-full 1.4.8 and mmcv 2.1.0, ``cnn/bricks/conv_module.py``): ``conv``,
  and the norm under ``norm_name`` from ``infer_abbr``, which is ``bn`` for both BN and
  SyncBN (with running stats and ``num_batches_tracked`` in both). No change.
* ``BaseDecodeHead`` (``decode_heads/decode_head.py``): ``conv_seg``. 0.20 builds it as
  ``Conv2d(channels, num_classes)``, 1.2 as ``Conv2d(channels, out_channels)`` with
  ``out_channels = num_classes`` unless binary: 150 either way. ``dropout`` and
  ``loss_decode`` have no parameters. No change.
* ``UPerHead`` (``decode_heads/uper_head.py``; ``PPM`` in ``psp_head.py``):
  ``psp_modules.i.1`` (``Sequential(AdaptiveAvgPool2d, ConvModule)``), ``bottleneck``,
  ``lateral_convs.i``, ``fpn_convs.i``, ``fpn_bottleneck``. No change.
* ``FCNHead`` (``decode_heads/fcn_head.py``): ``convs.0`` (``num_convs=1``); ``conv_cat``
  only with ``concat_input``, which is False here. No change.
* Data preprocessors (3.3 / 1.2 only): ``mean``/``std`` are registered with
  ``persistent=False``, so they are not in the state dict.

So no state-dict key or shape differs for these models (mmdet 3.3's own model zoo still serves
2.x-era files for the same heads, e.g. ``convnext/metafile.yml``'s
``cascade_mask_rcnn_convnext-t_p4_w7_fpn_giou_4conv1f_fp16_ms-crop_3x_coco_20220509_...pth``, as
does mmseg 1.2's ``swin/metafile.yaml`` with v0.5 UPerNet files). What differs is the file around
the state dict:

* mmcv 1.4.8 (``runner/checkpoint.py: save_checkpoint``) saves ``meta``, ``state_dict`` and
  ``optimizer`` (``publish_model.py`` deletes the latter). ``meta`` holds ``mmcv_version``,
  ``time`` and ``CLASSES``; the runner adds ``epoch`` and ``iter``; the training script adds
  ``env_info``, ``config`` (the config text), ``seed``, ``exp_name`` and, through
  ``checkpoint_config.meta``, ``mmdet_version`` (``'2.19.0' + git hash``) or ``mmseg_version``
  (``'0.20.2+hash'``) and, for mmseg, ``PALETTE``. ``Fp16OptimizerHook`` (used by the reference
  Mini..Base configs) adds ``fp16.loss_scaler``.
* mmengine 0.10.7 (``Runner.save_checkpoint``) saves ``meta`` with ``cfg``, ``seed``,
  ``experiment_name``, ``time``, ``mmengine_version``, ``dataset_meta`` (``classes``,
  ``palette``), ``epoch``, ``iter``, plus ``message_hub``, ``optimizer`` and
  ``param_schedulers``. mmdet 3.3's ``init_detector`` and mmseg 1.2's ``init_model`` read
  ``meta['dataset_meta']`` and fall back to ``CLASSES`` (and ``PALETTE``) "for < 3.x / < 1.x".

The conversion therefore renames no key and maps ``meta``: ``CLASSES`` -> ``dataset_meta.classes``,
``PALETTE`` -> ``dataset_meta.palette``, ``config`` -> ``cfg``, ``exp_name`` ->
``experiment_name``, the version strings -> ``converted_from``; it drops ``fp16`` (loss-scaler
state of training) and the mmcv 1.x ``optimizer`` state, and keeps the rest and the state dict's
``_metadata`` (module versions; BatchNorm is version 2 in torch 1.11 and 2.13).

Why a Runner hook: mmengine calls ``Hook.after_load_checkpoint(runner, checkpoint)`` between
reading the file and loading its state dict, for ``load_from`` and for resuming. mmengine's own
``EMAHook`` rewrites checkpoints there. Only at that point are both the file and the model at
hand, and the strict key check needs both. A checkpoint-loader wrapper
(``CheckpointLoader.register_scheme``) sees no model and would touch every file read (ImageNet
initialisation, resuming); with no key to rename, it would have nothing but ``meta`` to
convert. Outside the Runner, mmdet's ``init_detector`` and mmseg's ``init_model`` read both
``meta`` styles themselves.
"""
import copy
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .checkpoint import (CheckpointKeyError, _list_keys, diff_state_dict, infer_arch,
                         variant_name)

__all__ = [
    'TASK_LAYOUTS', 'OLD_LAYOUTS', 'TaskCheckpointReport', 'detect_task_layout',
    'convert_task_checkpoint', 'check_task_state_dict', 'TaskCheckpointHook',
    'add_task_checkpoint_hook'
]

StateDict = Dict[str, torch.Tensor]
# 'mmdet2' / 'mmseg0': saved by mmcv 1.x under mmdet 2.x / mmseg 0.x (the published files);
# 'mmengine': saved by mmdet 3.x / mmseg 1.x or converted here; 'state_dict': tensors only.
TASK_LAYOUTS = ('mmdet2', 'mmseg0', 'mmengine', 'state_dict')
OLD_LAYOUTS = ('mmdet2', 'mmseg0')
_VERSION_KEYS = {'mmdet2': 'mmdet_version', 'mmseg0': 'mmseg_version'}
_OLD_MAJOR = {'mmdet_version': 3, 'mmseg_version': 1}  # versions below these are the old stack
_META_RENAMES = {'config': 'cfg', 'exp_name': 'experiment_name'}
_META_PROVENANCE = ('mmdet_version', 'mmseg_version', 'mmcv_version')
_META_DROPPED = ('fp16', )  # mmcv Fp16OptimizerHook's loss-scaler state: training only
_DROPPED = ('optimizer', )  # mmcv 1.x optimizer state: useless to load_from, unfit to resume
_MODULE_PREFIX = re.compile(r'^module\.')  # what mmengine's Runner strips before loading


@dataclass
class TaskCheckpointReport:
    """What converting and checking a whole-model checkpoint did (logged as one line)."""
    source: Optional[str] = None
    layout: str = ''  # one of TASK_LAYOUTS
    saved_by: str = ''  # e.g. 'mmdet 2.19.0abcdef1'
    meta: Dict[str, Any] = field(default_factory=dict)  # the converted meta
    meta_changes: List[str] = field(default_factory=list)  # e.g. 'CLASSES -> dataset_meta.classes'
    dropped: List[str] = field(default_factory=list)  # e.g. 'optimizer', 'meta.fp16'
    num_tensors: int = 0
    checked: bool = False  # against a model (check_task_state_dict)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)  # 'key: (ckpt shape) vs (model shape)'

    def summary(self) -> str:
        """One line for the log."""
        saved = f' saved by {self.saved_by}' if self.saved_by else ''
        parts = [f'Task checkpoint {self.source or "(state dict)"}: {self.layout} layout{saved}']
        if self.layout in OLD_LAYOUTS:
            parts.append('no state-dict key renamed (none differs for these models, see '
                         'dinat_backbone.task_checkpoint)')
        if self.meta_changes:
            parts.append('meta ' + ', '.join(self.meta_changes))
        if self.dropped:
            parts.append('dropped ' + ', '.join(self.dropped))
        if self.checked:
            problems = [f'{len(keys)} {what}' for what, keys in
                        (('missing', self.missing), ('unexpected', self.unexpected),
                         ('of another shape', self.mismatched)) if keys]
            parts.append(f'{self.num_tensors} tensors checked against the model: ' +
                         (', '.join(problems) if problems else
                          'none missing, unexpected or of another shape'))
        return '; '.join(parts)


def _split(checkpoint: Mapping[str, Any]) -> Tuple[Mapping[str, torch.Tensor], Dict[str, Any]]:
    """The state dict and meta of a whole-model checkpoint (or of a bare state dict)."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'A checkpoint must be a mapping, got {type(checkpoint).__name__}.')
    if isinstance(checkpoint.get('state_dict'), Mapping):
        meta = checkpoint.get('meta')
        return checkpoint['state_dict'], dict(meta) if isinstance(meta, Mapping) else {}
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, {}
    raise ValueError('Not a whole-model checkpoint: expected "state_dict" (and "meta") as '
                     'mmdet/mmseg save them, or a mapping of names to tensors; got keys '
                     f'{_list_keys(map(str, checkpoint))}.')


def _major(version: Any) -> Optional[int]:
    match = re.match(r'\s*(\d+)\.', str(version))
    return int(match.group(1)) if match else None


def _layout(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
            bare: bool) -> str:
    if bare:
        return 'state_dict'
    for layout, key in _VERSION_KEYS.items():
        major = _major(meta.get(key))
        if major is not None and major < _OLD_MAJOR[key]:
            return layout
    if 'CLASSES' in meta and 'dataset_meta' not in meta:
        # mmcv 1.x's save_checkpoint writes CLASSES whatever the codebase: tell them by the heads
        if any(k.startswith(('decode_head.', 'module.decode_head.')) for k in state_dict):
            return 'mmseg0'
        return 'mmdet2'
    return 'mmengine'


def detect_task_layout(checkpoint: Mapping[str, Any]) -> str:
    """One of :data:`TASK_LAYOUTS`, from ``meta`` (``mmdet_version`` < 3, ``mmseg_version`` < 1,
    or mmcv 1.x's ``CLASSES`` without ``dataset_meta``)."""
    state_dict, meta = _split(checkpoint)
    return _layout(state_dict, meta, state_dict is checkpoint)


def _convert_meta(meta: Mapping[str, Any], layout: str
                  ) -> Tuple[Dict[str, Any], List[str], List[str]]:
    new: Dict[str, Any] = {}
    changes: List[str] = []
    dropped: List[str] = []
    dataset_meta: Dict[str, Any] = {}
    converted_from: Dict[str, Any] = {'layout': layout}
    for key, value in meta.items():
        if key in ('CLASSES', 'PALETTE'):
            dataset_meta[key.lower()] = value
            changes.append(f'{key} -> dataset_meta.{key.lower()}')
        elif key in _META_RENAMES:
            new[_META_RENAMES[key]] = value
            changes.append(f'{key} -> {_META_RENAMES[key]}')
        elif key in _META_PROVENANCE:
            converted_from[key] = value
            changes.append(f'{key} -> converted_from.{key}')
        elif key in _META_DROPPED:
            dropped.append(f'meta.{key}')
        else:
            new[key] = value
    if dataset_meta:
        new['dataset_meta'] = dataset_meta
    new['converted_from'] = converted_from
    return new, changes, dropped


def convert_task_checkpoint(checkpoint: Mapping[str, Any]
                            ) -> Tuple[StateDict, TaskCheckpointReport]:
    """A published (mmdet 2.x / mmseg 0.x) or current whole-model checkpoint as a state dict in
    mmdet 3.x / mmseg 1.x names, and what was done.

    No key is renamed: none differs between the two generations for these models (see the
    module docstring). ``report.meta`` is the mmengine-style ``meta`` (``dataset_meta`` etc.),
    ``report.dropped`` what is not carried over. The state dict keeps the checkpoint's tensors
    (no copy) and ``_metadata``. Pure and idempotent: the input is not modified, and a converted
    checkpoint (``{'state_dict': sd, 'meta': report.meta}``) converts to the same result.

    Raises:
        TypeError / ValueError: ``checkpoint`` is not a checkpoint or state dict.
    """
    state_dict, meta = _split(checkpoint)
    bare = state_dict is checkpoint
    report = TaskCheckpointReport(layout=_layout(state_dict, meta, bare))
    if report.layout in OLD_LAYOUTS:
        key = _VERSION_KEYS[report.layout]
        codebase = key.split('_')[0]
        report.saved_by = f'{codebase} {meta[key]}' if key in meta else f'{codebase} (old)'
        report.meta, report.meta_changes, report.dropped = _convert_meta(meta, report.layout)
        report.dropped = [k for k in _DROPPED if k in checkpoint] + report.dropped
    else:
        report.meta = copy.deepcopy(meta)
        if 'mmengine_version' in meta:
            report.saved_by = f'mmengine {meta["mmengine_version"]}'
    converted: StateDict = OrderedDict(state_dict)
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        converted._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
    report.num_tensors = len(converted)
    return converted, report


def _unwrap(model: nn.Module) -> nn.Module:
    """The model mmengine loads into: without DDP-like wrappers and TTA models."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _backbone_hint(state_dict: Mapping[str, torch.Tensor],
                   target: Mapping[str, torch.Tensor]) -> str:
    from .models import DiNAT

    def variant(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
        backbone = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
        return variant_name(infer_arch(backbone), DiNAT.arch_zoo) if backbone else None

    ckpt, model = variant(state_dict), variant(target)
    if ckpt and model and ckpt != model:
        return f' The checkpoint\'s backbone is {ckpt}, the model\'s {model}: pick the config ' \
               'of the same variant.'
    return ''


def check_task_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                          report: Optional[TaskCheckpointReport] = None,
                          strict: bool = True) -> TaskCheckpointReport:
    """Compare a converted state dict with ``model`` key by key and shape by shape.

    ``model`` may be wrapped (DDP, a TTA model); a leading ``module.`` of the checkpoint's keys
    is ignored, as mmengine's Runner strips it. Missing BatchNorm ``num_batches_tracked``
    counters are accepted (mmengine does too). Fills ``report`` (missing, unexpected,
    mismatched) and returns it.

    Raises:
        CheckpointKeyError: (``strict``) keys missing from the checkpoint or unexpected in it,
            naming them.
        ValueError: (``strict``) only shapes differ, naming the keys and both shapes.
    """
    report = report if report is not None else TaskCheckpointReport()
    target = _unwrap(model).state_dict()
    renamed = {_MODULE_PREFIX.sub('', k): v for k, v in state_dict.items()}
    report.checked = True
    report.num_tensors = len(renamed)
    diff = diff_state_dict(renamed, target,
                           may_be_missing=lambda key: key.endswith('.num_batches_tracked'))
    report.missing, report.unexpected, report.mismatched = (
        diff.missing, diff.unexpected, diff.mismatched)
    if not diff:
        return report
    source = f' {report.source}' if report.source else ''
    message = (f'Checkpoint{source} ({report.layout or "state dict"} layout) does not fit the '
               f'model: {diff.details()}.' + _backbone_hint(renamed, target))
    if not strict:
        print_log(message, logger='current', level=logging.WARNING)
        return report
    if report.missing or report.unexpected:
        raise CheckpointKeyError(message)
    raise ValueError(message)


@HOOKS.register_module(force=True)
class TaskCheckpointHook(Hook):
    """Load the published mmdet 2.x / mmseg 0.x DiNAT models (and check any whole-model
    checkpoint) when mmengine's Runner loads ``load_from`` or resumes.

    mmengine calls ``after_load_checkpoint`` between reading the file and loading its state
    dict, so this hook converts the checkpoint in place (:func:`convert_task_checkpoint`: meta
    to ``dataset_meta``, mmcv 1.x optimizer state dropped), checks every key and shape against
    the model (:func:`check_task_state_dict`) and logs a one-line report.

    ``tools/test.py`` adds it; in a config: ``custom_hooks = [dict(type='TaskCheckpointHook')]``
    (registered when ``dinat_backbone.task_checkpoint`` is imported).

    Args:
        strict (bool): Raise when keys are missing, unexpected or of another shape (otherwise
            log a warning and let mmengine load what fits). Default: True.
    """
    priority = 'VERY_HIGH'  # convert before other hooks (e.g. EMAHook) read the checkpoint

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """Convert ``checkpoint`` in place and check it against ``runner.model``."""
        state_dict, report = convert_task_checkpoint(checkpoint)
        report.source = runner.cfg.get('load_from')
        if report.layout in OLD_LAYOUTS:
            if runner._resume:
                raise ValueError(f'Cannot resume training from {report.source}: it was saved by '
                                 f'{report.saved_by}, without the state that mmengine resumes. '
                                 'Use it with load_from (resume=False) instead.')
            for key in _DROPPED:
                checkpoint.pop(key, None)
            checkpoint['state_dict'] = state_dict
            checkpoint['meta'] = report.meta
        check_task_state_dict(state_dict, runner.model, report, strict=self.strict)
        print_log(report.summary(), logger='current')


def add_task_checkpoint_hook(cfg: Any, strict: bool = True) -> None:
    """Append :class:`TaskCheckpointHook` to ``cfg.custom_hooks`` unless it is there already."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(hook, TaskCheckpointHook) or (isinstance(hook, Mapping) and hook.get(
            'type') in ('TaskCheckpointHook', TaskCheckpointHook)) for hook in hooks):
        hooks.append(dict(type='TaskCheckpointHook', strict=strict))
    cfg.custom_hooks = hooks
