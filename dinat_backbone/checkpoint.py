"""Loading published DiNAT checkpoints: layout detection, conversion and strict key accounting.

Three layouts exist:

* ``'original'``: the SHI-Labs reference (``patch_embed.*``, ``levels.i.blocks.j.*``, classifier
  ``norm.*`` and ``head.*``), as published on shi-labs.com. Our backbone uses exactly these
  parameter names, so converting it only drops the classifier.
* ``'huggingface'``: ``transformers``' ``DinatModel`` / ``DinatForImageClassification`` (prefix
  ``dinat.``) / ``DinatBackbone`` (``embeddings.*``, ``encoder.levels.i.layers.j.*``, separate
  query/key/value, ``layer_scale_parameters``, ``hidden_states_norms.stageN``).
* ``'ours'``: reference names without the classifier (what :func:`convert_to_backbone` returns,
  what our backbone saves, and the backbone part of the published COCO/ADE20K models).

Loading is loud: apart from the output norms ``norm{i}.*`` (which no ImageNet checkpoint has, as
in the reference) and the dropped classifier, every missing or unexpected key and every shape
mismatch raises, naming the keys and, for a different architecture, both variants.
"""
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from .safe_loading import download_checkpoint, load_checkpoint_file

__all__ = [
    'CheckpointReport', 'CheckpointKeyError', 'LAYOUTS', 'unwrap_checkpoint', 'detect_layout',
    'convert_huggingface', 'convert_to_backbone', 'convert_to_reference', 'infer_arch',
    'adapt_state_dict', 'check_variant', 'read_checkpoint', 'load_pretrained', 'zoo_arch_name',
    'variant_name',
]

StateDict = Dict[str, torch.Tensor]
LAYOUTS = ('original', 'huggingface', 'ours')
CLASSIFIER_PREFIXES = ('head.', 'norm.')  # reference classifier: final LayerNorm + Linear
HF_CLASSIFIER_PREFIXES = ('classifier.', 'layernorm.')
_OUTPUT_NORM = re.compile(r'^norm(\d+)\.')
_HF_SENTINELS = ('embeddings.patch_embeddings.', 'encoder.levels.')
_REF_SENTINELS = ('patch_embed.', 'levels.')
# The weights of a Hugging Face snapshot folder, in order of preference (no unpickling first).
_SNAPSHOT_FILES = ('model.safetensors', 'pytorch_model.bin')
_MAX_LISTED = 20


class CheckpointKeyError(KeyError):
    """A missing or unexpected checkpoint key; prints its message verbatim (not repr-quoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


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
            parts.append(f'dropped classifier ({_prefix_summary(self.dropped_classifier)})')
        if self.dropped_other:
            parts.append(f'dropped {_prefix_summary(self.dropped_other)}')
        if self.interpolated_rpb:
            k0, k1 = self.rpb_resize
            parts.append(f'rpb interpolated bicubically {k0}x{k0} -> {k1}x{k1} '
                         f'({len(self.interpolated_rpb)} tensors)')
        if self.missing_output_norms:
            parts.append(f'not in checkpoint, left initialised: '
                         f'{_prefix_summary(self.missing_output_norms)}')
        return '; '.join(parts)


def _prefix_summary(keys: Iterable[str]) -> str:
    counts: Dict[str, int] = {}
    for key in keys:
        prefix = key.split('.', 1)[0] + '.*'
        counts[prefix] = counts.get(prefix, 0) + 1
    return ', '.join(f'{p} ({n})' for p, n in counts.items())


def _natural(key: str) -> list:
    # levels.2.blocks.10 after levels.2.blocks.9
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]


def _list_keys(keys: Iterable[str], separator: str = ', ') -> str:
    keys = sorted(keys, key=_natural)
    shown = separator.join(keys[:_MAX_LISTED])
    return shown + (f' ... (+{len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED else '')


@dataclass
class KeyDiff:
    """How a state dict differs from a model's, key by key and shape by shape: the one strict
    comparison behind backbone (:func:`adapt_state_dict`) and task-checkpoint loading."""
    missing: List[str]     # in the model, not in the checkpoint (and not allowed to be)
    allowed_missing: List[str]  # in the model, not in the checkpoint, allowed to be
    unexpected: List[str]  # in the checkpoint, not in the model
    mismatched: List[str]  # 'key: (checkpoint shape) vs (model shape)'

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def details(self) -> str:
        """The differences, for an error message (each list shortened to 20 keys)."""
        parts = []
        if self.mismatched:
            parts.append('shape mismatch (checkpoint vs model): ' +
                         _list_keys(self.mismatched, separator='; '))
        if self.missing:
            parts.append(f'missing from the checkpoint: {_list_keys(self.missing)}')
        if self.unexpected:
            parts.append(f'unexpected in the checkpoint: {_list_keys(self.unexpected)}')
        return '; '.join(parts)


def diff_state_dict(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                    may_be_missing: Callable[[str], bool] = lambda key: False) -> KeyDiff:
    """Compare ``state_dict`` with the model's ``target`` state dict; ``may_be_missing`` names
    the model keys a checkpoint may lack."""
    absent = [k for k in target if k not in state_dict]
    return KeyDiff(
        missing=[k for k in absent if not may_be_missing(k)],
        allowed_missing=[k for k in absent if may_be_missing(k)],
        unexpected=[k for k in state_dict if k not in target],
        mismatched=[f'{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}'
                    for k, v in state_dict.items() if k in target and v.shape != target[k].shape])


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
                             f'{_list_keys(map(str, obj))}.')
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


def _layout_of(state_dict: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(_HF_SENTINELS) for k in state_dict):
        return 'huggingface'
    if any(k.startswith(_REF_SENTINELS) for k in state_dict):
        if any(k.startswith(CLASSIFIER_PREFIXES) for k in state_dict):
            return 'original'
        return 'ours'
    raise ValueError('Not a DiNAT checkpoint: none of the keys starts with '
                     f'{_REF_SENTINELS + _HF_SENTINELS}; found {_list_keys(state_dict)}.')


def detect_layout(checkpoint: Mapping[str, Any]) -> str:
    """``'original'``, ``'huggingface'`` or ``'ours'``, from sentinel keys after unwrapping.

    ``'ours'`` means reference parameter names without the classifier, i.e. nothing to convert.
    """
    return _layout_of(unwrap_checkpoint(checkpoint)[0])


# ---------------------------------------------------------------------------------------------
# Hugging Face -> reference names

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


def _convert_huggingface(state_dict: Mapping[str, torch.Tensor], keep_classifier: bool
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
    return _convert_huggingface(state_dict, keep_classifier)[0]


def convert_to_backbone(checkpoint: Mapping[str, Any]) -> Tuple[StateDict, CheckpointReport]:
    """A checkpoint of any layout as a state dict in our backbone's names, and what was done.

    Unwraps containers and prefixes, converts the Hugging Face layout and drops the ImageNet
    classifier. Pure and idempotent: already converted input comes back unchanged.
    """
    state_dict, report = unwrap_checkpoint(checkpoint)
    report.layout = _layout_of(state_dict)
    if report.layout == 'huggingface':
        state_dict, dropped, report.renamed = _convert_huggingface(state_dict, False)
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
    report.layout = _layout_of(state_dict)
    if report.layout == 'huggingface':
        state_dict, _, report.renamed = _convert_huggingface(state_dict, True)
    return state_dict, report


# ---------------------------------------------------------------------------------------------
# Architecture inference and variant names

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


def _variant_mismatch(ckpt_arch: Mapping[str, Any], model_arch: Mapping[str, Any],
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
    message = _variant_mismatch(infer_arch(state_dict), arch, zoo or {}, what='expected')
    if message:
        raise ValueError(f'Checkpoint does not match the requested architecture: {message}.')


# ---------------------------------------------------------------------------------------------
# Fitting a state dict to a model


def _resize_rpb(rpb: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    # Bicubic, as the reference made its 11x11 Large from the 7x7 one (and as Swin does).
    resized = F.interpolate(rpb.unsqueeze(0).to(torch.float64), size=size, mode='bicubic',
                            align_corners=False)
    return resized.squeeze(0).to(rpb.dtype)


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                     report: Optional[CheckpointReport] = None
                     ) -> Tuple[StateDict, CheckpointReport]:
    """Fit a state dict in our names to ``model`` or raise, naming what does not fit.

    Interpolates ``rpb`` when only the kernel size differs, drops output norms ``norm{i}`` of
    levels the model does not return, and accepts only ``norm{i}.*`` as missing.

    Raises:
        ValueError: shape mismatches; when the checkpoint's architecture differs from the
            model's, the message names both variants (e.g. "checkpoint looks like DiNAT-Small
            (embed_dims=96, ...), model is DiNAT-Tiny (embed_dims=64, ...)").
        CheckpointKeyError: missing (other than ``norm{i}.*``) or unexpected keys.
    """
    report = report if report is not None else CheckpointReport(layout=_layout_of(state_dict))
    target = model.state_dict()
    state_dict = dict(state_dict)

    for key in [k for k in state_dict if _OUTPUT_NORM.match(k) and k not in target]:
        if not any(_OUTPUT_NORM.match(t) for t in target):
            break  # the model has no output norms at all (e.g. a classifier): report below
        # The norm of a level that this model does not return (out_indices): nothing uses it.
        report.dropped_other.append(key)
        del state_dict[key]

    for key, value in list(state_dict.items()):
        if key.endswith('attn.rpb') and key in target:
            want = target[key].shape
            if value.dim() == 3 and len(want) == 3 and value.shape[0] == want[0] \
                    and value.shape[1:] != want[1:]:
                state_dict[key] = _resize_rpb(value, tuple(want[1:]))
                report.interpolated_rpb.append(key)
                report.rpb_resize = ((value.shape[-1] + 1) // 2, (want[-1] + 1) // 2)

    diff = diff_state_dict(state_dict, target, may_be_missing=_OUTPUT_NORM.match)
    if diff:
        source = f' {report.source}' if report.source else ''
        zoo = getattr(type(model), 'arch_zoo', {}) or {}
        model_arch = getattr(model, 'arch_settings', None) or infer_arch(target)
        ckpt_arch = infer_arch(state_dict)
        variant = _variant_mismatch(ckpt_arch, model_arch, zoo)
        if variant:
            raise ValueError(f'Checkpoint{source} does not fit the model: {variant}. '
                             f'{diff.details()}.')
        if diff.mismatched:
            raise ValueError(f'Checkpoint{source} does not fit the model: {diff.details()}.')
        raise CheckpointKeyError(f'Checkpoint{source} does not fit the model ({report.layout} '
                                 f'layout): {diff.details()}.')

    report.loaded = list(state_dict)
    report.missing_output_norms = diff.allowed_missing
    return state_dict, report


# ---------------------------------------------------------------------------------------------
# Reading and loading


def read_checkpoint(filename: str, trusted: bool = False) -> Mapping[str, Any]:
    """Read a checkpoint: a local ``.pth``/``.bin``/``.safetensors`` file, a Hugging Face
    snapshot directory, an http(s) URL, or a model-zoo name such as ``'dinat_mini.in1k'``.

    Pickled files are read without running code from them
    (:func:`~dinat_backbone.safe_loading.load_checkpoint_file`); ``trusted=True`` unpickles
    fully, for a file from a trusted source that needs more. URLs are downloaded once
    (:func:`~dinat_backbone.safe_loading.download_checkpoint`).
    """
    from .model_zoo import resolve_checkpoint
    filename = resolve_checkpoint(filename)
    if filename.startswith(('http://', 'https://')):
        filename = download_checkpoint(filename)
    filename = osp.expanduser(filename)
    if osp.isdir(filename):
        for name in _SNAPSHOT_FILES:
            if osp.isfile(osp.join(filename, name)):
                filename = osp.join(filename, name)
                break
        else:
            raise FileNotFoundError(f'No {" or ".join(_SNAPSHOT_FILES)} in {filename}.')
    return load_checkpoint_file(filename, map_location='cpu', trusted=trusted)


def load_pretrained(backbone: nn.Module, filename: str,
                    logger: Union[Any, str, None] = None,
                    trusted: bool = False) -> CheckpointReport:
    """Load a published (original or Hugging Face) or converted checkpoint into ``backbone``.

    Detects the layout, converts, drops the classifier, interpolates ``rpb`` for a different
    kernel size, checks every key (only ``norm{i}.*`` may be missing), loads, and logs a
    one-line summary.

    Args:
        backbone (nn.Module): The model (a ``DiNAT``) to load into.
        filename (str): Path, URL, Hugging Face snapshot directory or model-zoo name.
        logger: mmengine logger or its name. Default: the current logger.
        trusted (bool): Unpickle the file fully, running any code it contains; only for a
            file from a trusted source (see :func:`read_checkpoint`). Default: False.

    Returns:
        CheckpointReport: what was converted, dropped, interpolated, loaded and left missing.

    Raises:
        ValueError / CheckpointKeyError: see :func:`adapt_state_dict`.
        UnsafeCheckpointError: the file needs unpickling beyond the allow-list (not trusted).
    """
    state_dict, report = convert_to_backbone(read_checkpoint(filename, trusted))
    report.source = filename
    state_dict, report = adapt_state_dict(state_dict, backbone, report)
    result = backbone.load_state_dict(state_dict, strict=False)
    if sorted(result.missing_keys) != sorted(report.missing_output_norms) \
            or result.unexpected_keys:
        raise RuntimeError(f'Internal error: load_state_dict reported missing '
                           f'{result.missing_keys} and unexpected {result.unexpected_keys}.')
    print_log(report.summary(), logger=logger if logger is not None else 'current')
    return report
