"""mmengine's checkpoint loading made safe, for every URL scheme; applied on import.

mmengine dispatches ``load_from``, ``--resume``, ``init_cfg=dict(type='Pretrained')`` and
``load_checkpoint`` through ``CheckpointLoader``, whose schemes (local files, ``http(s)://``,
``torchvision://``, ``open-mmlab://``, ``mmcls://``, ``pavi://``, ``s3://``/``petrel://`` and
any a user registers) call ``torch.load`` or ``torch.hub.load_state_dict_from_url`` with
``weights_only=False`` or from an in-memory buffer. So:

* the dispatch (``CheckpointLoader._get_checkpoint_loader``) returns each scheme's loader
  wrapped: while it runs, in that thread or task only, ``torch.load`` reads with
  :func:`~dinat_backbone.weights.safe_loading.load_checkpoint_file` (``weights_only=True`` with
  its allow-list, full unpickling only inside
  :func:`~dinat_backbone.weights.safe_loading.trust_checkpoints`, the tools'
  ``--trust-checkpoint``), whatever ``weights_only`` the scheme passes, for a path or a buffer;
  outside a dispatch ``torch.load`` is untouched;
* the local-file and http(s) schemes are re-registered with that reader and
  :func:`~dinat_backbone.weights.safe_loading.download_checkpoint` (cached per full URL, length
  checked, a read timeout), and the schemes that resolve a name to a URL (``torchvision://``,
  ``open-mmlab://``, ``mmcls://``) download through the same function.
"""
import contextvars
import functools
import io
import os
import tempfile
from typing import Any, BinaryIO, Callable, Optional, Union

import torch
from mmengine.dist import get_dist_info
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .safe_loading import download_checkpoint, load_checkpoint_file

_IN_DISPATCH: contextvars.ContextVar = contextvars.ContextVar('dinat_in_checkpoint_dispatch',
                                                              default=False)
# the original, for loads outside a dispatch (and from the reader itself); a reload keeps it
_torch_load = getattr(torch.load, 'outside_dispatch', torch.load)


def _read(source: Union[str, os.PathLike, BinaryIO], map_location: Any = None) -> Any:
    """:func:`load_checkpoint_file` for a path or a file-like object (a buffer is spilled to
    a temporary file: the reader checks files)."""
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint_file(os.fspath(source), map_location)
    data = source.getvalue() if isinstance(source, io.BytesIO) else source.read()
    with tempfile.TemporaryDirectory(prefix='dinat-checkpoint-') as directory:
        path = os.path.join(directory, 'buffer.pth')
        with open(path, 'wb') as file:
            file.write(data)
        return load_checkpoint_file(path, map_location)


@functools.wraps(_torch_load)
def _load_within_dispatch(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
    if not _IN_DISPATCH.get():
        return _torch_load(f, map_location, *args, **kwargs)
    token = _IN_DISPATCH.set(False)  # the reader's own torch.load is the original
    try:
        return _read(f, map_location)  # weights_only and pickle_module are ours to choose
    finally:
        _IN_DISPATCH.reset(token)


_load_within_dispatch.outside_dispatch = _torch_load


def _safe_scheme(loader: Callable) -> Callable:
    """``loader`` with ``torch.load`` reading safely while it runs (in this context only)."""
    @functools.wraps(loader)  # keeps __name__: mmengine logs it
    def load(*args: Any, **kwargs: Any) -> Any:
        token = _IN_DISPATCH.set(True)
        try:
            return loader(*args, **kwargs)
        finally:
            _IN_DISPATCH.reset(token)
    return load


_get_checkpoint_loader = getattr(CheckpointLoader._get_checkpoint_loader, 'unwrapped',
                                 CheckpointLoader._get_checkpoint_loader.__func__)


@classmethod
def _get_safe_checkpoint_loader(cls: type, path: str) -> Optional[Callable]:
    loader = _get_checkpoint_loader(cls, path)
    return None if loader is None else _safe_scheme(loader)


_get_safe_checkpoint_loader.__func__.unwrapped = _get_checkpoint_loader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def _load_from_local(filename: str, map_location: Any = None) -> Any:
    return load_checkpoint_file(filename, map_location)


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def _load_from_http(filename: str, map_location: Any = None, model_dir: Optional[str] = None,
                    progress: bool = True) -> Any:
    # As mmengine's loader: rank 0 downloads while the other ranks wait, then all read the file.
    rank, world_size = get_dist_info()
    if rank == 0:
        path = download_checkpoint(filename, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            path = download_checkpoint(filename, model_dir, progress)
    return load_checkpoint_file(path, map_location)


torch.load = _load_within_dispatch
CheckpointLoader._get_checkpoint_loader = _get_safe_checkpoint_loader
# torchvision://, open-mmlab:// and mmcls:// call this module-level name after resolving theirs
mmengine_checkpoint.load_from_http = _load_from_http
