"""The published DiNAT task models (mmdet 2.x / mmseg 0.x and detectron2 files) on mmdet 3.x /
mmseg 1.x.

The task checkpoints of :data:`~dinat_backbone.weights.zoo.TASK_CHECKPOINTS` are whole
detectors/segmentors: 13 saved by mmcv 1.4.8's ``save_checkpoint`` under mmdet 2.19.0 / mmseg
0.20.2, and 8 Mask2Former models saved by detectron2. :func:`convert_task_checkpoint` turns
such a file into what mmdet 3.3 / mmseg 1.2 (mmengine) save, and :class:`TaskCheckpointHook`
does it at load time (``load_from``, ``tools/test.py``), then checks every key against the
model: nothing may be missing, unexpected or of another shape.

No state-dict key or shape differs between mmdet 2 / mmseg 0 and mmdet 3 / mmseg 1 for the 13;
only the file around the state dict does. Which attributes of each module make its keys, read
from both sources, and why a Runner hook: ``docs/task_checkpoints.md``. The detectron2 models
are renamed key by key (:mod:`.mask2former`).
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

from .arch import infer_arch, variant_name
from .keys import CheckpointKeyError, StateDict, diff_state_dict, list_keys
from .mask2former import (Mask2FormerConversion, check_model_task, convert_mask2former,
                          is_detectron2_mask2former)

__all__ = [
    'TASK_LAYOUTS', 'CONVERTED_LAYOUTS', 'TaskCheckpointReport', 'detect_task_layout',
    'convert_task_checkpoint', 'check_task_state_dict', 'TaskCheckpointHook',
    'add_task_checkpoint_hook'
]

# 'mmdet2' / 'mmseg0': saved by mmcv 1.x under mmdet 2.x / mmseg 0.x (the published files);
# 'detectron2': a detectron2 Mask2Former (the published Mask2Former models, state dict under
# 'model'); 'mmengine': saved by mmdet 3.x / mmseg 1.x or converted here; 'state_dict': tensors
# only.
TASK_LAYOUTS = ('mmdet2', 'mmseg0', 'detectron2', 'mmengine', 'state_dict')
CONVERTED_LAYOUTS = ('mmdet2', 'mmseg0', 'detectron2')  # converted when loaded
_VERSION_KEYS = {'mmdet2': 'mmdet_version', 'mmseg0': 'mmseg_version'}
_OLD_MAJOR = {'mmdet_version': 3, 'mmseg_version': 1}  # versions below these are the old stack
_META_RENAMES = {'config': 'cfg', 'exp_name': 'experiment_name'}
_META_PROVENANCE = ('mmdet_version', 'mmseg_version', 'mmcv_version')
_META_DROPPED = ('fp16', )  # mmcv Fp16OptimizerHook's loss-scaler state: training only
_DROPPED = ('optimizer', )  # mmcv 1.x optimizer state: useless to load_from, unfit to resume
_D2_KEPT = ('iteration', )  # what a detectron2 checkpoint holds beside 'model' worth keeping
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
    detectron2: Optional[Mask2FormerConversion] = None  # the renaming of a detectron2 model
    num_tensors: int = 0
    checked: bool = False  # against a model (check_task_state_dict)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)  # 'key: (ckpt shape) vs (model shape)'

    def summary(self) -> str:
        """One line for the log."""
        saved = f' saved by {self.saved_by}' if self.saved_by else ''
        parts = [f'Task checkpoint {self.source or "(state dict)"}: {self.layout} layout{saved}']
        if self.layout in _VERSION_KEYS:
            parts.append('no state-dict key renamed (none differs for these models, see '
                         'dinat_backbone.weights.task)')
        if self.detectron2 is not None:
            parts.append(self.detectron2.summary())
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
    model = checkpoint.get('model')
    if isinstance(model, Mapping) and is_detectron2_mask2former(model):
        # detectron2's Checkpointer: 'model' beside 'iteration' (and 'optimizer', 'scheduler')
        return model, {k: v for k, v in checkpoint.items() if k != 'model'}
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, {}
    raise ValueError('Not a whole-model checkpoint: expected "state_dict" (and "meta") as '
                     'mmdet/mmseg save them, a detectron2 Mask2Former under "model", or a mapping '
                     f'of names to tensors; got keys {list_keys(map(str, checkpoint))}.')


def _major(version: Any) -> Optional[int]:
    match = re.match(r'\s*(\d+)\.', str(version))
    return int(match.group(1)) if match else None


def _layout(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
            bare: bool) -> str:
    if is_detectron2_mask2former(state_dict):
        return 'detectron2'
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
    """One of :data:`TASK_LAYOUTS`: from the keys (detectron2's ``sem_seg_head.*``), else from
    ``meta`` (``mmdet_version`` < 3, ``mmseg_version`` < 1, or mmcv 1.x's ``CLASSES`` without
    ``dataset_meta``)."""
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


def _convert_detectron2(state_dict: Mapping[str, torch.Tensor], extras: Mapping[str, Any],
                        report: TaskCheckpointReport) -> StateDict:
    """A detectron2 Mask2Former: keys renamed, classes reordered (:mod:`.mask2former`); of the
    checkpoint's other entries only ``iteration`` is kept (in ``converted_from``)."""
    converted, report.detectron2 = convert_mask2former(state_dict)
    task = report.detectron2.task
    report.saved_by = 'detectron2'
    converted_from = dict(layout='detectron2', model=f'mask2former_dinat_large_{task.name}')
    converted_from.update({k: extras[k] for k in _D2_KEPT if k in extras})
    report.meta = dict(dataset_meta=dict(classes=task.model_classes()),
                       converted_from=converted_from)
    # detectron2's optimizer/scheduler state cannot be resumed by mmengine
    report.dropped = report.detectron2.dropped + [k for k in extras if k not in _D2_KEPT]
    return converted


def convert_task_checkpoint(checkpoint: Mapping[str, Any]
                            ) -> Tuple[StateDict, TaskCheckpointReport]:
    """A published (mmdet 2.x / mmseg 0.x or detectron2) or current whole-model checkpoint as a
    state dict in mmdet 3.x / mmseg 1.x names, and what was done.

    mmdet 2.x / mmseg 0.x: no key is renamed, none differs between the two generations for
    these models (see the module docstring). detectron2 Mask2Former: the head is renamed and
    its classes reordered (:func:`~.mask2former.convert_mask2former`, ``report.detectron2``).
    ``report.meta`` is the mmengine-style ``meta`` (``dataset_meta`` etc.), ``report.dropped``
    what is not carried over. Otherwise the state dict keeps the checkpoint's tensors (no copy)
    and ``_metadata``. Pure and idempotent: the input is not modified, and a converted
    checkpoint (``{'state_dict': sd, 'meta': report.meta}``) converts to the same result.

    Raises:
        TypeError / ValueError: ``checkpoint`` is not a checkpoint or state dict, or a
            detectron2 Mask2Former that is none of the published models.
        CheckpointKeyError: a detectron2 key that no rule maps.
    """
    state_dict, meta = _split(checkpoint)
    bare = state_dict is checkpoint
    report = TaskCheckpointReport(layout=_layout(state_dict, meta, bare))
    if report.layout == 'detectron2':
        converted = _convert_detectron2(state_dict, meta, report)
        report.num_tensors = len(converted)
        return converted, report
    if report.layout in _VERSION_KEYS:
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
    from ..models import DiNAT

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
    mismatched) and returns it. A converted detectron2 Mask2Former (``report.detectron2``) must
    first be for the model's task (kind, classes, queries), whatever ``strict``.

    Raises:
        ValueError: a detectron2 Mask2Former of another task than the model's.
        CheckpointKeyError: (``strict``) keys missing from the checkpoint or unexpected in it,
            naming them.
        ValueError: (``strict``) only shapes differ, naming the keys and both shapes.
    """
    report = report if report is not None else TaskCheckpointReport()
    if report.detectron2 is not None:
        check_model_task(report.detectron2.task, _unwrap(model))
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
    """Load the published mmdet 2.x / mmseg 0.x and detectron2 Mask2Former DiNAT models (and
    check any whole-model checkpoint) when mmengine's Runner loads ``load_from`` or resumes.

    mmengine calls ``after_load_checkpoint`` between reading the file and loading its state
    dict, so this hook converts the checkpoint in place (:func:`convert_task_checkpoint`: meta
    to ``dataset_meta``, detectron2 keys renamed, old optimizer state dropped), checks every key
    and shape against the model (:func:`check_task_state_dict`) and logs a one-line report.

    ``tools/test.py`` adds it; in a config: ``custom_hooks = [dict(type='TaskCheckpointHook')]``
    (registered when ``dinat_backbone.weights.task`` is imported).

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
        if report.layout in CONVERTED_LAYOUTS:
            if runner._resume:
                raise ValueError(f'Cannot resume training from {report.source}: it was saved by '
                                 f'{report.saved_by}, without the state that mmengine resumes. '
                                 'Use it with load_from (resume=False) instead.')
            # what tools/convert_checkpoint.py --task writes
            checkpoint.clear()
            checkpoint.update(state_dict=state_dict, meta=report.meta)
        check_task_state_dict(state_dict, runner.model, report, strict=self.strict)
        print_log(report.summary(), logger='current')


def add_task_checkpoint_hook(cfg: Any, strict: bool = True) -> None:
    """Append :class:`TaskCheckpointHook` to ``cfg.custom_hooks`` unless it is there already."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(isinstance(hook, TaskCheckpointHook) or (isinstance(hook, Mapping) and hook.get(
            'type') in ('TaskCheckpointHook', TaskCheckpointHook)) for hook in hooks):
        hooks.append(dict(type='TaskCheckpointHook', strict=strict))
    cfg.custom_hooks = hooks
