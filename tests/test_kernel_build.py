"""The kernel cache heals: damaged builds, stale locks, shared checkouts (dinat_backbone.ops.build).

Each case that loads a cached library runs in a subprocess with its own
``DINAT_EXTENSIONS_DIR``: a damaged library kills the process that maps it. The CPU kernels are
built once per session (by the set-up command) and copied into each test that needs them; the
cache mechanics are tested on a one-function library that builds in a fraction of a second.
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from helpers import REPO_ROOT

KERNEL_SOURCE = REPO_ROOT / 'dinat_backbone' / 'ops' / 'csrc' / 'na2d_cpu.cpp'
COMPILING = "compiling '"  # the progress line of a build

# A library without torch headers: the cache treats it like the kernels, and it builds fast.
# The scripts hide mmcv: the build needs torch alone, and the package's OpenMMLab registration
# would add seconds to every process.
ANSWER_SOURCE = 'extern "C" int dinat_build_test_answer() { return 42; }\n'
LOAD_ANSWER = """
import ctypes, sys
sys.modules['mmcv'] = None
from dinat_backbone.ops.build import load_extension
library = load_extension('answer', [sys.argv[1]])
print(library)
print(ctypes.CDLL(str(library)).dinat_build_test_answer())
"""
# The kernels against the tiled PyTorch implementation (an independent one).
KERNELS_MATCH_TILED = """
import torch
import dinat_backbone
from dinat_backbone.ops import na2d
from dinat_backbone.ops.cpu_kernels import cpu_kernels
assert cpu_kernels() is not None
print(dinat_backbone.__file__)
print(*torch.ops.loaded_libraries)
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 12, 11, 2, 16, generator=gen) for _ in range(3))
rpb = torch.randn(2, 9, 9, generator=gen)
out = na2d(q, k, v, 5, 2, rpb=rpb, backend='cpu')
torch.testing.assert_close(out, na2d(q, k, v, 5, 2, rpb=rpb, backend='torch'), rtol=0, atol=1e-5)
print('match')
"""


def environment(cache: Path, **extra: str) -> Dict[str, str]:
    return dict(os.environ, DINAT_EXTENSIONS_DIR=str(cache), OMP_NUM_THREADS='1', **extra)


def run_python(script: str, cache: Path, *args: str, cwd: Path = REPO_ROOT,
               env: Optional[Dict[str, str]] = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', script, *args], cwd=cwd,
                          env=environment(cache, **(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def builds(cache: Path) -> List[Path]:
    """The complete builds in a cache (temporary directories and locks excluded)."""
    return sorted(p for p in cache.iterdir() if p.is_dir() and '.tmp-' not in p.name)


def library_of(build: Path) -> Path:
    return build / json.loads((build / 'build.json').read_text())['library']


def copy_cache(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / 'cache'
    shutil.copytree(cache, copy)
    return copy


def held_compiler(directory: Path) -> Dict[str, str]:
    """The environment for a compiler that, while $HOLD is set, creates $HOLD/compiling and
    waits for $HOLD/release before compiling (named g++ so that torch accepts it)."""
    wrapper = directory / 'held-g++'
    wrapper.write_text('#!/bin/sh\n'
                       'for arg; do if [ "$arg" = -c ] && [ -n "$HOLD" ]; then\n'
                       '  touch "$HOLD/compiling"\n'
                       '  while [ ! -e "$HOLD/release" ]; do sleep 0.05; done\n'
                       'fi; done\n'
                       'exec c++ "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return {'CXX': str(wrapper)}


def wait_until(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, 'the process ended early'
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.05)


@pytest.fixture(scope='session')
def built_kernels(
        tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, subprocess.CompletedProcess]:
    """A cache holding the compiled CPU kernels, built by the set-up command, and its output."""
    cache = tmp_path_factory.mktemp('kernel_cache')
    result = subprocess.run([sys.executable, '-m', 'dinat_backbone.ops.build'], cwd=REPO_ROOT,
                            env=environment(cache), capture_output=True, text=True, timeout=600)
    return cache, result


@pytest.fixture(scope='session')
def answer(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """The one-function library's source and a cache holding its build."""
    root = tmp_path_factory.mktemp('answer')
    source, cache = root / 'answer.cpp', root / 'cache'
    source.write_text(ANSWER_SOURCE)
    result = run_python(LOAD_ANSWER, cache, str(source))
    assert result.returncode == 0 and result.stdout.split()[-1] == '42', result.stderr
    return source, cache


def test_setup_command_builds_and_records_the_checksum(built_kernels):
    cache, result = built_kernels
    assert result.returncode == 0, result.stderr
    assert COMPILING in result.stderr and 'CPU kernels are ready' in result.stderr
    build, = builds(cache)
    library = library_of(build)
    assert (json.loads((build / 'build.json').read_text())['sha256']
            == hashlib.sha256(library.read_bytes()).hexdigest())
    # built from a copy of the source: torch's build file names the cache, not the checkout
    assert (build / KERNEL_SOURCE.name).read_bytes() == KERNEL_SOURCE.read_bytes()
    assert str(KERNEL_SOURCE) not in (build / 'build.ninja').read_text()


def test_truncated_kernels_are_rebuilt_not_mapped(built_kernels, tmp_path):
    """A truncated library, once mapped, kills the process with SIGBUS: it must be rebuilt."""
    cache = copy_cache(built_kernels[0], tmp_path)
    build, = builds(cache)
    library = library_of(build)
    library.write_bytes(library.read_bytes()[:library.stat().st_size // 2])
    result = run_python(KERNELS_MATCH_TILED, cache)
    assert result.returncode == 0, result.stderr
    assert 'is damaged' in result.stderr and COMPILING in result.stderr
    assert result.stdout.split()[-1] == 'match'
    assert builds(cache) == [build]


def test_a_second_checkout_reuses_the_build(built_kernels, tmp_path):
    """The same sources at another path: the same build, nothing compiled or rewritten."""
    cache = copy_cache(built_kernels[0], tmp_path)
    checkout = tmp_path / 'other_checkout'
    shutil.copytree(REPO_ROOT / 'dinat_backbone', checkout / 'dinat_backbone',
                    ignore=shutil.ignore_patterns('__pycache__'))
    build, = builds(cache)
    before = {p.name: p.stat().st_mtime_ns for p in build.iterdir()}
    result = run_python(KERNELS_MATCH_TILED, cache, cwd=checkout,
                        env={'PYTHONPATH': str(checkout)})
    assert result.returncode == 0, result.stderr
    assert COMPILING not in result.stderr
    package, loaded, match = result.stdout.split('\n')[:3]
    assert package.startswith(str(checkout)) and loaded == str(library_of(build))
    assert match == 'match'
    assert {p.name: p.stat().st_mtime_ns for p in build.iterdir()} == before


@pytest.mark.parametrize('damage', ['empty', 'garbage'])
def test_damaged_library_is_rebuilt(answer, tmp_path, damage):
    source, cache = answer[0], copy_cache(answer[1], tmp_path)
    build, = builds(cache)
    library = library_of(build)
    library.write_bytes(b'' if damage == 'empty' else os.urandom(library.stat().st_size))
    result = run_python(LOAD_ANSWER, cache, str(source))
    assert result.returncode == 0, result.stderr
    assert 'is damaged' in result.stderr and COMPILING in result.stderr
    assert result.stdout.split() == [str(library), '42']
    assert builds(cache) == [build]


def test_changed_source_gets_its_own_build(answer, tmp_path):
    cache = copy_cache(answer[1], tmp_path)
    source = tmp_path / 'answer.cpp'
    source.write_text(ANSWER_SOURCE.replace('42', '43'))
    result = run_python(LOAD_ANSWER, cache, str(source))
    assert COMPILING in result.stderr and result.stdout.split()[-1] == '43'
    assert len(builds(cache)) == 2


@pytest.mark.parametrize('offset_s', [-3600, 3600], ids=['old', 'future-mtime'])
def test_lock_left_without_a_holder_is_taken_at_once(answer, tmp_path, offset_s):
    """A lock file nobody holds, whatever its mtime (a clock skewed either way) and content:
    taken within 30 s (at once), not after its age passes a limit."""
    source, cache = answer[0], copy_cache(answer[1], tmp_path)
    build, = builds(cache)
    shutil.rmtree(build)
    lock = build.with_name(build.name + '.lock')
    lock.write_text('')  # unreadable: no holder to name
    os.utime(lock, (time.time() + offset_s,) * 2)
    start = time.monotonic()
    result = run_python(LOAD_ANSWER, cache, str(source), timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'waiting' not in result.stderr and time.monotonic() - start < 30
    assert result.stdout.split()[-1] == '42' and not lock.exists()


def test_lock_of_a_killed_build_is_broken(answer, tmp_path):
    """Kill a build mid-compile (its whole process group): the next process breaks its lock,
    removes its half-built directory and builds."""
    source, cache = answer[0], tmp_path / 'cache'
    env = held_compiler(tmp_path)
    killed = subprocess.Popen([sys.executable, '-c', LOAD_ANSWER, str(source)], cwd=REPO_ROOT,
                              env=environment(cache, HOLD=str(tmp_path), **env),
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_until((tmp_path / 'compiling').exists, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    try:
        lock, = cache.glob('*.lock')
        assert json.loads(lock.read_text())['pid'] == killed.pid and list(cache.glob('*.tmp-*'))

        result = run_python(LOAD_ANSWER, cache, str(source), env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert (f'the build lock {lock} was left by process {killed.pid} on '
                f'{socket.gethostname()}, which is gone' in result.stderr)
        assert result.stdout.split()[-1] == '42'
        assert sorted(cache.iterdir()) == builds(cache)  # no lock, no temporary directory
    finally:
        # ninja runs the compiler in a process group of its own, which the kill above does not
        # reach: release the held compiler so that it does not wait for ever.
        (tmp_path / 'release').touch()


@pytest.mark.parametrize('offset_s', [0, -3600, 3600], ids=['now', 'old', 'future'])
def test_concurrent_process_waits_for_the_live_builder(answer, tmp_path, offset_s):
    """Whatever the lock's mtime says (a builder's clock skewed either way), a live builder
    is waited for, with a message, and its build left alone: a waiter that broke its lock
    deleted its private directory, and the builder failed."""
    source, cache = answer[0], tmp_path / 'cache'
    env = held_compiler(tmp_path)
    builder = subprocess.Popen([sys.executable, '-c', LOAD_ANSWER, str(source)], cwd=REPO_ROOT,
                               env=environment(cache, HOLD=str(tmp_path), **env),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until((tmp_path / 'compiling').exists, builder)
    lock, = cache.glob('*.lock')
    os.utime(lock, (time.time() + offset_s,) * 2)
    waiter_err = tmp_path / 'waiter.err'
    with waiter_err.open('w') as err:
        waiter = subprocess.Popen([sys.executable, '-c', LOAD_ANSWER, str(source)],
                                  cwd=REPO_ROOT, env=environment(cache, **env),
                                  stdout=subprocess.PIPE, stderr=err, text=True)
        wait_until(lambda: f'waiting for process {builder.pid} on {socket.gethostname()} to '
                   f'finish building (lock {lock})' in waiter_err.read_text(), waiter)
    (tmp_path / 'release').touch()
    built_out, built_err = builder.communicate(timeout=300)
    waited_out, _ = waiter.communicate(timeout=300)
    assert builder.returncode == 0 and waiter.returncode == 0, built_err + waiter_err.read_text()
    assert COMPILING in built_err and COMPILING not in waiter_err.read_text()
    assert waited_out == built_out


def test_prebuilt_cache_is_used_without_a_compiler(answer, tmp_path):
    """The compiler is recorded with a build, not part of its key: a complete cache (built at
    set-up, or shipped) loads where no compiler runs."""
    source, cache = answer[0], copy_cache(answer[1], tmp_path)
    build, = builds(cache)
    result = run_python(LOAD_ANSWER, cache, str(source), env={'CXX': 'false'})
    assert result.returncode == 0, result.stderr
    assert COMPILING not in result.stderr
    assert result.stdout.split() == [str(library_of(build)), '42']
    assert json.loads((build / 'build.json').read_text())['compiler'].startswith('c++: ')


def test_library_of_another_torch_is_rebuilt_not_loaded(answer, tmp_path):
    """A library built against another torch, put under this key with a consistent
    build.json: loading it aborts the process (here, a library that aborts when loaded stands
    for it). Its build.json says which torch it was built for: it is rebuilt instead."""
    source, cache = answer[0], copy_cache(answer[1], tmp_path)
    build, = builds(cache)
    library = library_of(build)
    aborting = tmp_path / 'aborting.cpp'
    aborting.write_text('#include <cstdlib>\n'
                        'static int abort_on_load = (std::abort(), 0);\n')
    subprocess.run(['c++', '-shared', '-fPIC', str(aborting), '-o', str(library)], check=True)
    manifest = json.loads((build / 'build.json').read_text())
    manifest['sha256'] = hashlib.sha256(library.read_bytes()).hexdigest()
    manifest['inputs']['torch'] = '1.13.1 (0123456789abcdef)'
    (build / 'build.json').write_text(json.dumps(manifest))
    result = run_python(LOAD_ANSWER, cache, str(source))
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "built for another torch (torch '1.13.1 (0123456789abcdef)'" in result.stderr
    assert COMPILING in result.stderr and result.stdout.split() == [str(library), '42']


def test_cache_path_that_ninja_cannot_spell(answer, tmp_path):
    """torch writes the build directory into build.ninja unescaped, where `$` starts a
    variable."""
    cache = tmp_path / 'price$5' / 'cache'
    result = run_python(LOAD_ANSWER, cache, str(answer[0]))
    assert result.returncode == 0, result.stderr
    assert COMPILING in result.stderr and result.stdout.split()[-1] == '42'
    assert sorted(cache.iterdir()) == builds(cache)  # no lock, no temporary directory


def test_failed_build_raises_and_leaves_nothing(tmp_path, monkeypatch):
    from dinat_backbone.ops.build import load_extension
    monkeypatch.setenv('DINAT_EXTENSIONS_DIR', str(tmp_path / 'cache'))
    source = tmp_path / 'broken.cpp'
    source.write_text('this is not C++\n')
    with pytest.raises(RuntimeError, match="Error building extension 'broken'"):
        load_extension('broken', [source])
    assert list((tmp_path / 'cache').iterdir()) == []


def test_sources_with_the_same_file_name_are_refused(tmp_path, monkeypatch):
    from dinat_backbone.ops.build import load_extension
    monkeypatch.setenv('DINAT_EXTENSIONS_DIR', str(tmp_path / 'cache'))
    sources = [tmp_path / name / 'answer.cpp' for name in 'ab']
    with pytest.raises(ValueError, match='file names must differ'):
        load_extension('answer', sources)
    assert not (tmp_path / 'cache').exists()
