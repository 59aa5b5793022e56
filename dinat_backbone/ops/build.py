"""Build and load compiled torch extensions through a content-keyed cache that heals itself.

A build is keyed by what determines the binary: the content of the sources, torch, the C++
compiler and the flags, the CPU's instruction sets (only with ``-march=native``) and the Python
ABI. Never by the checkout path or the environment's prefix: checkouts and environments that
agree on all of these share one build (the library links to torch's libraries by name, which
the loading process has already loaded).

Each build runs in a private temporary directory, with the sources copied in first (torch's
``build.ninja`` embeds their absolute path), and is renamed into place complete, with the
sha256 of its library in ``build.json``. The library is checked against that checksum before
it is loaded, so a truncated or overwritten file is rebuilt instead of mapped (a truncated
mapping kills the process with SIGBUS). A lock file naming its process keeps concurrent
processes from building the same key twice; a lock whose process is gone, or older than any
build, is broken. No process ever sees a partial build: that rests on the private directories
and the atomic rename, not on the lock.

Cache root (``DINAT_EXTENSIONS_DIR``, default ``~/.cache/dinat-backbone/extensions``)::

    <name>-<key>/               a complete build: sources, torch's build files, the library
                                and build.json
    <name>-<key>.lock           held while <name>-<key> is being built (pid and host)
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
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

__all__ = ['cache_root', 'load_extension', 'main']

MANIFEST = 'build.json'
STALE_LOCK_S = 600  # a lock older than this outlives any build (~20 s): its holder is hung
_POLL_S = 0.5


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
    """Everything that determines the binary built from ``sources``; its hash is the build's
    key (recorded in ``build.json``, to tell why two builds differ)."""
    from torch.utils.cpp_extension import get_cxx_compiler
    compiler = get_cxx_compiler()
    native = any(flag.endswith('=native') for flag in cflags)  # -march/-mcpu=native
    return {
        'sources': {Path(s).name: _sha256(Path(s)) for s in sources},
        'torch': f'{torch.__version__} ({torch.version.git_version})',
        'compiler': f'{compiler}: {_compiler_version(compiler)}',
        'cflags': list(cflags),
        'ldflags': list(ldflags),
        'isa': _isa_flags() if native else platform.machine(),
        'python': sysconfig.get_config_var('SOABI') or sys.implementation.cache_tag,
    }


def _check(build_dir: Path) -> Tuple[Optional[Path], Optional[str]]:
    """The library of the build in ``build_dir`` if it is complete and matches its checksum,
    else None and what is wrong with it (None too if there is no build)."""
    if not build_dir.exists():
        return None, None
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
        library = build_dir / manifest['library']
        if _sha256(library) == manifest['sha256']:
            return library, None
        return None, 'its library does not match the recorded sha256 (truncated or overwritten)'
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f'{type(err).__name__}: {err}'


def _process_alive(pid: int) -> bool:
    if os.name == 'nt':  # os.kill() would end the process there: only the lock's age counts
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale_reason(lock: Path) -> Optional[str]:
    """Why ``lock`` can be broken (its process is gone, or it is older than any build), or
    None while its holder may still be building."""
    try:
        age = time.time() - lock.stat().st_mtime
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None  # released meanwhile
    except ValueError:
        holder = None  # empty while its creator writes it, or garbage: only its age counts
    if age > STALE_LOCK_S:
        return f'held for {age / 60:.0f} min, longer than any build'
    if isinstance(holder, dict) and holder.get('host') == socket.gethostname():
        pid = holder.get('pid')
        if isinstance(pid, int) and not _process_alive(pid):
            return f'its process {pid} is gone'
    return None


@contextmanager
def _build_lock(lock: Path) -> Iterator[None]:
    """Hold ``lock`` (created exclusively, naming this process); wait while a live process
    holds it, break it when stale."""
    waiting = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pass
        reason = _stale_reason(lock)
        if reason is not None:
            _say(f'breaking the build lock {lock} ({reason}).')
            lock.unlink(missing_ok=True)  # two breakers at once: the later rename fails
            continue
        if not waiting:
            _say(f'waiting for another process to finish building (lock {lock}).')
            waiting = True
        time.sleep(_POLL_S)
    with os.fdopen(fd, 'w') as f:
        json.dump({'pid': os.getpid(), 'host': socket.gethostname()}, f)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _build(name: str, sources: Sequence[Path], cflags: Sequence[str], ldflags: Sequence[str],
           inputs: Dict[str, object], build_dir: Path) -> Path:
    """Build into a private directory and rename it to ``build_dir``. Call with the lock held:
    any other temporary directory of this key was then left by a killed or hung build."""
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
        copies = [shutil.copy2(source, tmp / Path(source).name) for source in sources]
        _say(f"compiling '{name}' in {build_dir} (once per source and toolchain, usually "
             'under a minute)')
        start = time.monotonic()
        # load() also loads the library into this process; the rename keeps it mapped.
        library = Path(load(name=name, sources=copies, build_directory=str(tmp),
                            extra_cflags=list(cflags), extra_ldflags=list(ldflags),
                            is_python_module=False))
        manifest = {'library': library.name, 'sha256': _sha256(library), 'inputs': inputs}
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
    library, problem = _check(build_dir)
    if problem is not None:
        _say(f'the cached build {build_dir} is damaged ({problem}); rebuilding it.')
    if library is None:
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(build_dir.with_name(f'{build_dir.name}.lock')):
            library, _ = _check(build_dir)  # built meanwhile by the holder we waited for?
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
