"""Loading an ImageNet DiNAT checkpoint (any published layout) into a backbone, strictly.

Loading is loud: apart from the output norms ``norm{i}.*`` (which no ImageNet checkpoint has, as
in the reference) and the dropped classifier, every missing or unexpected key and every shape
mismatch raises, naming the keys and, for a different architecture, both variants.
"""
import logging
import os.path as osp
import re
from typing import Any, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._openmmlab import print_log
from .arch import infer_arch, variant_mismatch
from .keys import CheckpointKeyError, StateDict, diff_state_dict
from .layouts import CheckpointReport, convert_to_backbone, layout_of
from .safe_loading import CheckpointReadError, UnsafeCheckpointError, load_checkpoint_file

__all__ = ['adapt_state_dict', 'read_checkpoint', 'load_pretrained']

_OUTPUT_NORM = re.compile(r'^norm(\d+)\.')
# The weights of a Hugging Face snapshot folder, in order of preference (no unpickling first).
SNAPSHOT_FILES = ('model.safetensors', 'pytorch_model.bin')


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
    report = report if report is not None else CheckpointReport(layout=layout_of(state_dict))
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
        variant = variant_mismatch(ckpt_arch, model_arch, zoo)
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
    (:func:`~dinat_backbone.weights.safe_loading.load_checkpoint_file`); ``trusted=True`` unpickles
    fully, for a file from a trusted source that needs more. URLs are downloaded once
    (:func:`~dinat_backbone.weights.zoo.fetch_checkpoint`; one line naming the URL when it
    cannot be fetched). In a snapshot directory
    a damaged ``model.safetensors`` is named in a warning and its ``pytorch_model.bin`` read
    instead (still without running code); an error names both when neither can be read.
    """
    from .zoo import fetch_checkpoint
    filename = osp.expanduser(fetch_checkpoint(filename))
    if not osp.isdir(filename):
        return load_checkpoint_file(filename, map_location='cpu', trusted=trusted)
    files = [osp.join(filename, name) for name in SNAPSHOT_FILES
             if osp.isfile(osp.join(filename, name))]
    if not files:
        raise FileNotFoundError(f'No {" or ".join(SNAPSHOT_FILES)} in {filename}.')
    try:
        return load_checkpoint_file(files[0], map_location='cpu', trusted=trusted)
    except CheckpointReadError as error:
        if len(files) == 1 or isinstance(error, UnsafeCheckpointError):
            raise
        # A damaged model.safetensors: the snapshot's pytorch_model.bin holds the same weights.
        print_log(f'{error} Reading {files[1]} instead.', logger='current',
                  level=logging.WARNING)
        try:
            return load_checkpoint_file(files[1], map_location='cpu', trusted=trusted)
        except CheckpointReadError as second:
            raise type(second)(f'{second} (tried after: {error})') from None


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
