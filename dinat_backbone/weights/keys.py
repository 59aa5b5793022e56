"""Strict state-dict key accounting shared by every loader: one comparison (:class:`KeyDiff`),
one error type and one way of listing keys in messages."""
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping

import torch

__all__ = ['StateDict', 'CheckpointKeyError', 'KeyDiff', 'diff_state_dict', 'list_keys',
           'prefix_summary']

StateDict = Dict[str, torch.Tensor]
_MAX_LISTED = 20


class CheckpointKeyError(KeyError):
    """A missing or unexpected checkpoint key; prints its message verbatim (not repr-quoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def prefix_summary(keys: Iterable[str]) -> str:
    counts: Dict[str, int] = {}
    for key in keys:
        prefix = key.split('.', 1)[0] + '.*'
        counts[prefix] = counts.get(prefix, 0) + 1
    return ', '.join(f'{p} ({n})' for p, n in counts.items())


def _natural(key: str) -> list:
    # levels.2.blocks.10 after levels.2.blocks.9
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]


def list_keys(keys: Iterable[str], separator: str = ', ') -> str:
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
                         list_keys(self.mismatched, separator='; '))
        if self.missing:
            parts.append(f'missing from the checkpoint: {list_keys(self.missing)}')
        if self.unexpected:
            parts.append(f'unexpected in the checkpoint: {list_keys(self.unexpected)}')
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
