"""Checkpoint saves that a kill at any moment cannot corrupt or lose.

mmengine 0.10.7's ``CheckpointHook`` writes each checkpoint in place, so a kill during the write
leaves a truncated file. Three windows make that lose work:

* with ``save_best``, ``iter_N.pth`` is written again after a new best, while
  ``last_checkpoint`` already names it: ``--resume`` then fails (``PytorchStreamReader failed``);
* the previous best checkpoint is removed before the new best is written;
* ``max_keep_ckpts`` removes the oldest checkpoint before the new one is written (with
  ``max_keep_ckpts=1`` a kill leaves no checkpoint, and ``last_checkpoint`` names a removed
  file).

:class:`CrashSafeCheckpointHook` keeps mmengine's arguments, files and bookkeeping and changes
the order: every checkpoint and ``last_checkpoint`` are written by :func:`atomic_write`, and
checkpoints are removed only once their successor is complete and named. After a kill a path
is either its old complete file or its new complete one; what can remain is a hidden
``.<name>.<random>.part`` file (removed when training starts again in that directory) or one
checkpoint too many.

While it trains it also holds a lock on its directories (a second training there is refused
instead of deleting the first one's ``.part`` files), makes ``--resume`` pick the newest
complete checkpoint when ``last_checkpoint`` is missing or behind, and checks the free disk
space before each write.
"""
import glob
import io
import os
import os.path as osp
import re
import shutil
import socket
import time
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

__all__ = [
    'atomic_write', 'atomic_torch_save', 'AtomicLocalBackend', 'CrashSafeCheckpointHook',
    'InsufficientDiskSpaceError', 'WorkDirInUseError', 'free_disk_bytes', 'lock_directory'
]

ATOMIC_BACKEND = 'atomic_local'
# Partial file of `name`: '.{name}.{8 hex digits}.part', hidden and never '*.pth'.
PARTIAL_GLOB = '.*.' + '[0-9a-f]' * 8 + '.part'
# Held (flock) by the training that writes checkpoints in the directory; the kernel releases it
# when that process ends, however it ends, so a lock left by a dead run is never in the way.
LOCK_NAME = '.training.lock'


class InsufficientDiskSpaceError(OSError):
    """A file to write is larger than the free space of its file system (nothing was written)."""


class WorkDirInUseError(RuntimeError):
    """Another live process holds the training lock of a directory."""


def free_disk_bytes(directory: str) -> int:
    """Bytes this user may still write in ``directory``'s file system (the one place we ask)."""
    return shutil.disk_usage(directory).free


def _existing_ancestor(directory: str) -> str:
    """``directory`` or its nearest existing parent (where the free space can be asked)."""
    while not osp.isdir(directory):
        directory = osp.dirname(directory)
    return directory


def _mib(size: int) -> str:
    return f'{size / 2**20:.1f} MiB'


# The locks this process took, by directory. A training that raises never reaches after_train,
# and its runner, kept by the traceback, keeps the lock open; the process's next training
# there (a notebook's retry, a sweep) takes it over instead of being refused by itself.
_taken: Dict[str, IO[str]] = {}


def lock_directory(directory: str) -> IO[str]:
    """Take the training lock of ``directory``; keep the returned file open while training.

    Raises :class:`WorkDirInUseError`, naming the holder, if another live process holds it. A
    lock this process still holds from an earlier training is released and taken again.
    """
    import fcntl  # POSIX; the lock is skipped on Windows (see CrashSafeCheckpointHook)

    os.makedirs(directory, exist_ok=True)
    earlier = _taken.pop(osp.realpath(directory), None)
    if earlier is not None:
        earlier.close()  # flock: another open file of the same process would be refused
    lock = open(osp.join(directory, LOCK_NAME), 'a+')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or 'another process'
        lock.close()
        raise WorkDirInUseError(
            f'{directory} is in use by another training ({holder}): two trainings in one '
            'directory delete each other\'s checkpoint files. Wait for it to end, or train with '
            'another --work-dir.') from None
    lock.seek(0)
    lock.truncate()
    lock.write(f'pid {os.getpid()} on {socket.gethostname()}, '
               f'since {time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    lock.flush()
    _taken[osp.realpath(directory)] = lock
    return lock


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader, and no crash, ever sees it incomplete.

    The bytes go to a hidden temporary file in the same directory (one file system, so the
    rename is atomic), are flushed and fsynced, and the file is renamed over ``path``; the
    directory is fsynced too, so the rename itself survives a power cut.

    Raises :class:`InsufficientDiskSpaceError`, before anything is written, if ``data`` does not
    fit in the free space (the old file is kept until the new one is complete, so both must fit).
    """
    directory, name = osp.split(osp.abspath(path))
    existing = _existing_ancestor(directory)
    free = free_disk_bytes(existing)
    if len(data) > free:
        raise InsufficientDiskSpaceError(
            f'Not enough disk space to save {path}: it needs {_mib(len(data))} ({len(data)} '
            f'bytes) and {existing} has {_mib(free)} ({free} bytes) free. Nothing was written '
            'or removed.')
    os.makedirs(directory, exist_ok=True)
    partial = osp.join(directory, f'.{name}.{uuid.uuid4().hex[:8]}.part')
    try:
        with open(partial, 'xb') as f:  # 'x': never write into another writer's file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        if osp.exists(partial):
            os.remove(partial)
        raise
    if os.name == 'posix':  # directories cannot be opened for fsync on Windows
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write` (for the files our tools write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


@register_backend(ATOMIC_BACKEND, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` (used to save checkpoints) is atomic.

    Selected with ``backend_args=dict(backend='atomic_local')``; :class:`CrashSafeCheckpointHook`
    does that for local checkpoint directories.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(str(filepath), obj)


def _is_complete(path: str) -> bool:
    """A file whose zip end record is there (torch.save's format: a truncated one has none)."""
    return osp.isfile(path) and zipfile.is_zipfile(path)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in nested dicts and lists (an optimizer's state)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class _DeferredRemovals:
    """Forwards to a file backend but records ``remove``/``rmtree`` calls for later."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.pending: List[Tuple[Callable[[str], None], str]] = []

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def remove(self, path: str) -> None:
        self.pending.append((self.backend.remove, path))

    def rmtree(self, path: str) -> None:
        self.pending.append((self.backend.rmtree, path))


@HOOKS.register_module(force=True)
class CrashSafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` with saves that survive a kill at any moment.

    Same arguments, files and resume behaviour as ``CheckpointHook``; what differs:

    * in a local directory (unless ``backend_args`` or ``file_client_args`` choose a backend),
      checkpoints are written through :class:`AtomicLocalBackend`, and ``last_checkpoint`` with
      :func:`atomic_write`, so it only ever names a complete file;
    * the checkpoint rotated out by ``max_keep_ckpts`` and the previous best are removed after
      the new checkpoint and ``last_checkpoint`` are in place, not before;
    * partial files left by a killed run are removed when training starts;
    * while training, the main process holds the lock of the work and checkpoint directories
      (:func:`lock_directory`; POSIX only): a second training there stops at once (evaluations
      with ``tools/test.py`` do not take it; the same process's next training, after one that
      raised, takes it over);
    * ``--resume`` without a path takes the newest complete checkpoint of the directory (highest
      step of ``filename_tmpl``; ``best_*`` and ``.part`` files never) when ``last_checkpoint``
      is missing, names an incomplete file or an older step;
    * training starts with an estimate of a checkpoint's size and of the free space a save needs
      (a warning if there is less), and each write checks the free space first.

    Every config of this project uses it (``default_hooks.checkpoint`` in the base configs)::

        default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook', interval=4000))
    """

    _locks: Tuple[IO[str], ...] = ()

    def _local_checkpoint_dir(self, runner) -> Optional[str]:
        """Where the checkpoints go (as ``before_train`` computes it), if that is local."""
        if self.file_client_args is not None or not isinstance(
                get_file_backend(self.out_dir or runner.work_dir,
                                 backend_args=self.backend_args), LocalBackend):
            return None
        if self.out_dir is None or self.out_dir == runner.work_dir:
            return runner.work_dir
        return osp.join(self.out_dir, osp.basename(runner.work_dir.rstrip(osp.sep)))

    def before_run(self, runner) -> None:
        super().before_run(runner)
        checkpoint_dir = self._local_checkpoint_dir(runner)
        # Runner.train resumes after before_run: choose the checkpoint now (every rank alike).
        if runner._resume and runner._load_from is None and checkpoint_dir is not None:
            self._choose_resume_checkpoint(runner, checkpoint_dir)

    def after_train(self, runner) -> None:
        super().after_train(runner)
        for lock in self._locks:
            lock.close()
        self._locks = ()

    def _step_of(self, name: str) -> Optional[int]:
        """The step of a checkpoint file named by ``filename_tmpl`` (None for other names)."""
        parts = re.split(r'\{[^{}]*\}', self.filename_tmpl)
        match = len(parts) == 2 and not name.startswith(('best_', '.')) and re.fullmatch(
            re.escape(parts[0]) + r'(\d+)' + re.escape(parts[1]), name)
        return int(match.group(1)) if match else None

    def _choose_resume_checkpoint(self, runner, checkpoint_dir: str) -> None:
        """Resume from the newest complete checkpoint if ``last_checkpoint`` misses it.

        A kill during the first ``last_checkpoint`` write leaves none (mmengine then starts
        again from iteration 1, and later rotates the complete checkpoints out); a kill between
        a checkpoint's rename and ``last_checkpoint``'s leaves it one step behind.
        """
        steps = {}
        for name in os.listdir(checkpoint_dir):
            step = self._step_of(name)
            if step is not None and _is_complete(osp.join(checkpoint_dir, name)):
                steps[step] = osp.join(checkpoint_dir, name)
        record = osp.join(runner.work_dir, 'last_checkpoint')
        named = Path(record).read_text().strip() if osp.isfile(record) else None
        if named and _is_complete(named):
            named_step = self._step_of(osp.basename(named))
            if not steps or named_step is None or named_step >= max(steps):
                return  # mmengine's choice is the newest
            why = f'names {named}, older than the newest complete checkpoint'
        elif not steps:
            return  # nothing to resume from: mmengine's behaviour (a fresh start or its error)
        else:
            why = 'is missing' if named is None else f'names {named}, which is incomplete or gone'
        runner._load_from = steps[max(steps)]
        runner.logger.warning(f'Auto resume: {record} {why}; resuming from the newest complete '
                              f'checkpoint {runner._load_from}.')

    def before_train(self, runner) -> None:
        # Training only (test.py and val runs may share the work_dir), before any file changes.
        checkpoint_dir = self._local_checkpoint_dir(runner)
        if is_main_process() and os.name == 'posix':
            self._locks = tuple(lock_directory(d) for d in sorted({runner.work_dir,
                                                                   checkpoint_dir} - {None}))
        out_dir = self.out_dir or runner.work_dir
        if (self.backend_args is None and self.file_client_args is None
                and isinstance(get_file_backend(out_dir), LocalBackend)):
            # Object stores replace a key atomically already; a local file needs the rename.
            self.backend_args = dict(backend=ATOMIC_BACKEND)
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            for directory in {self.out_dir, runner.work_dir}:
                for partial in glob.glob(osp.join(directory, PARTIAL_GLOB)):
                    runner.logger.info(f'Removing {partial}, left by an interrupted save.')
                    os.remove(partial)
            self._report_disk_space(runner)

    def _report_disk_space(self, runner) -> None:
        """Log a checkpoint's estimated size and the free space a save needs (warn if short).

        A save writes the new file beside the one it replaces or rotates out; with
        ``save_best`` a new best (weights only) is also written beside the previous best.
        """
        weights = _tensor_bytes(runner.model.state_dict())
        optimizer = _tensor_bytes(runner.optim_wrapper.state_dict())
        # A fresh optimizer has no state yet: assume AdamW's two moments per weight (our configs)
        size = weights + (optimizer if optimizer else 2 * weights)
        need = size + (weights if self.save_best is not None else 0)
        free = free_disk_bytes(_existing_ancestor(self.out_dir))
        message = (f'Checkpoints of this run are about {_mib(size)} (weights {_mib(weights)}); '
                   f'a save needs {_mib(need)} free beyond the checkpoints kept, and '
                   f'{self.out_dir} has {_mib(free)} free.')
        if free < need:
            runner.logger.warning(message + ' Saving will fail: free space there.')
        else:
            runner.logger.info(message)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        # Rewritten rather than extended: mmengine's version removes the checkpoint rotated out
        # before writing the new one and writes last_checkpoint in place. Same bookkeeping
        # (keep_ckpt_ids, last_ckpt in the message hub), safe order.
        rotated_out = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                rotated_out = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)

        if not is_main_process():  # only the main process writes files
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt.encode())
        if rotated_out is not None:
            path = self.file_backend.join_path(self.out_dir,
                                               self.filename_tmpl.format(rotated_out))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed saves directories
                self.file_backend.rmtree(path)

    def _save_best_checkpoint(self, runner, metrics: dict) -> None:
        # mmengine's version removes the previous best before writing the new one: run it with
        # removals recorded, and carry them out once the new best, and the latest checkpoint
        # that names it, are complete (an exception skips them).
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        in_use = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                  *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for remove, path in deferred.pending:
            if path not in in_use:  # a best re-saved under the same name stays
                remove(path)
