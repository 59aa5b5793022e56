"""Hostile checkpoint files, written as real pickles: objects whose ``__reduce__`` names numpy's
own globals (``numpy.dtype``, ``_reconstruct``, ``scalar``) with states numpy never writes, or
raw opcodes spliced into a real ``torch.save`` archive. Nothing numpy-side is built here: the
forged dtypes exist only as bytes in the files.

``python hostile_checkpoints.py FILE...`` loads each file without the opt-in, prints one JSON
line per file (the error's type and message, or ``loaded``) and then uses what it loaded (a
forged object array crashes the interpreter when printed or freed): the tests run it in a
subprocess and fail on a signal exit.
"""
import gc
import json
import sys
import zipfile
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 1.26
    from numpy.core import multiarray


class Reduce:
    """Pickles as ``function(*args)`` followed by ``BUILD state`` (when given)."""

    def __init__(self, function: Callable, args: tuple, state=None) -> None:
        self.reduced = (function, args) if state is None else (function, args, state)

    def __reduce__(self):
        return self.reduced


PLAIN = (3, '|', None, None, None, -1, -1, 0)  # a dtype state with no flags
OBJECT_FLAGS = 63  # what numpy writes for dtype('O')


def dtype(spec: str, state: tuple = PLAIN) -> Reduce:
    return Reduce(np.dtype, (spec, False, True), state)


def array(dtype_: Reduce, shape: tuple, data) -> Reduce:
    return Reduce(multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                  (1, shape, dtype_, False, data))


def self_containing_dtype() -> Reduce:
    """A structured dtype whose sub-array's dtype is itself (the pickle's memo makes the
    cycle)."""
    outer = Reduce(np.dtype, ('V16', False, True))
    outer.reduced += ((3, '|', (outer, (2, )), None, None, 16, 1, 0), )
    return outer


def save(path: Path, value) -> Path:
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': value}, path)
    return path


def with_pickle(path: Path, edit: Callable[[bytes], bytes], legacy: bool = False) -> Path:
    """A real checkpoint whose pickle ``edit`` rewrites (the archive is rebuilt around it)."""
    torch.save({'w': torch.zeros(2)}, path, _use_new_zipfile_serialization=not legacy)
    if legacy:
        path.write_bytes(edit(path.read_bytes()))
        return path
    with zipfile.ZipFile(path) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, 'w') as archive:
        for name, data in records.items():
            archive.writestr(name, edit(data) if name.endswith('/data.pkl') else data)
    return path


# The storage's numel in the pickle ('cpu', then BININT1 2), and 2**32 floats (16 GiB) as LONG1.
TWO_FLOATS = b'cpuq\x06K\x02'
SIXTEEN_GIB = b'cpuq\x06\x8a\x05' + (2 ** 32).to_bytes(5, 'little')

HOSTILE: Dict[str, Callable[[Path], Path]] = {
    # dtype('O') with its flags cleared: ndarray.__setstate__ would take file bytes as PyObject*
    'object-dtype-flags-cleared': lambda p: save(p, array(dtype('O8'), (2, ), b'\x01' * 16)),
    # dtype('O') as numpy writes it: an array of Python objects from a list
    'object-dtype': lambda p: save(p, array(dtype('O8', PLAIN[:7] + (OBJECT_FLAGS, )), (1, ),
                                            [1])),
    'float64-with-object-flags': lambda p: save(
        p, array(dtype('f8', (3, '<', None, None, None, -1, -1, OBJECT_FLAGS)), (2, ),
                 b'\x01' * 16)),
    'structured-object-field': lambda p: save(p, array(
        dtype('V8', (3, '|', None, ('x', ), {'x': (dtype('O8'), 0)}, 8, 1, 0)), (1, ),
        b'\x01' * 8)),
    'sub-array-of-objects': lambda p: save(p, array(
        dtype('V16', (3, '|', (dtype('O8'), (2, )), None, None, 16, 1, 0)), (1, ),
        b'\x01' * 16)),
    'dtype-containing-itself': lambda p: save(p, array(self_containing_dtype(), (1, ),
                                                       b'\x01' * 16)),
    'object-scalar': lambda p: save(p, Reduce(multiarray.scalar, (dtype('O8'), b'\x01' * 8))),
    'object-dtype-class': lambda p: save(p, Reduce(np.dtypes.ObjectDType, ())),
    'field-outside-the-item': lambda p: save(p, array(
        dtype('V8', (3, '|', None, ('x', ), {'x': (dtype('f8'), 1 << 20)}, 8, 1, 16)), (1, ),
        b'\x01' * 8)),
    'array-larger-than-its-bytes': lambda p: save(p, array(dtype('f8'), (1 << 30, ),
                                                           b'\x01' * 16)),
    # FRAME (protocol 4), which torch's weights-only unpickler does not know
    'unsupported-opcode': lambda p: with_pickle(p, lambda data: data[:2] + b'\x95' + data[2:]),
    'storage-larger-than-its-record': lambda p: with_pickle(
        p, lambda data: data.replace(TWO_FLOATS, SIXTEEN_GIB)),
    'storage-larger-than-the-file-legacy': lambda p: with_pickle(
        p, lambda data: data.replace(TWO_FLOATS, SIXTEEN_GIB, 1), legacy=True),
    'truncated': lambda p: truncated(save(p, None)),
    'damaged-safetensors': lambda p: damaged_safetensors(p.with_suffix('.safetensors')),
}


def truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:300])
    return path


def damaged_safetensors(path: Path) -> Path:
    """A header that names a tensor without dtype, shape or offsets."""
    header = b'{"w": [1, 2, 3]}'
    path.write_bytes(len(header).to_bytes(8, 'little') + header)
    return path


def main(paths) -> None:
    from dinat_backbone.weights.safe_loading import load_checkpoint_file
    for path in paths:
        try:
            loaded = load_checkpoint_file(path)
            outcome = {'type': None, 'message': repr(loaded)}  # touches every value
            del loaded
            gc.collect()
        except Exception as error:
            outcome = {'type': type(error).__name__, 'message': str(error)}
        print(json.dumps({'path': path, **outcome}), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
