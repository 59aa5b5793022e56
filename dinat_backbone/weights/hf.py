"""Hugging Face ``transformers`` DiNAT names -> the reference (and our) parameter names."""
import re
from typing import Dict, List, Mapping, Tuple

import torch

from .keys import CheckpointKeyError, StateDict

__all__ = ['HF_CLASSIFIER_PREFIXES', 'convert_huggingface', 'rename_huggingface']

HF_CLASSIFIER_PREFIXES = ('classifier.', 'layernorm.')


_LAYER = r'^encoder\.levels\.(\d+)\.layers\.(\d+)\.'
_HF_RENAMES = [
    (re.compile(r'^embeddings\.patch_embeddings\.projection\.(\d+)\.'), r'patch_embed.proj.\1.'),
    (re.compile(r'^embeddings\.norm\.'), 'patch_embed.norm.'),
    (re.compile(_LAYER + r'layernorm_before\.'), r'levels.\1.blocks.\2.norm1.'),
    (re.compile(_LAYER + r'attention\.self\.rpb$'), r'levels.\1.blocks.\2.attn.rpb'),
    (re.compile(_LAYER + r'attention\.output\.dense\.'), r'levels.\1.blocks.\2.attn.proj.'),
    (re.compile(_LAYER + r'layernorm_after\.'), r'levels.\1.blocks.\2.norm2.'),
    (re.compile(_LAYER + r'intermediate\.dense\.'), r'levels.\1.blocks.\2.mlp.fc1.'),
    (re.compile(_LAYER + r'output\.dense\.'), r'levels.\1.blocks.\2.mlp.fc2.'),
    (re.compile(r'^encoder\.levels\.(\d+)\.downsample\.(reduction|norm)\.'),
     r'levels.\1.downsample.\2.'),
    (re.compile(r'^layernorm\.'), 'norm.'),
    (re.compile(r'^classifier\.'), 'head.'),
]
_HF_QKV = re.compile(_LAYER + r'attention\.self\.(query|key|value)\.(weight|bias)$')
_HF_LAYER_SCALE = re.compile(_LAYER + r'layer_scale_parameters$')
_HF_STAGE_NORM = re.compile(r'^hidden_states_norms\.stage(\d+)\.')


def rename_huggingface(state_dict: Mapping[str, torch.Tensor], keep_classifier: bool
                       ) -> Tuple[StateDict, List[str], int]:
    out: StateDict = {}
    dropped: List[str] = []
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    renamed = 0
    for key, value in state_dict.items():
        if key.startswith('dinat.'):
            key = key[len('dinat.'):]
        if not keep_classifier and key.startswith(HF_CLASSIFIER_PREFIXES):
            dropped.append(key)
            continue
        match = _HF_QKV.match(key)
        if match:
            level, block, part, kind = match.groups()
            qkv.setdefault(f'levels.{level}.blocks.{block}.attn.qkv.{kind}', {})[part] = value
            continue
        match = _HF_LAYER_SCALE.match(key)
        if match:
            if value.dim() != 2 or value.shape[0] != 2:
                raise ValueError(f'{key} should have shape [2, dim] (gamma1, gamma2), got '
                                 f'{tuple(value.shape)}.')
            prefix = 'levels.{}.blocks.{}.'.format(*match.groups())
            out[prefix + 'gamma1'], out[prefix + 'gamma2'] = value[0].clone(), value[1].clone()
            renamed += 2
            continue
        match = _HF_STAGE_NORM.match(key)
        if match and int(match.group(1)) >= 1:
            # DinatBackbone's stage names are 'stem', 'stage1'..'stage4'; stageN is level N-1.
            out[f'norm{int(match.group(1)) - 1}.' + key[match.end():]] = value
            renamed += 1
            continue
        for pattern, replacement in _HF_RENAMES:
            new_key, count = pattern.subn(replacement, key)
            if count:
                out[new_key] = value
                renamed += 1
                break
        else:
            out[key] = value  # unknown: kept under its own name so that loading names it
    for new_key, parts in qkv.items():
        absent = [p for p in ('query', 'key', 'value') if p not in parts]
        if absent:
            raise CheckpointKeyError(f'Hugging Face checkpoint has an incomplete attention '
                                     f'projection for {new_key}: no {", ".join(absent)}.')
        # The reference qkv Linear is the concatenation of query, key, value, in that order.
        out[new_key] = torch.cat([parts['query'], parts['key'], parts['value']], dim=0)
        renamed += 3
    return out, dropped, renamed


def convert_huggingface(state_dict: Mapping[str, torch.Tensor],
                        keep_classifier: bool = False) -> StateDict:
    """Rename a Hugging Face DiNAT state dict to the reference (and our) parameter names.

    ``query``/``key``/``value`` are concatenated into ``qkv`` in that order,
    ``layer_scale_parameters`` is split into ``gamma1``/``gamma2``, ``hidden_states_norms.stageN``
    becomes ``norm{N-1}``. The classifier (``layernorm.*``, ``classifier.*``) is dropped, or
    renamed to the reference's ``norm.*``/``head.*`` with ``keep_classifier=True``. Keys it does
    not know are kept unchanged, so that a later load names them. Pure.
    """
    return rename_huggingface(state_dict, keep_classifier)[0]
