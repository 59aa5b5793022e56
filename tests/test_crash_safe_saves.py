"""Checkpoint saves survive a SIGKILL in the middle of any write (CrashSafeCheckpointHook).

A tiny UPerNet-DiNAT run through ``tools/train.py`` (the demo model; a checkpoint and a
validation at every iteration, ``save_best``, ``max_keep_ckpts=1``) is killed halfway through one
file write: a test-only module imported by the config wraps ``open`` so that the chosen write
puts half its bytes on disk and then SIGKILLs its own process (what a kill from outside during
a slow write does, made deterministic). The validation score is the iteration, so every
validation is a new best. mmengine writes, at iteration N:

    iter_N.pth (rotating iter_{N-1}.pth out), best_score_iter_N.pth (replacing the previous
    best), iter_N.pth again (now naming the new best; last_checkpoint already names it)

The kill points, each followed by ``--resume`` (which goes on to the next kill): ``new_best``
= best_score_iter_2.pth, ``rotation`` = the first write of iter_3.pth, ``resave`` = the second.
With our hook every ``.pth`` file stays complete, ``last_checkpoint`` names one, the best it
records exists, and the last ``--resume`` finishes the run. The same kills against mmengine's
``CheckpointHook``, in fresh runs started together, show the bug guarded against.
"""
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from dinat_backbone.engine import checkpoint_hook
from dinat_backbone.engine.checkpoint_hook import (InsufficientDiskSpaceError, atomic_torch_save,
                                                   atomic_write)
from dinat_backbone.weights.safe_loading import CheckpointReadError, load_checkpoint_file

from helpers import REPO_ROOT, assert_ok, run_script, script_command

# Imported by the test config (custom_imports) in each training process.
SUPPORT_MODULE = '''\
"""Test support: a validation score that grows with training, and a kill inside a write."""
import builtins
import os
import signal

from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub
from mmengine.registry import METRICS


@METRICS.register_module()
class IterationScore(BaseMetric):
    """Scores a validation by the training iteration it follows: each one is a new best."""

    def process(self, data_batch, data_samples):
        self.results.append(None)

    def compute_metrics(self, results):
        # (no iteration in a tools/test.py run: score 1)
        return dict(score=float((MessageHub.get_current_instance().get_info('iter') or 0) + 1))


class _KillHalfway:
    """A file whose first write stores half the bytes, then SIGKILLs this process (or SIGSTOPs
    it, and writes the rest once continued)."""

    def __init__(self, file, sig):
        self._file, self._signal = file, sig

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self._file.__exit__(*exc_info)

    def write(self, data):
        self._file.write(data[:len(data) // 2])
        self._file.flush()
        os.kill(os.getpid(), self._signal)
        return self._file.write(data[len(data) // 2:])


# KILL_DURING_WRITE=NAME:N[:STOP] kills (stops) during the N-th binary write of NAME, or of a
# hidden temporary file named after it ('.NAME...').
if os.environ.get('KILL_DURING_WRITE'):
    _name, _nth, *_stop = os.environ['KILL_DURING_WRITE'].split(':')
    _signal = signal.SIGSTOP if _stop == ['STOP'] else signal.SIGKILL
    _writes = []
    _open = builtins.open

    def _open_killing(file, mode='r', *args, **kwargs):
        f = _open(file, mode, *args, **kwargs)
        if 'b' in mode and ('w' in mode or 'x' in mode) and \\
                os.path.basename(str(file)).lstrip('.').startswith(_name):
            _writes.append(file)
            if len(_writes) == int(_nth):
                return _KillHalfway(f, _signal)
        return f

    builtins.open = _open_killing

# FREE_DISK_BYTES=N: the free-space query of the checkpoint hook reports N bytes (a full disk).
if os.environ.get('FREE_DISK_BYTES'):
    from dinat_backbone.engine import checkpoint_hook
    checkpoint_hook.free_disk_bytes = lambda directory: int(os.environ['FREE_DISK_BYTES'])
'''

CONFIG = '''\
_base_ = [{tiny_seg_config!r}]
custom_imports = dict(imports=['dinat_backbone', 'save_kill_support'],
                      allow_failed_imports=False)
val_dataloader = dict(dataset=dict(indices=1))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='IterationScore')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=4, val_interval=1)
default_hooks = dict(checkpoint=dict(
    type={hook!r}, interval=1, max_keep_ckpts=1, save_best='score', rule='greater'))
'''


def is_complete(path: Path) -> bool:
    """A complete torch checkpoint: a zip archive whose members all pass their CRC check."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return archive.testzip() is None


def latest(work_dir: Path) -> Path:
    return Path((work_dir / 'last_checkpoint').read_text().strip())


def recorded_best(checkpoint: Path) -> Path:
    """The best checkpoint that a checkpoint's message hub records (what resume restores)."""
    hub = load_checkpoint_file(str(checkpoint), map_location='cpu')['message_hub']
    return Path(hub['runtime_info']['best_ckpt'])


def partial_files(work_dir: Path):
    return sorted(p.name for p in work_dir.glob('.*.part'))


@pytest.fixture(scope='module')
def support_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('save_kill_support')
    (path / 'save_kill_support.py').write_text(SUPPORT_MODULE)
    return path


@pytest.fixture
def make_config(tiny_seg_config, tmp_path):
    def make(hook: str) -> str:
        path = tmp_path / f'{hook}.py'
        path.write_text(CONFIG.format(tiny_seg_config=tiny_seg_config, hook=hook))
        return str(path)
    return make


def train_env(support_dir: Path, **env: str) -> Dict[str, str]:
    """The environment of a training that imports the support module (``env`` added)."""
    return dict(PYTHONPATH=os.pathsep.join([str(support_dir), str(REPO_ROOT)]), **env)


def train(config: str, work_dir: Path, support_dir: Path, kill_during: Optional[str] = None,
          resume: bool = False, expect_ok: bool = True) -> str:
    """Run tools/train.py, killed during the write ``kill_during`` ('NAME:N') if given; the log.
    """
    env = train_env(support_dir, **({'KILL_DURING_WRITE': kill_during} if kill_during else {}))
    result = run_script('train.py', [config, '--work-dir', str(work_dir)] +
                        (['--resume'] if resume else []), env=env)
    if not expect_ok:
        assert result.returncode == 1, f'exit {result.returncode}:\n{result.stderr[-3000:]}'
    elif kill_during:
        assert result.returncode == -signal.SIGKILL, (
            f'not killed during {kill_during} (exit {result.returncode}):\n'
            f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    else:
        assert_ok(result)
    return result.stdout + result.stderr


# (kill point, write killed, latest complete checkpoint after the kill)
KILL_SEQUENCE = [
    ('new_best', 'best_score_iter_2.pth:1', 'iter_2.pth'),
    ('rotation', 'iter_3.pth:1', 'iter_2.pth'),
    ('resave', 'iter_3.pth:2', 'iter_3.pth'),
]


@pytest.mark.slow
def test_kill_at_each_point_of_a_save_then_resume(make_config, support_dir, tmp_path):
    config, work_dir = make_config('CrashSafeCheckpointHook'), tmp_path / 'work'
    resume_from = None
    for point, kill_during, expected_latest in KILL_SEQUENCE:
        log = train(config, work_dir, support_dir, kill_during, resume=resume_from is not None)
        if resume_from is not None:
            assert f'Auto resumed from the latest checkpoint {work_dir / resume_from}.' in log
            assert 'left by an interrupted save' in log  # the previous kill's partial file
        # the kill landed in the write: half the new file is on disk, under a temporary name
        [partial] = partial_files(work_dir)
        assert partial.startswith('.' + kill_during.split(':')[0] + '.'), point
        # last_checkpoint names a complete file, and the best it records exists
        assert latest(work_dir) == work_dir / expected_latest, point
        assert is_complete(work_dir / expected_latest), point
        assert is_complete(recorded_best(work_dir / expected_latest)), point
        assert all(is_complete(p) for p in work_dir.glob('*.pth')), point
        resume_from = expected_latest
    assert (work_dir / 'best_score_iter_1.pth').is_file()  # never removed before its successor

    log = train(config, work_dir, support_dir, resume=True)
    assert f'Auto resumed from the latest checkpoint {work_dir / resume_from}.' in log
    assert not partial_files(work_dir)
    assert latest(work_dir) == work_dir / 'iter_4.pth' and is_complete(work_dir / 'iter_4.pth')
    assert recorded_best(work_dir / 'iter_4.pth') == work_dir / 'best_score_iter_4.pth'
    assert all(is_complete(p) for p in work_dir.glob('*.pth'))


# The same kill points in fresh runs (kill point, write killed)
CONTROL_KILLS = [
    ('new_best', 'best_score_iter_2.pth:1'),
    ('rotation', 'iter_2.pth:1'),
    ('resave', 'iter_1.pth:2'),
]


@pytest.mark.slow
def test_control_mmengine_hook_loses_checkpoints(make_config, support_dir, tmp_path):
    """The same kills with mmengine's own CheckpointHook: what the hook above prevents."""
    config = make_config('CheckpointHook')
    with ThreadPoolExecutor(len(CONTROL_KILLS)) as pool:  # independent runs: start together
        list(pool.map(lambda kill: train(config, tmp_path / kill[0], support_dir, kill[1]),
                      CONTROL_KILLS))
    # new best: the previous best, still recorded by the latest checkpoint, is already removed
    work_dir = tmp_path / 'new_best'
    assert latest(work_dir) == work_dir / 'iter_2.pth'
    assert recorded_best(work_dir / 'iter_2.pth') == work_dir / 'best_score_iter_1.pth'
    assert not (work_dir / 'best_score_iter_1.pth').exists()
    assert not is_complete(work_dir / 'best_score_iter_2.pth')
    # rotation: iter_1.pth is removed before iter_2.pth is written, and last_checkpoint names it
    work_dir = tmp_path / 'rotation'
    assert latest(work_dir) == work_dir / 'iter_1.pth' and not latest(work_dir).exists()
    assert not any(is_complete(p) for p in work_dir.glob('iter_*.pth'))
    # re-save after a new best: iter_1.pth is truncated in place while last_checkpoint names it
    work_dir = tmp_path / 'resave'
    assert latest(work_dir) == work_dir / 'iter_1.pth' and not is_complete(latest(work_dir))
    with pytest.raises(CheckpointReadError, match='PytorchStreamReader failed'):  # at resume
        load_checkpoint_file(str(latest(work_dir)), map_location='cpu')


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / 'iter_1.pth'
    atomic_write(str(target), b'old')
    with pytest.raises(TypeError):
        atomic_write(str(target), 'not bytes')  # fails inside the write
    assert target.read_bytes() == b'old' and sorted(p.name for p in tmp_path.iterdir()) == [
        'iter_1.pth']
    atomic_write(str(target), b'new')
    assert target.read_bytes() == b'new'


def test_atomic_torch_save_writes_a_loadable_file_or_nothing(tmp_path):
    """What convert_checkpoint.py and extract_features.py write goes through it."""
    target = tmp_path / 'converted.pth'
    atomic_torch_save({'state_dict': {'w': torch.arange(3.)}}, str(target))
    assert torch.equal(load_checkpoint_file(str(target))['state_dict']['w'], torch.arange(3.))
    with pytest.raises(Exception):
        atomic_torch_save({'bad': lambda: None}, str(target))  # cannot be pickled
    assert torch.equal(load_checkpoint_file(str(target))['state_dict']['w'], torch.arange(3.))
    assert [p.name for p in tmp_path.iterdir()] == ['converted.pth']


def resumed_iter(log: str) -> int:
    """The iteration a resumed run starts from (mmengine's 'resumed epoch: E, iter: I')."""
    return int(re.search(r'resumed epoch: \d+, iter: (\d+)', log).group(1))


@pytest.mark.slow
def test_resume_finds_the_newest_complete_checkpoint(make_config, support_dir, tmp_path):
    """Killed during the first last_checkpoint write (iter_1.pth complete), --resume continues
    from iter_1.pth, not from scratch; with last_checkpoint naming a removed file beside a
    truncated newer checkpoint, a best_* and a .part, it takes the newest complete iter_N.pth."""
    config, work_dir = make_config('CrashSafeCheckpointHook'), tmp_path / 'work'
    train(config, work_dir, support_dir, 'last_checkpoint:1')
    assert not (work_dir / 'last_checkpoint').exists() and is_complete(work_dir / 'iter_1.pth')
    log = train(config, work_dir, support_dir, resume=True)
    assert 'latest checkpoint None' not in log
    assert ('last_checkpoint is missing; resuming from the newest complete checkpoint '
            f'{work_dir / "iter_1.pth"}.') in log and resumed_iter(log) == 1
    assert latest(work_dir) == work_dir / 'iter_4.pth'
    # best_*: mmengine's content, the weights without optimizer or scheduler state
    best = load_checkpoint_file(str(work_dir / 'best_score_iter_4.pth'), map_location='cpu')
    assert 'state_dict' in best and not {'optimizer', 'param_schedulers'} & set(best)

    # the start-up estimate of a checkpoint's size is within 20% of the real size
    estimate = float(re.search(r'Checkpoints of this run are about ([\d.]+) MiB', log).group(1))
    assert abs(estimate * 2**20 / (work_dir / 'iter_4.pth').stat().st_size - 1) < 0.2

    complete = (work_dir / 'iter_4.pth').read_bytes()
    (work_dir / 'iter_9.pth').write_bytes(complete[:len(complete) // 2])  # killed mmengine save
    (work_dir / 'best_score_iter_99.pth').write_bytes(complete)
    (work_dir / '.iter_7.pth.0123abcd.part').write_bytes(complete)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_2.pth'))  # removed since
    log = train(config, work_dir, support_dir, resume=True)
    assert (f'names {work_dir / "iter_2.pth"}, which is incomplete or gone; resuming from the '
            f'newest complete checkpoint {work_dir / "iter_4.pth"}.') in log
    assert resumed_iter(log) == 4


def wait_until_stopped(process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for ``process`` to stop itself (SIGSTOP); fail if it ends or takes too long."""
    deadline = time.monotonic() + timeout
    while Path(f'/proc/{process.pid}/stat').read_text().split(') ')[1][0] != 'T':
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, 'the training never reached the paused write'
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='reads /proc (Linux)')
def test_a_second_training_in_the_work_dir_is_refused(make_config, support_dir, tmp_path):
    """A training paused in the middle of writing iter_2.pth holds the work_dir: a second one
    there exits at once naming it and leaves its .part alone (tools/test.py there runs); the
    first then finishes."""
    config, work_dir = make_config('CrashSafeCheckpointHook'), tmp_path / 'work'
    first = subprocess.Popen(
        **script_command('train.py', [config, '--work-dir', str(work_dir)],
                         train_env(support_dir, KILL_DURING_WRITE='iter_2.pth:1:STOP')),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(first)
        [partial] = partial_files(work_dir)
        log = train(config, work_dir, support_dir, expect_ok=False)
        assert f'is in use by another training (pid {first.pid} on ' in log
        assert partial_files(work_dir) == [partial]
        # an evaluation in the work_dir meanwhile is no training: it runs
        assert_ok(run_script('test.py', [config, str(work_dir / 'iter_1.pth'),
                                         '--work-dir', str(work_dir)], env=train_env(support_dir)))
        assert partial_files(work_dir) == [partial]
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.communicate()[1][-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert latest(work_dir) == work_dir / 'iter_4.pth'
    assert all(is_complete(p) for p in work_dir.glob('*.pth')) and not partial_files(work_dir)
    # the lock of the finished (or a killed) run is no obstacle
    log = train(config, work_dir, support_dir, resume=True)
    assert resumed_iter(log) == 4


TAKE_LOCK = """
import sys
from dinat_backbone.engine.checkpoint_hook import WorkDirInUseError, lock_directory
try:
    lock_directory(sys.argv[1])
except WorkDirInUseError as error:
    print(error)
"""


@pytest.mark.skipif(os.name != 'posix', reason='the lock is POSIX only')
def test_a_process_takes_over_the_lock_of_its_own_earlier_training(tmp_path):
    """A training that raised keeps its lock open (its runner lives on in the traceback): the
    same process's next training there takes it over; another process is still refused."""
    earlier = checkpoint_hook.lock_directory(str(tmp_path))  # never released
    lock = checkpoint_hook.lock_directory(str(tmp_path))
    try:
        assert earlier.closed and not lock.closed
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run([sys.executable, '-c', TAKE_LOCK, str(tmp_path)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f'is in use by another training (pid {os.getpid()} on ' in result.stdout
    finally:
        lock.close()


@pytest.mark.slow
def test_full_disk_fails_before_writing_with_the_numbers(make_config, support_dir, tmp_path):
    """The free-space query reports 1 MiB: training warns at start with its estimate, and the
    first save stops it with one line giving both sizes, before any file is written."""
    config, work_dir = make_config('CrashSafeCheckpointHook'), tmp_path / 'work'
    result = run_script('train.py', [config, '--work-dir', str(work_dir)],
                        env=train_env(support_dir, FREE_DISK_BYTES=str(2**20)))
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Saving will fail: free space there.' in result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf'error: Not enough disk space to save {re.escape(str(work_dir / "iter_1.pth"))}: it '
        rf'needs [\d.]+ MiB \(\d+ bytes\) and {re.escape(str(work_dir))} has 1.0 MiB '
        r'\(1048576 bytes\) free. Nothing was written or removed.', error), error
    assert not list(work_dir.glob('*.pth')) and not partial_files(work_dir)


def test_atomic_write_checks_the_free_space_first(tmp_path, monkeypatch):
    target = tmp_path / 'iter_1.pth'
    atomic_write(str(target), b'old')
    monkeypatch.setattr(checkpoint_hook, 'free_disk_bytes', lambda directory: 5)
    with pytest.raises(InsufficientDiskSpaceError, match=r'needs 0.0 MiB \(6 bytes\) and .* '
                       r'has 0.0 MiB \(5 bytes\) free'):
        atomic_write(str(target), b'newest')
    atomic_write(str(target), b'new')  # what fits is written
    assert target.read_bytes() == b'new' and [p.name for p in tmp_path.iterdir()] == [
        'iter_1.pth']
