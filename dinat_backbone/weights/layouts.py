"""Layouts of published DiNAT ImageNet checkpoints: detection and conversion to our names.

Three layouts exist:

* ``'original'``: the SHI-Labs reference (``patch_embed.*``, ``levels.i.blocks.j.*``, classifier
  ``norm.*`` and ``head.*``), as published on shi-labs.com. Our backbone uses exactly these
  parameter names, so converting it only drops the classifier.
* ``'huggingface'``: ``transformers``' ``DinatModel`` / ``DinatForImageClassification`` (prefix
  ``dinat.``) / ``DinatBackbone`` (``embeddings.*``, ``encoder.levels.i.layers.j.*``, separate
  query/key/value, ``layer_scale_parameters``, ``hidden_states_norms.stageN``).
* ``'ours'``: reference names without the classifier (what :func:`convert_to_backbone` returns,
  what our backbone saves, and the backbone part of the published COCO/ADE20K models).
"""
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

import torch

from .hf import rename_huggingface
from .keys import StateDict, list_keys, prefix_summary

__all__ = ['LAYOUTS', 'CheckpointReport', 'unwrap_checkpoint', 'layout_of', 'detect_layout',
           'convert_to_backbone', 'convert_to_reference']

LAYOUTS = ('original', 'huggingface', 'ours')
CLASSIFIER_PREFIXES = ('head.', 'norm.')  # reference classifier: final LayerNorm + Linear
_HF_SENTINELS = ('embeddings.patch_embeddings.', 'encoder.levels.')
_REF_SENTINELS = ('patch_embed.', 'levels.')


@dataclass
class CheckpointReport:
    """What conversion and loading did to a checkpoint (returned, and logged as one line)."""
    source: Optional[str] = None
    layout: str = ''
    container: List[str] = field(default_factory=list)  # e.g. ['state_dict']
    stripped_prefixes: List[str] = field(default_factory=list)
    dropped_classifier: List[str] = field(default_factory=list)  # names as in the source
    dropped_other: List[str] = field(default_factory=list)  # non-backbone / unused norms
    renamed: int = 0  # tensors renamed from the Hugging Face layout
    interpolated_rpb: List[str] = field(default_factory=list)
    rpb_resize: Optional[Tuple[int, int]] = None  # (checkpoint kernel, model kernel)
    loaded: List[str] = field(default_factory=list)
    missing_output_norms: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        where = f' (under {"/".join(self.container)})' if self.container else ''
        parts = [f'Loaded {len(self.loaded)} tensors from {self.source or "a state dict"}: '
                 f'{self.layout} layout{where}']
        if self.stripped_prefixes:
            parts.append(f'stripped prefixes {", ".join(self.stripped_prefixes)}')
        if self.renamed:
            parts.append(f'renamed {self.renamed} Hugging Face tensors')
        if self.dropped_classifier:
            parts.append(f'dropped classifier ({prefix_summary(self.dropped_classifier)})')
        if self.dropped_other:
            parts.append(f'dropped {prefix_summary(self.dropped_other)}')
        if self.interpolated_rpb:
            k0, k1 = self.rpb_resize
            parts.append(f'rpb interpolated bicubically {k0}x{k0} -> {k1}x{k1} '
                         f'({len(self.interpolated_rpb)} tensors)')
        if self.missing_output_norms:
            parts.append(f'not in checkpoint, left initialised: '
                         f'{prefix_summary(self.missing_output_norms)}')
        return '; '.join(parts)


# ---------------------------------------------------------------------------------------------
# Unwrapping and layout detection


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_checkpoint(checkpoint: Mapping[str, Any]) -> Tuple[StateDict, CheckpointReport]:
    """The tensors of a checkpoint with containers and wrapper prefixes removed.

    Descends into ``state_dict`` / ``model`` (in that order of preference), strips ``module.``
    (DDP) when every key has it, keeps only the ``backbone.`` part of a whole detector or
    segmentor (the rest is reported in ``dropped_other``), and strips Hugging Face's ``dinat.``
    (``DinatForImageClassification``). Pure: the input is not modified.

    Raises:
        TypeError: ``checkpoint`` is not a mapping.
        ValueError: no tensor mapping is found.
    """
    report = CheckpointReport()
    obj: Any = checkpoint
    while True:
        if not isinstance(obj, Mapping):
            raise TypeError(f'A checkpoint must be a mapping of names to tensors, got '
                            f'{type(obj).__name__} (after unwrapping {report.container}).')
        if _is_state_dict(obj):
            break
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), Mapping):
                report.container.append(key)
                obj = obj[key]
                break
        else:
            raise ValueError('No state dict found in the checkpoint: expected tensors at the top '
                             'level or under "state_dict" or "model", got keys '
                             f'{list_keys(map(str, obj))}.')
    state_dict = dict(obj)
    while all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
        report.stripped_prefixes.append('module.')
    if any(k.startswith('backbone.') for k in state_dict):
        # A whole detector/segmentor: the backbone is what this module can take.
        report.dropped_other += [k for k in state_dict if not k.startswith('backbone.')]
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items()
                      if k.startswith('backbone.')}
        report.stripped_prefixes.append('backbone.')
    if any(k.startswith('dinat.') for k in state_dict):
        state_dict = {(k[len('dinat.'):] if k.startswith('dinat.') else k): v
                      for k, v in state_dict.items()}
        report.stripped_prefixes.append('dinat.')
    return state_dict, report


def layout_of(state_dict: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(_HF_SENTINELS) for k in state_dict):
        return 'huggingface'
    if any(k.startswith(_REF_SENTINELS) for k in state_dict):
        if any(k.startswith(CLASSIFIER_PREFIXES) for k in state_dict):
            return 'original'
        return 'ours'
    raise ValueError('Not a DiNAT checkpoint: none of the keys starts with '
                     f'{_REF_SENTINELS + _HF_SENTINELS}; found {list_keys(state_dict)}.')


def detect_layout(checkpoint: Mapping[str, Any]) -> str:
    """``'original'``, ``'huggingface'`` or ``'ours'``, from sentinel keys after unwrapping.

    ``'ours'`` means reference parameter names without the classifier, i.e. nothing to convert.
    """
    return layout_of(unwrap_checkpoint(checkpoint)[0])


def convert_to_backbone(checkpoint: Mapping[str, Any]) -> Tuple[StateDict, CheckpointReport]:
    """A checkpoint of any layout as a state dict in our backbone's names, and what was done.

    Unwraps containers and prefixes, converts the Hugging Face layout and drops the ImageNet
    classifier. Pure and idempotent: already converted input comes back unchanged.
    """
    state_dict, report = unwrap_checkpoint(checkpoint)
    report.layout = layout_of(state_dict)
    if report.layout == 'huggingface':
        state_dict, dropped, report.renamed = rename_huggingface(state_dict, False)
        report.dropped_classifier += dropped
    elif report.layout == 'original':
        report.dropped_classifier += [k for k in state_dict if k.startswith(CLASSIFIER_PREFIXES)]
        state_dict = {k: v for k, v in state_dict.items()
                      if not k.startswith(CLASSIFIER_PREFIXES)}
    return state_dict, report


def convert_to_reference(checkpoint: Mapping[str, Any]) -> Tuple[StateDict, CheckpointReport]:
    """Like :func:`convert_to_backbone` but keeps the classifier as ``norm.*``/``head.*``.

    For whole-classifier loading (``DiNATClassifier``). Pure and idempotent.
    """
    state_dict, report = unwrap_checkpoint(checkpoint)
    report.layout = layout_of(state_dict)
    if report.layout == 'huggingface':
        state_dict, _, report.renamed = rename_huggingface(state_dict, True)
    return state_dict, report
