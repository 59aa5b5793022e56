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
"""
import glob
import io
import os
import os.path as osp
import uuid
from pathlib import Path
from typing import Any, Callable, List, Tuple, Union

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

__all__ = ['atomic_write', 'atomic_torch_save', 'AtomicLocalBackend', 'CrashSafeCheckpointHook']

ATOMIC_BACKEND = 'atomic_local'
# Partial file of `name`: '.{name}.{8 hex digits}.part', hidden and never '*.pth'.
PARTIAL_GLOB = '.*.' + '[0-9a-f]' * 8 + '.part'


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader, and no crash, ever sees it incomplete.

    The bytes go to a hidden temporary file in the same directory (one file system, so the
    rename is atomic), are flushed and fsynced, and the file is renamed over ``path``; the
    directory is fsynced too, so the rename itself survives a power cut.
    """
    directory, name = osp.split(osp.abspath(path))
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
    * partial files left by a killed run are removed when training starts.

    Every config of this project uses it (``default_hooks.checkpoint`` in the base configs)::

        default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook', interval=4000))
    """

    def before_train(self, runner) -> None:
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
