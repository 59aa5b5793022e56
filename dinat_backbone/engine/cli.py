"""Command-line pieces the tools share: the checks of their output paths, the reading of
``--dilations`` and the ``--trust-checkpoint`` flag.

The path checks run at start-up so that a run fails before any model is built, not after
minutes of work (or, for an export, with a misleading ``FileExistsError``). Each raises
``ValueError`` with a one-line message naming the option, the path and the problem; a tool turns
it into ``parser.error`` or ``SystemExit``. Nothing is created on disk.
"""
import argparse
import json
import os
import os.path as osp
from typing import List, Optional, Union

__all__ = [
    'add_trust_checkpoint_flag', 'check_writable_dir', 'check_writable_file', 'parse_dilations'
]


def add_trust_checkpoint_flag(parser: argparse.ArgumentParser,
                              what: str = 'the checkpoint') -> None:
    """``--trust-checkpoint``: unpickle ``what`` (as the help names it) fully instead of the
    default ``torch.load(weights_only=True)`` with an allow-list."""
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help=f'unpickle {what} fully, which runs any code it contains; only for '
                             'a file from a source you trust (default: torch.load('
                             'weights_only=True) with an allow-list)')


def parse_dilations(value: Optional[str]) -> Union[str, List[List[int]], None]:
    """A ``--dilations`` value: a JSON list of per-block lists (text starting with ``[``) is
    decoded; a preset name (``'imagenet'``, ``'ade20k'``, ...) and None are returned as given.

    Raises:
        json.JSONDecodeError: the list is not valid JSON.
    """
    if value is None or not value.lstrip().startswith('['):
        return value
    return json.loads(value)


def _nearest_existing(path: str) -> str:
    """``path`` or its closest ancestor that exists (what ``os.makedirs`` would start from)."""
    path = osp.abspath(path)
    while not osp.lexists(path) and osp.dirname(path) != path:
        path = osp.dirname(path)
    return path


def _check_creatable(directory: str, path: str, what: str) -> None:
    """``directory`` (``path`` or the directory of file ``path``) exists as a writable directory
    or can be created."""
    existing = _nearest_existing(directory)
    if not osp.isdir(existing):
        where = '' if existing == osp.abspath(path) else f', in the path of {path!r}'
        raise ValueError(f'{what}: {existing!r} is a file, not a directory{where}; choose '
                         'another path.')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f'{what}: cannot write to {path!r} (no write permission in '
                         f'{existing!r}); choose a writable location.')


def check_writable_dir(path: str, what: str) -> None:
    """``path`` is a writable directory or can be created as one.

    Args:
        path (str): The directory.
        what (str): How the message names it, e.g. ``'--out'`` or ``'work_dir'``.

    Raises:
        ValueError: ``path`` or an ancestor is a file, or the directory to create it in is
            not writable.
    """
    _check_creatable(path, path, what)


def check_writable_file(path: str, what: str) -> None:
    """``path`` can be written as a file: not a directory or a read-only file, and its
    directory writable or creatable (see :func:`check_writable_dir`)."""
    if osp.isdir(path):
        raise ValueError(f'{what}: {path!r} is a directory; give a file name.')
    if osp.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f'{what}: {path!r} exists and is read-only; choose another file.')
    _check_creatable(osp.dirname(osp.abspath(path)), path, what)
