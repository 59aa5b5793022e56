"""Checks of the tools' output paths, run at start-up so that a run fails before any model is
built, not after minutes of work (or, for an export, with a misleading ``FileExistsError``).

Each check raises ``ValueError`` with a one-line message naming the option, the path and the
problem; a tool turns it into ``parser.error`` or ``SystemExit``. Nothing is created on disk.
"""
import os
import os.path as osp

__all__ = ['check_writable_dir', 'check_writable_file']


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
