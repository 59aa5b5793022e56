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
process-wide. numpy's globals resolve to stand-ins: numpy dtypes, arrays and scalars are built by
our code from the file's description after it is checked (plain data only, never Python
objects), see :func:`_finish`. ``.safetensors`` files are read with safetensors. Anything else
is refused with :class:`UnsafeCheckpointError`, naming the offending global and the opt-in for a
file from a trusted source: ``trusted=True`` on the loading functions, ``--trust-checkpoint`` on
the tools, or :class:`trust_checkpoints` around mmengine's own loading (``load_from``, resume,
``init_cfg``), which goes through the loaders that
:mod:`dinat_backbone.weights.mmengine_loaders` registers. A damaged or truncated file raises
:class:`CheckpointReadError` with one line.

Downloads (:func:`download_checkpoint`) are cached under a directory named by a hash of the full
URL, so two URLs with the same file name never share an entry; a file name carrying a SHA-256
prefix (torch.hub's ``name-<sha256 prefix>.ext``) is verified; the file appears in the cache
only once complete (written to a temporary file, its length checked against the server's
Content-Length, then renamed); a silent server fails after a timeout (60 s,
``$DINAT_DOWNLOAD_TIMEOUT``).
"""
import argparse
import contextvars
import functools
import hashlib
import http.client
import os
import os.path as osp
import pickle
import re
import sys
import tempfile
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Set, Tuple, Union
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch

__all__ = [
    'CheckpointReadError', 'DownloadError', 'UnsafeCheckpointError', 'allowed_globals',
    'trust_checkpoints', 'load_checkpoint_file', 'download_checkpoint'
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
# The innermost trust_checkpoints block of this context, and the blocks that have not exited.
_TRUST_TOKEN: contextvars.ContextVar = contextvars.ContextVar('dinat_trust_checkpoints',
                                                              default=None)
_OPEN_BLOCKS: Set[object] = set()


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read: empty, damaged, truncated or hostile.

    A ``ValueError`` (a bad input file), which the tools report as a one-line error.
    """


class DownloadError(OSError):
    """A download that failed, with nothing cached: the ``url``, the cache ``path`` it was
    for and the ``reason`` (the server's or the network's, e.g. 'File not found')."""

    def __init__(self, url: str, path: str, reason: str, detail: str) -> None:
        super().__init__(f'Download of {url} to {path} failed: {detail}. Nothing was cached; '
                         'the next load downloads it again.')
        self.url, self.path, self.reason = url, path, reason


class UnsafeCheckpointError(pickle.UnpicklingError, CheckpointReadError):
    """A checkpoint whose unpickling needs more than the allow-list: it could run code."""


@functools.lru_cache(maxsize=None)
def allowed_globals() -> Tuple[SafeGlobal, ...]:
    """What :func:`load_checkpoint_file` lets a checkpoint rebuild beyond torch's defaults.

    numpy's names resolve to stand-ins (:class:`_PendingDType`, :class:`_PendingArray`,
    :func:`_numpy_scalar`, :func:`_numpy_reconstruct`): no numpy dtype or array exists while
    the file is unpickled, so the file's states never reach numpy's ``__setstate__``.
    """
    from mmengine.logging import HistoryBuffer

    # Pickles name numpy's reconstructors after the numpy that wrote them: accept both names.
    numpy_functions = [(function, f'{module}.{name}')
                       for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
                       for function, name in ((_numpy_scalar, 'scalar'),
                                              (_numpy_reconstruct, '_reconstruct'))]
    return (HistoryBuffer, (_getattr_of_history_buffer, 'builtins.getattr'),
            (_PendingArray, 'numpy.ndarray'), (_PendingDType, 'numpy.dtype'), *numpy_functions,
            (_empty_bytes, 'builtins.bytes'), argparse.Namespace)


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: pickle protocol 2 writes ``b''`` (an empty array's data) as that call."""
    if args:
        raise _Refused(f'the file calls bytes() with {len(args)} arguments; only b\'\' is built')
    return b''


# ---------------------------------------------------------------------------------------------
# numpy without object pointers
#
# A pickled dtype is ``numpy.dtype(spec, align, copy)`` followed by ``__setstate__(state)``, and
# numpy takes the state's flags, fields and sizes as given: ``dtype('O')`` with its flags
# cleared makes ``ndarray.__setstate__`` read file bytes as ``PyObject*``, a field may lie
# outside the item. So the unpickler only gets stand-ins that record the arguments and state;
# :func:`_finish` then builds each dtype through numpy's constructor (which checks fields and
# sizes), refuses any kind but plain numbers, strings, bytes, void and datetimes, and only then
# builds the arrays and scalars that use it.

_PLAIN_KINDS = 'biufcSUVMm'  # bool, integers, floats, complex, bytes, str, void, datetimes
_OBJECT_FLAGS = 0x07  # NPY_ITEM_REFCOUNT | NPY_LIST_PICKLE | NPY_ITEM_IS_POINTER
_ALIGNED_STRUCT = 0x80
_FOREIGN_ORDER = '>' if sys.byteorder == 'little' else '<'


class _Refused(Exception):
    """Raised inside the unpickler (torch would rewrap a pickle.UnpicklingError)."""


class _Pending:
    """Stands in for a numpy object while unpickling: the file gives its arguments, then its
    state once; :meth:`resolve` builds the real object after the file is read, with numpy's
    own (checking) constructors."""
    what = ''  # for messages

    def __new__(cls, *args: Any) -> '_Pending':
        pending = super().__new__(cls)
        pending.args, pending.state, pending.value, pending.resolving = args, None, None, False
        return pending

    def __setstate__(self, state: Any) -> None:
        if self.state is not None or self.value is not None:
            raise _Refused(f'a numpy {self.what} is given its state twice')
        self.state = state

    def resolve(self) -> Any:
        if self.value is None:
            if self.resolving:
                raise _Refused(f'a numpy {self.what} contains itself')
            self.resolving = True
            self.value = self._build()
        return self.value

    def _build(self) -> Any:
        raise NotImplementedError


class _PendingDType(_Pending):
    """``numpy.dtype``."""
    what = 'dtype'

    def _build(self) -> Any:
        return _build_dtype(self.args, self.state)


class _PendingArray(_Pending):
    """``numpy.ndarray``, made empty by ``_reconstruct`` and filled by its state."""
    what = 'array'

    def __new__(cls, *args: Any) -> '_PendingArray':
        if args:
            raise _Refused('numpy.ndarray is called directly (numpy pickles use _reconstruct)')
        return super().__new__(cls)

    def _build(self) -> Any:
        return _build_array(self.state)


def _numpy_reconstruct(subtype: Any, *args: Any) -> _PendingArray:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: an empty stand-in, filled by
    the ``BUILD`` that follows (numpy's version would allocate the shape the file gives)."""
    if subtype is not _PendingArray:
        raise _Refused(f'numpy _reconstruct of {subtype!r}; only numpy.ndarray is rebuilt')
    return _PendingArray()


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: a numpy scalar of a checked dtype."""
    dtype = _real_dtype(dtype)
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise _Refused(f'a numpy {dtype} scalar needs {dtype.itemsize} bytes, the file gives '
                       f'{_describe(data)}')
    return _multiarray().scalar(dtype, data)


def _multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 1.26 (numpy 2's own name)
    except ImportError:
        from numpy.core import multiarray
    return multiarray


def _describe(value: Any) -> str:
    return f'{len(value)} bytes' if type(value) is bytes else type(value).__name__


def _real_dtype(value: Any) -> Any:
    if not isinstance(value, _PendingDType):
        raise _Refused(f'numpy expects a dtype where the file gives {_describe(value)}')
    return value.resolve()


def _build_dtype(args: tuple, state: Any) -> Any:
    """The dtype that ``numpy.dtype(*args).__setstate__(state)`` describes, built from its
    parts by numpy's constructor; refused unless it is plain data (:func:`_check_plain`)."""
    import numpy as np
    spec = args[0] if args else None
    if type(spec) is not str:
        raise _Refused(f'numpy.dtype({_describe(spec)}): numpy pickles a dtype by its name')
    if state is None:
        return _check_plain(_numpy_call(np.dtype, spec), spec)
    if not (type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4)):
        raise _Refused(f'numpy dtype {spec!r} has a state that numpy >= 1.7 does not write')
    endian, subarray, names, fields, item_size, _, flags = state[1:8]
    if type(flags) is not int or flags & _OBJECT_FLAGS:
        raise _Refused(f'numpy dtype {spec!r} is marked as holding Python objects (flags '
                       f'{flags!r}); checkpoints hold numbers, strings and bytes')
    metadata = state[8] if len(state) == 9 else None
    unit = None
    if spec[:1] in 'Mm' and type(metadata) is tuple and len(metadata) == 2:
        metadata, unit = metadata  # datetimes: (user metadata, (unit, count, 1, 1))
    if metadata is not None:
        raise _Refused(f'numpy dtype {spec!r} carries metadata ({_describe(metadata)})')
    if subarray is not None:
        if type(subarray) is not tuple or len(subarray) != 2:
            raise _Refused(f'numpy dtype {spec!r} has a malformed sub-array')
        dtype = _numpy_call(np.dtype, (_real_dtype(subarray[0]), subarray[1]))
    elif names is not None:
        if type(names) is not tuple or type(fields) is not dict or \
                any(type(fields.get(name)) is not tuple for name in names):
            raise _Refused(f'numpy dtype {spec!r} has malformed fields')
        entries = [fields[name] for name in names]
        dtype = _numpy_call(np.dtype, dict(
            names=list(names), formats=[_real_dtype(entry[0]) for entry in entries],
            offsets=[entry[1] if len(entry) > 1 else None for entry in entries],
            titles=[entry[2] if len(entry) > 2 else None for entry in entries],
            itemsize=item_size), align=bool(flags & _ALIGNED_STRUCT))
    else:
        if unit is not None:
            if not (type(unit) is tuple and len(unit) == 4 and type(unit[0]) is bytes
                    and type(unit[1]) is int):
                raise _Refused(f'numpy dtype {spec!r} has a malformed datetime unit')
            if unit[0] != b'generic':
                spec = f'{spec}[{unit[1]}{unit[0].decode("ascii", "replace")}]'
        dtype = _numpy_call(np.dtype, spec)
        if endian == _FOREIGN_ORDER:  # numpy writes '<' or '>' also for the native order
            dtype = dtype.newbyteorder(endian)
    return _check_plain(dtype, spec)


def _numpy_call(function: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except Exception as error:  # numpy's TypeError/ValueError/KeyError for bad descriptions
        raise _Refused(f'numpy cannot build {function.__name__} from the file\'s description: '
                       f'{type(error).__name__}: {error}') from error


def _check_plain(dtype: Any, spec: str) -> Any:
    """``dtype`` if it and every field and sub-array in it hold plain data."""
    parts = [dtype]
    while parts:
        part = parts.pop()
        if part.kind not in _PLAIN_KINDS or part.hasobject:
            raise _Refused(f'numpy dtype {spec!r} holds {part} values (Python objects or '
                           f'pointers); checkpoints hold numbers, strings and bytes')
        parts += [field[0] for field in (part.fields or {}).values()]
        if part.subdtype is not None:
            parts.append(part.subdtype[0])
    return dtype


def _build_array(state: Any) -> Any:
    """The array ``ndarray.__setstate__(state)`` would make, once its dtype and its size
    against the file's bytes are checked."""
    if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
        raise _Refused('a numpy array without the state numpy writes (version, shape, dtype, '
                       'order, bytes)')
    _, shape, dtype, fortran_order, data = state
    dtype = _real_dtype(dtype)
    if type(shape) is not tuple or any(type(n) is not int or n < 0 for n in shape):
        raise _Refused(f'a numpy array with shape {shape!r}')
    size = dtype.itemsize
    for n in shape:
        size *= n
    if type(data) is not bytes or len(data) != size:
        raise _Refused(f'a numpy {dtype} array of shape {shape} needs {size} bytes, the file '
                       f'gives {_describe(data)}')
    import numpy as np
    array = _multiarray()._reconstruct(np.ndarray, (0, ), b'b')
    array.__setstate__((1, shape, dtype, bool(fortran_order), data))
    return array


def _finish(root: Any) -> Any:
    """``root`` with every stand-in replaced by the numpy dtype, array or scalar it stands
    for, in place in the containers and object attributes that unpickling produces."""
    done: Dict[int, Any] = {}

    def finish(obj: Any) -> Any:
        if isinstance(obj, _Pending):
            return obj.resolve()
        if type(obj) in (str, bytes, int, float, bool, type(None)) or id(obj) in done:
            return done.get(id(obj), obj)
        done[id(obj)] = obj
        if isinstance(obj, dict):
            items = [(finish(key), finish(value)) for key, value in obj.items()]
            obj.clear()
            obj.update(items)
        elif isinstance(obj, list):
            obj[:] = [finish(item) for item in obj]
        elif isinstance(obj, set):
            items = [finish(item) for item in obj]
            obj.clear()
            obj.update(items)
        elif type(obj) is tuple:
            items = tuple(finish(item) for item in obj)
            if any(a is not b for a, b in zip(items, obj)):
                done[id(obj)] = items
                return items
        elif type(getattr(obj, '__dict__', None)) is dict:  # HistoryBuffer, Namespace, tensors
            finish(vars(obj))
        return obj

    try:
        return finish(root)
    except RecursionError:
        raise _Refused('the checkpoint nests containers deeper than Python can follow') from None


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


class trust_checkpoints:  # noqa: N801 (used as a function: ``with trust_checkpoints():``)
    """Within this ``with`` block (and ``enabled``), checkpoints are unpickled fully, running
    whatever code they contain. Only for files from a source you trust; e.g. a tool's
    ``--trust-checkpoint`` wraps its run in it.

    Each block is a token, set in the current context and valid until the block exits: a load
    is trusted only while its context holds a token whose block has not exited. So nothing that
    outlives the block keeps the opt-in: asyncio tasks and copied contexts made in it, or a
    generator's block that exits out of order. Threads never had it (they start with an empty
    context). A generator shares its caller's context: while one is paused inside its own
    block, the block has not exited and its caller is trusted too; that is what lets a
    ``contextlib.contextmanager`` wrap the opt-in.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._entries: List[Any] = []

    def __enter__(self) -> None:
        entry = None
        if self.enabled:
            token = object()
            _OPEN_BLOCKS.add(token)
            entry = (token, _TRUST_TOKEN.set(token))
        self._entries.append(entry)

    def __exit__(self, *exc_info: Any) -> None:
        entry = self._entries.pop()
        if entry is not None:
            token, previous = entry
            _OPEN_BLOCKS.discard(token)
            try:
                _TRUST_TOKEN.reset(previous)
            except ValueError:  # exited in another context: its token is no longer open anyway
                pass


def _trusted_here() -> bool:
    """Whether the current context holds the token of a :class:`trust_checkpoints` block that
    has not exited."""
    return _TRUST_TOKEN.get() in _OPEN_BLOCKS


def _offending_globals(filename: str, error: Exception) -> List[str]:
    """The globals of ``filename`` outside the allow-list (all of them for the zip format)."""
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # the legacy (pre-1.6) format, opcodes its scanner does not know
        found = []
    return sorted(found) or re.findall(r'GLOBAL (\S+)', str(error))[:1]


def _check_legacy_storage_sizes(filename: str, size: int) -> None:
    """For a file in the legacy (pre-1.6) format, which allocates every storage at the size its
    pickle declares before reading the data after it: unpickle it once with empty (meta)
    storages and compare the declared total with the file's size first."""
    from torch import _weights_only_unpickler

    declared: Dict[Any, int] = {}

    class DeclaredSizes(_weights_only_unpickler.Unpickler):
        def persistent_load(self, saved_id: Any) -> Any:
            if not (type(saved_id) is tuple and len(saved_id) == 6):
                raise pickle.UnpicklingError(f'unexpected storage reference {saved_id!r}')
            storage_type, key, _, numel = saved_id[1:5]
            dtype = getattr(storage_type, 'dtype', None)
            if not isinstance(dtype, torch.dtype) or type(numel) is not int or numel < 0:
                raise pickle.UnpicklingError(f'unexpected storage reference {saved_id!r}')
            nbytes = numel * torch._utils._element_size(dtype)
            declared[key] = nbytes
            return torch.storage.TypedStorage(
                wrap_storage=torch.UntypedStorage(nbytes, device='meta'), dtype=dtype,
                _internal=True)

    with open(filename, 'rb') as file:
        if file.read(1) != pickle.PROTO:  # a zip archive (torch checks its records' sizes)
            return
        file.seek(0)
        for _ in range(3):  # magic number, protocol version, system information
            _weights_only_unpickler.Unpickler(file, encoding='utf-8').load()
        DeclaredSizes(file, encoding='utf-8').load()
    if sum(declared.values()) > size:
        raise CheckpointReadError(
            f'Cannot read {filename}: its tensors declare {sum(declared.values())} bytes of '
            f'data, more than the file\'s {size} bytes (damaged or hostile).')


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
        UnsafeCheckpointError: the file needs a global outside :func:`allowed_globals` (the
            message names it and the opt-in), numpy values holding Python objects, or cannot be
            read without running code.
        CheckpointReadError: an empty, damaged or truncated file, or one asking for more
            memory than it holds.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file not found: {filename}')
    size = osp.getsize(filename)
    if size == 0:  # torch would raise a bare EOFError
        raise CheckpointReadError(f'Checkpoint file is empty (0 bytes): {filename}')
    if filename.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, (str, torch.device)) else 'cpu'
        try:
            return load_file(filename, device=str(device))
        except SafetensorError as error:
            raise CheckpointReadError(f'Cannot read {filename}: it is not a valid safetensors '
                                      f'file (damaged or truncated?): {error}') from None
    if trusted or _trusted_here():
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            _check_legacy_storage_sizes(filename, size)
            return _finish(torch.load(filename, map_location=map_location, weights_only=True))
    except _Refused as error:
        raise UnsafeCheckpointError(f'Refused to unpickle {filename}: {error}. If you trust its '
                                    f'source, opt in with {OPT_IN}.') from None
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
    except MemoryError:
        raise CheckpointReadError(
            f'Cannot read {filename}: its {size} bytes ask for more memory than is available; '
            'a checkpoint needs about its own size, so the file is damaged or hostile.') from None
    except (RuntimeError, EOFError) as error:  # torch's size checks, a truncated pickle
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointReadError(f'Cannot read {filename} ({size} bytes): {reason}') from None


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
        DownloadError: the download failed (HTTP error, timeout, a body shorter than announced);
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
                detail = (f'no data for {timeout:g} s (the timeout: timeout= or '
                          f'${DOWNLOAD_TIMEOUT_ENV})' if isinstance(error, TimeoutError) or
                          'timed out' in str(error) else str(error) or type(error).__name__)
                reason = str(getattr(error, 'reason', None) or detail)
                raise DownloadError(url, path, reason, detail) from error
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
