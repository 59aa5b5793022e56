"""Build and load compiled torch extensions through a content-keyed cache that heals itself.

A build is keyed by what determines the binary: the content of the sources, torch, the flags,
the CPU's instruction sets (only with ``-march=native``) and the Python ABI. Never by the
checkout path or the environment's prefix: checkouts and environments that agree on all of
these share one build (the library links to torch's libraries by name, which the loading
process has already loaded). The C++ compiler is a property of a build, recorded in its
``build.json``, not part of the key: a complete cache is used on a machine without one.

Each build runs in a private temporary directory, with the sources copied in first (torch's
``build.ninja`` embeds their absolute path; a cache path that ninja cannot spell, with a ``$``
or a space, is reached through a symbolic link in the temporary folder), and is renamed into
place complete, with the sha256 of its library and what it was built from in ``build.json``.
Before loading, the library is checked against that checksum, and the build's torch, flags and
Python against the running ones: a truncated or overwritten file, or a library of another torch
placed under the key, is rebuilt instead of mapped (a truncated mapping kills the process with
SIGBUS, a library of another torch with SIGABRT). Builders of one key take turns through an
exclusive ``flock`` on its lock file: the system releases it when its holder dies, so a dead
builder is noticed at once and clocks play no part; a live one is waited for, with a message.
No process ever sees a partial build: that rests on the private directories and the atomic
rename, not on the lock (on a filesystem without ``flock`` the builds go on unlocked).

Cache root (``DINAT_EXTENSIONS_DIR``, default ``~/.cache/dinat-backbone/extensions``)::

    <name>-<key>/               a complete build: sources, torch's build files, the library
                                and build.json
    <name>-<key>.lock           exists while <name>-<key> is being built (pid and host), or
                                after a killed build, until the next build of the key
    <name>-<key>.tmp-<pid>/     a build in progress (or left by a killed one)

``python -m dinat_backbone.ops.build`` builds the package's kernels ahead of time.
"""
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

__all__ = ['cache_root', 'load_extension', 'main']

try:
    import fcntl
except ImportError:  # Windows: builds go on unlocked (see the module docstring)
    fcntl = None

MANIFEST = 'build.json'
_POLL_S = 0.5
_WAIT_MESSAGE_S = 60  # how often a waiting process says it is still waiting
_NINJA_SAFE = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
                        '/._-+=,@~%')  # torch writes paths into build.ninja unescaped


def cache_root() -> Path:
    """Where builds are cached: ``$DINAT_EXTENSIONS_DIR`` or
    ``~/.cache/dinat-backbone/extensions``."""
    return Path(os.environ.get('DINAT_EXTENSIONS_DIR',
                               Path.home() / '.cache' / 'dinat-backbone' / 'extensions'))


def _say(message: str) -> None:
    print(f'dinat_backbone: {message}', file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compiler_version(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f'unavailable ({type(err).__name__})'  # the build itself then reports it
    return (result.stdout.splitlines() or [f'exit status {result.returncode}'])[0]


def _isa_flags() -> str:
    try:
        return next(line.split(':', 1)[1].strip()
                    for line in Path('/proc/cpuinfo').read_text().splitlines()
                    if line.startswith(('flags', 'Features')))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _build_inputs(sources: Sequence[Path], cflags: Sequence[str] = (),
                  ldflags: Sequence[str] = ()) -> Dict[str, object]:
    """Everything that determines the binary built from ``sources`` but the compiler; its hash
    is the build's key (recorded in ``build.json``, and checked there before loading)."""
    native = any(flag.endswith('=native') for flag in cflags)  # -march/-mcpu=native
    return {
        'sources': {Path(s).name: _sha256(Path(s)) for s in sources},
        'torch': f'{torch.__version__} ({torch.version.git_version})',
        'cflags': list(cflags),
        'ldflags': list(ldflags),
        'isa': _isa_flags() if native else platform.machine(),
        'python': sysconfig.get_config_var('SOABI') or sys.implementation.cache_tag,
    }


def _compiler() -> str:
    """The C++ compiler a build uses, and its version (recorded with the build)."""
    from torch.utils.cpp_extension import get_cxx_compiler
    compiler = get_cxx_compiler()
    return f'{compiler}: {_compiler_version(compiler)}'


def _check(build_dir: Path, inputs: Dict[str, object]) -> Tuple[Optional[Path], Optional[str]]:
    """The library of the build in ``build_dir`` if it is complete, matches its checksum and
    was built from ``inputs`` (this torch, these flags and sources), else None and what is
    wrong with it (None too if there is no build)."""
    if not build_dir.exists():
        return None, None
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
        library = build_dir / manifest['library']
        built_from = manifest['inputs']
        differ = sorted(k for k in set(inputs) | set(built_from)
                        if built_from.get(k) != inputs.get(k))
        if differ:  # e.g. a build of another torch placed here: loading it would abort
            return None, (f'built for another {", ".join(differ)} '
                          f"(torch {built_from.get('torch')!r}, running {inputs['torch']!r})")
        if _sha256(library) == manifest['sha256']:
            return library, None
        return None, 'its library does not match the recorded sha256 (truncated or overwritten)'
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f'{type(err).__name__}: {err}'


def _holder(lock: Path) -> str:
    """Who holds ``lock``, as it says (pid and host), for messages."""
    try:
        holder = json.loads(lock.read_text())
        return f"process {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return 'another process'


def _acquire(lock: Path) -> Optional[int]:
    """A descriptor of ``lock`` holding its exclusive ``flock``, once no live process holds
    it (waiting with a message), or None if the filesystem has no ``flock``. The holder removes
    the file before releasing it, so a lock got on a removed file is tried again."""
    waited = None
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if waited is None or time.monotonic() - waited >= _WAIT_MESSAGE_S:
                _say(f'waiting for {_holder(lock)} to finish building (lock {lock}).')
                waited = time.monotonic()
            time.sleep(_POLL_S)
            continue
        except OSError as err:
            os.close(fd)
            _say(f'cannot lock {lock} ({err}); building without the lock.')
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def _build_lock(lock: Path) -> Iterator[None]:
    """Hold ``lock`` (:func:`_acquire`), naming this process in it."""
    fd = _acquire(lock) if fcntl is not None else None
    if fd is None:
        yield
        return
    try:
        if os.read(fd, 4096):  # a holder removes the file: this one was killed
            _say(f'the build lock {lock} was left by {_holder(lock)}, which is gone; '
                 'removing what it left.')
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode(),
                  0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the flock


@contextmanager
def _ninja_safe(directory: Path) -> Iterator[Path]:
    """``directory``, or a symbolic link to it whose path ninja can spell."""
    if set(str(directory)) <= _NINJA_SAFE:
        yield directory
        return
    link_dir = Path(tempfile.mkdtemp(prefix='dinat-build-'))
    try:
        link = link_dir / 'build'
        link.symlink_to(directory, target_is_directory=True)
        yield link
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)


def _build(name: str, sources: Sequence[Path], cflags: Sequence[str], ldflags: Sequence[str],
           inputs: Dict[str, object], build_dir: Path) -> Path:
    """Build into a private directory and rename it to ``build_dir``. Call with the lock held:
    any other temporary directory of this key was then left by a killed build."""
    from torch.utils.cpp_extension import load
    for leftover in build_dir.parent.glob(f'{build_dir.name}.tmp-*'):
        shutil.rmtree(leftover, ignore_errors=True)
    if build_dir.exists():  # damaged (checked by the caller): rename() needs the name free
        shutil.rmtree(build_dir)
    if shutil.which('ninja') is None:  # the pip package's binary, when its venv is not on PATH
        try:
            import ninja
            os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + os.environ.get('PATH', '')
        except ImportError:
            pass  # load() then fails with torch's own "Ninja is required" message
    tmp = build_dir.with_name(f'{build_dir.name}.tmp-{os.getpid()}')
    tmp.mkdir()
    try:
        _say(f"compiling '{name}' in {build_dir} (once per source and toolchain, usually "
             'under a minute)')
        start = time.monotonic()
        with _ninja_safe(tmp) as work:
            copies = [shutil.copy2(source, work / Path(source).name) for source in sources]
            # load() also loads the library into this process; the rename keeps it mapped.
            library = Path(load(name=name, sources=copies, build_directory=str(work),
                                extra_cflags=list(cflags), extra_ldflags=list(ldflags),
                                is_python_module=False))
            library = tmp / library.name
        manifest = {'library': library.name, 'sha256': _sha256(library), 'inputs': inputs,
                    'compiler': _compiler()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.rename(tmp, build_dir)
        _say(f"built '{name}' in {time.monotonic() - start:.0f} s.")
        return build_dir / library.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left by a failed build


def load_extension(name: str, sources: Sequence[Path], cflags: Sequence[str] = (),
                   ldflags: Sequence[str] = ()) -> Path:
    """Load the library compiled from ``sources`` into torch (``torch.ops.load_library``: it
    registers its ops), building it first unless the cache holds an intact build.

    Args:
        name: the library's name (and the prefix of its cache directory).
        sources: C++ files that include only system and torch headers.
        cflags, ldflags: extra compiler and linker flags.

    Returns:
        The path of the loaded library.

    Raises:
        ValueError: two sources have the same file name.
        RuntimeError, OSError: the build failed (no compiler or ninja, a compile error, an
        unwritable cache).
    """
    names = [Path(source).name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f'The sources are copied into one directory: their file names must '
                         f'differ, got {names}.')
    inputs = _build_inputs(sources, cflags, ldflags)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    build_dir = cache_root() / f'{name}-{key}'
    library, problem = _check(build_dir, inputs)
    if problem is not None:
        _say(f'the cached build {build_dir} is damaged ({problem}); rebuilding it.')
    if library is None:
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(build_dir.with_name(f'{build_dir.name}.lock')):
            library, _ = _check(build_dir, inputs)  # built by the holder we waited for?
            if library is None:
                library = _build(name, sources, cflags, ldflags, inputs, build_dir)
    torch.ops.load_library(str(library))
    return library


def main() -> int:
    """Build the package's compiled kernels ahead of time (the set-up step)."""
    from .cpu_kernels import cpu_kernels
    if cpu_kernels() is None:  # its warning names the error
        return 1
    _say(f'the compiled CPU kernels are ready (cache: {cache_root()}).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
