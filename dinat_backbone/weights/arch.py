"""A DiNAT variant read from a state dict's shapes, and its name in a model's ``arch_zoo``."""
import re
from typing import Any, Dict, List, Mapping, Optional

import torch

__all__ = ['infer_arch', 'zoo_arch_name', 'variant_name', 'variant_mismatch', 'check_variant']


_ARCH_FIELDS = ('embed_dims', 'depths', 'num_heads', 'mlp_ratio', 'layer_scale')


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Architecture of a state dict in reference names, read from tensor shapes.

    Returns ``embed_dims``, ``depths``, ``num_heads`` (from ``rpb``; None without it),
    ``mlp_ratio``, ``layer_scale`` (True when ``gamma1`` exists) and ``kernel_size`` (from
    ``rpb``). Fields that cannot be read are None.
    """
    arch: Dict[str, Any] = dict.fromkeys(_ARCH_FIELDS + ('kernel_size', ))
    embed = state_dict.get('patch_embed.norm.weight', state_dict.get('patch_embed.proj.1.bias'))
    if embed is not None:
        arch['embed_dims'] = int(embed.shape[0])
    blocks: Dict[int, set] = {}
    for key in state_dict:
        match = re.match(r'^levels\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if blocks:
        arch['depths'] = [len(blocks.get(i, ())) for i in range(max(blocks) + 1)]
        heads = [state_dict.get(f'levels.{i}.blocks.0.attn.rpb') for i in range(len(blocks))]
        if all(h is not None for h in heads):
            arch['num_heads'] = [int(h.shape[0]) for h in heads]
            arch['kernel_size'] = (int(heads[0].shape[-1]) + 1) // 2
        fc1 = state_dict.get('levels.0.blocks.0.mlp.fc1.weight')
        if fc1 is not None:
            arch['mlp_ratio'] = float(fc1.shape[0]) / float(fc1.shape[1])
        arch['layer_scale'] = any(k.endswith('.gamma1') for k in state_dict)
    return arch


def _normalised(arch: Mapping[str, Any]) -> Dict[str, Any]:
    return {'embed_dims': arch.get('embed_dims'),
            'depths': list(arch['depths']) if arch.get('depths') is not None else None,
            'num_heads': list(arch['num_heads']) if arch.get('num_heads') is not None else None,
            'mlp_ratio': float(arch['mlp_ratio']) if arch.get('mlp_ratio') is not None else None,
            'layer_scale': bool(arch.get('layer_scale'))}


def _differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[str]:
    a, b = _normalised(a), _normalised(b)
    differ = []
    for name in _ARCH_FIELDS:
        if a[name] is None or b[name] is None:
            continue
        if name == 'mlp_ratio':
            if abs(a[name] - b[name]) > 1e-6:
                differ.append(name)
        elif a[name] != b[name]:
            differ.append(name)
    return differ


def zoo_arch_name(arch: Mapping[str, Any], zoo: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The key of the ``zoo`` entry (e.g. ``'small'`` of ``DiNAT.arch_zoo``) that ``arch`` (e.g.
    from :func:`infer_arch`) matches; None for an unlisted or incompletely known variant."""
    if any(_normalised(arch)[f] is None for f in _ARCH_FIELDS[:4]):
        return None
    return next((name for name, entry in zoo.items() if not _differing_fields(arch, entry)),
                None)


def variant_name(arch: Mapping[str, Any], zoo: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """``'DiNAT-Small'`` when ``arch`` matches an entry of ``zoo`` (e.g. ``DiNAT.arch_zoo``)."""
    name = zoo_arch_name(arch, zoo)
    return None if name is None else f'DiNAT-{name.capitalize()}'


def _describe(arch: Mapping[str, Any], fields: List[str], zoo: Mapping[str, Any]) -> str:
    name = variant_name(arch, zoo) or 'an unlisted DiNAT variant'
    norm = _normalised(arch)
    values = ', '.join(f'{f}={norm[f]}' for f in fields)
    return f'{name} ({values})'


def variant_mismatch(ckpt_arch: Mapping[str, Any], model_arch: Mapping[str, Any],
                     zoo: Mapping[str, Any], what: str = 'model is') -> Optional[str]:
    differ = _differing_fields(ckpt_arch, model_arch)
    if not differ:
        return None
    return (f'checkpoint looks like {_describe(ckpt_arch, differ, zoo)}, '
            f'{what} {_describe(model_arch, differ, zoo)}')


def check_variant(state_dict: Mapping[str, torch.Tensor], arch: Mapping[str, Any],
                  zoo: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
    """Raise ``ValueError`` naming both variants unless ``state_dict`` (our names) has ``arch``.

    ``arch`` is an ``arch_zoo``-style dict (``embed_dims``, ``depths``, ``num_heads``,
    ``mlp_ratio``, optional ``layer_scale``); ``zoo`` names the variants in the message.
    """
    message = variant_mismatch(infer_arch(state_dict), arch, zoo or {}, what='expected')
    if message:
        raise ValueError(f'Checkpoint does not match the requested architecture: {message}.')
