"""Reading checkpoint files without running code from them, and downloading them.

A ``.pth``/``.bin`` file is a pickle, and unpickling can call any function the file names (a
``__reduce__`` calling ``os.system``). :func:`load_checkpoint_file` therefore reads with
``torch.load(weights_only=True)``, which only rebuilds tensors, containers and numbers, plus an
allow-list (:func:`allowed_globals`) of what real checkpoints also hold:

* mmengine Runner checkpoints (``load_from``, ``--resume``): ``message_hub`` pickles
  :class:`~mmengine.logging.HistoryBuffer`, whose statistics methods are pickled as
  ``getattr(HistoryBuffer, 'mean')``, and numpy arrays, scalars and dtypes. ``builtins.getattr``
  resolves to a version that fetches only HistoryBuffer's public attributes;
* timm-trained ImageNet checkpoints keep their command line as an ``argparse.Namespace``;
* mmdet 2.x / mmseg 0.x task checkpoints, Hugging Face ``.bin`` files and the original SHI-Labs
  files hold only strings, numbers, containers and tensors.

The allow-list is given per call (``torch.serialization.safe_globals``), never added
process-wide. ``.safetensors`` files are read with safetensors. Anything else is refused with
:class:`UnsafeCheckpointError`, naming the offending global and the opt-in for a file from a
trusted source: ``trusted=True`` on the loading functions, ``--trust-checkpoint`` on the tools,
or :func:`trust_checkpoints` around mmengine's own loading (``load_from``, resume,
``init_cfg``), which goes through the loaders that
:mod:`dinat_backbone.weights.mmengine_loaders` registers.

Downloads (:func:`download_checkpoint`) are cached under a directory named by a hash of the full
URL, so two URLs with the same file name never share an entry; a file name carrying a SHA-256
prefix (torch.hub's ``name-<sha256 prefix>.ext``) is verified; the file appears in the cache
only once complete (written to a temporary file, its length checked against the server's
Content-Length, then renamed); a silent server fails after a timeout (60 s,
``$DINAT_DOWNLOAD_TIMEOUT``).
"""
import argparse
import contextlib
import contextvars
import functools
import hashlib
import http.client
import os
import os.path as osp
import pickle
import re
import tempfile
from typing import Any, BinaryIO, Callable, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch

__all__ = [
    'UnsafeCheckpointError', 'allowed_globals', 'trust_checkpoints', 'load_checkpoint_file',
    'download_checkpoint'
]

SafeGlobal = Union[Callable, Tuple[Callable, str]]
OPT_IN = ('trusted=True (load_pretrained, read_checkpoint, DiNATClassifier.load_checkpoint, '
          'build_backbone), --trust-checkpoint (tools), or `with '
          'dinat_backbone.weights.safe_loading.trust_checkpoints():` around mmengine\'s loading '
          '(load_from, resume, init_cfg)')
# torch.hub's naming convention, with at least the 8 hex digits its documentation asks for
# (its own pattern, '-([a-f0-9]*)\.', would take the '224' of 'dinat-mini-224.pth' for a hash);
# decimal digits only are a date or version ('dinat_tiny-20240101.pth'), not a hash.
HASH_IN_NAME = re.compile(r'-(?![0-9]+\.)([a-f0-9]{8,64})\.')
_TRUSTED: contextvars.ContextVar = contextvars.ContextVar('dinat_trusted_checkpoints',
                                                          default=False)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint whose unpickling needs more than the allow-list: it could run code.

    Also a ``ValueError`` (a bad input file), which the tools report as a one-line error.
    """


@functools.lru_cache(maxsize=None)
def allowed_globals() -> Tuple[SafeGlobal, ...]:
    """What :func:`load_checkpoint_file` lets a checkpoint rebuild beyond torch's defaults."""
    import numpy as np
    from mmengine.logging import HistoryBuffer
    try:
        from numpy._core import multiarray  # numpy >= 1.26 (numpy 2's own name)
    except ImportError:
        from numpy.core import multiarray
    # Pickles name numpy's reconstructors after the numpy that wrote them: accept both names.
    numpy_functions = [(function, f'{module}.{function.__name__}')
                       for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
                       for function in (multiarray.scalar, multiarray._reconstruct)]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25: what a pickled dtype class names
    dtype_classes = [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')
                     ] if dtypes is not None else []
    return (HistoryBuffer, (_getattr_of_history_buffer, 'builtins.getattr'), np.ndarray,
            np.dtype, *numpy_functions, *dtype_classes, argparse.Namespace)


def _getattr_of_history_buffer(owner: Any, name: str) -> Any:
    """``builtins.getattr`` while unpickling: pickle protocol 2 (torch.save's) stores
    ``HistoryBuffer.mean`` as ``getattr(HistoryBuffer, 'mean')``; nothing else needs it, and
    a free getattr would reach any attribute (e.g. ``getattr.__self__``, the builtins)."""
    from mmengine.logging import HistoryBuffer
    if owner is not HistoryBuffer or not isinstance(name, str) or name.startswith('_'):
        raise pickle.UnpicklingError(
            f'the file calls getattr({owner!r}, {name!r}); only HistoryBuffer\'s public '
            'methods may be fetched')
    return getattr(owner, name)


@contextlib.contextmanager
def trust_checkpoints(enabled: bool = True) -> Iterator[None]:
    """Within this context (and ``enabled``), checkpoints are unpickled fully, running whatever
    code they contain. Only for files from a source you trust; e.g. a tool's
    ``--trust-checkpoint`` wraps its run in it. Scoped to the context (and thread)."""
    token = _TRUSTED.set(_TRUSTED.get() or enabled)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _offending_globals(filename: str, error: Exception) -> List[str]:
    """The globals of ``filename`` outside the allow-list (all of them for the zip format)."""
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except (ValueError, RuntimeError):  # the legacy (pre-1.6) format: only the first one
        found = []
    return sorted(found) or re.findall(r'GLOBAL (\S+)', str(error))[:1]


def load_checkpoint_file(filename: str, map_location: Any = None, trusted: bool = False) -> Any:
    """Read a local checkpoint without running code from it (see the module docstring).

    Args:
        filename (str): A ``.pth``/``.bin`` (torch.save) or ``.safetensors`` file.
        map_location: As for ``torch.load``. ``.safetensors`` files are read to the CPU
            unless it names a device.
        trusted (bool): Unpickle fully (``weights_only=False``), which runs any code the file
            contains: only for files from a trusted source. Also on inside
            :func:`trust_checkpoints`. Default: False.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file.
        UnsafeCheckpointError: the file needs a global outside :func:`allowed_globals` (the
            message names it and the opt-in), or cannot be read without running code.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file not found: {filename}')
    if osp.getsize(filename) == 0:  # torch would raise a bare EOFError
        raise ValueError(f'Checkpoint file is empty (0 bytes): {filename}')
    if filename.endswith('.safetensors'):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, (str, torch.device)) else 'cpu'
        return load_file(filename, device=str(device))
    if trusted or _TRUSTED.get():
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        names = _offending_globals(filename, error)
        if names:
            raise UnsafeCheckpointError(
                f'Refused to unpickle {filename}: it needs {", ".join(names)}, which checkpoints '
                'do not hold (they hold tensors, containers, numbers, strings, numpy arrays and '
                'scalars, mmengine\'s HistoryBuffer). Unpickling it fully would run whatever '
                f'code the file names. If you trust its source, opt in with {OPT_IN}.'
            ) from error
        # torch's own reason: the last line before its pointer to the documentation
        reason = str(error).split('\n\nCheck the documentation')[0].strip().splitlines()[-1]
        raise UnsafeCheckpointError(
            f'Refused to unpickle {filename}: {reason}. It is not a torch.save file, is '
            'corrupt, or uses pickle features that loading without running code does not '
            f'support. If it is a checkpoint from a source you trust, opt in with {OPT_IN}.'
        ) from error


DOWNLOAD_TIMEOUT_ENV = 'DINAT_DOWNLOAD_TIMEOUT'
DEFAULT_DOWNLOAD_TIMEOUT = 60.  # seconds without a byte from the server
_MAX_NAME_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems


def _cache_file_name(url: str) -> str:
    """The URL's file name, made a valid one: ``''``, ``.`` and ``..`` become ``checkpoint``;
    over 255 bytes, the stem is cut and the extension kept."""
    name = osp.basename(urlparse(url).path)
    if name in ('', '.', '..'):
        return 'checkpoint'
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    stem, ext = osp.splitext(name)
    ext = ext if len(ext.encode()) <= 16 else ''
    budget = _MAX_NAME_BYTES - len(ext.encode())
    return stem.encode()[:budget].decode(errors='ignore') + ext


def _download_timeout(timeout: Optional[float]) -> float:
    if timeout is not None:
        return timeout
    value = os.environ.get(DOWNLOAD_TIMEOUT_ENV, '')
    try:
        return float(value) if value else DEFAULT_DOWNLOAD_TIMEOUT
    except ValueError:
        raise ValueError(f'{DOWNLOAD_TIMEOUT_ENV}={value!r} is not a number of seconds') from None


def _fetch(url: str, part: BinaryIO, timeout: float, progress: bool) -> Tuple[int, str]:
    """Stream ``url`` into ``part``; (bytes written, SHA-256). Raises OSError for an HTTP
    error, a timeout or a body shorter or longer than its Content-Length."""
    from torch.hub import tqdm  # tqdm, or torch's stand-in without it
    request = Request(url, headers={'User-Agent': 'dinat-backbone'})
    with urlopen(request, timeout=timeout) as response:
        length = response.headers.get('Content-Length')
        expected = int(length) if length and length.isdigit() else None
        digest = hashlib.sha256()
        written = 0
        with tqdm(total=expected, disable=not progress, unit='B', unit_scale=True,
                  unit_divisor=1024) as bar:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except http.client.IncompleteRead as error:
                    raise OSError(f'the connection closed after {written + len(error.partial)}'
                                  f' of {expected} bytes') from error
                if not chunk:
                    break
                part.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if expected is not None and written != expected:
        raise OSError(f'received {written} bytes, but the server announced {expected} '
                      '(Content-Length)')
    return written, digest.hexdigest()


def download_checkpoint(url: str, model_dir: Optional[str] = None, progress: bool = True,
                        timeout: Optional[float] = None) -> str:
    """Download ``url`` once; return the cached file's path.

    The cache entry is ``<model_dir>/<hash of the full URL>/<file name>`` (``model_dir``
    defaults to torch.hub's ``<hub dir>/checkpoints``; the file name is the URL's, ``checkpoint``
    for an empty one, ``.`` or ``..``, cut to 255 bytes keeping its extension). A file name of
    torch.hub's form ``name-<8+ hex digits of its SHA-256>.ext`` is verified (a run of decimal
    digits only, e.g. a date, is not taken for a hash). The file is written to a temporary file
    in the same directory, its length checked against the server's Content-Length, and renamed
    into place only when complete: a failed or cut-off download leaves nothing in the cache.

    Args:
        timeout (float, optional): Seconds the server may stay silent (connecting or sending)
            before the download fails. Default: ``$DINAT_DOWNLOAD_TIMEOUT``, else 60.

    Raises:
        OSError: the download failed (HTTP error, timeout, a body shorter than announced);
            the message names the URL and the cache path.
        RuntimeError: the content does not match the hash in its name (nothing is cached).
    """
    timeout = _download_timeout(timeout)
    name = _cache_file_name(url)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    directory = osp.join(model_dir or osp.join(torch.hub.get_dir(), 'checkpoints'), key)
    path = osp.join(directory, name)
    if osp.isfile(path):
        return path
    os.makedirs(directory, exist_ok=True)
    match = HASH_IN_NAME.search(osp.basename(urlparse(url).path))
    hash_prefix = match.group(1) if match else None
    descriptor, part_path = tempfile.mkstemp(dir=directory, prefix='.download-', suffix='.part')
    try:
        with os.fdopen(descriptor, 'wb') as part:
            try:
                _, sha256 = _fetch(url, part, timeout, progress)
            except (OSError, http.client.HTTPException) as error:
                reason = (f'no data for {timeout:g} s (the timeout: timeout= or '
                          f'${DOWNLOAD_TIMEOUT_ENV})' if isinstance(error, TimeoutError) or
                          'timed out' in str(error) else str(error) or type(error).__name__)
                raise OSError(f'Download of {url} to {path} failed: {reason}. Nothing was '
                              'cached; the next load downloads it again.') from error
            part.flush()
            os.fsync(part.fileno())
        if hash_prefix is not None and not sha256.startswith(hash_prefix):
            raise RuntimeError(f'Download of {url} is corrupt or not the file its name '
                               f'promises (SHA-256 prefix {hash_prefix}, got {sha256[:16]}). '
                               f'Nothing was cached at {path}.')
        os.replace(part_path, path)
    finally:
        if osp.exists(part_path):
            os.remove(part_path)
    return path
