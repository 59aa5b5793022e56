"""Train an MMDetection 3.x or MMSegmentation 1.x model (DiNAT or any other) from a config.

The flags are those of mmdet's and mmseg's own ``tools/train.py``; the config's
``default_scope`` ('mmdet' or 'mmseg') decides which codebase's modules are registered.
On top of those tools, this one

* imports ``dinat_backbone`` first, so its registrations and its checkpoint loaders apply
  (``--resume``, ``load_from``: ``weights_only=True`` with an allow-list of what checkpoints
  hold; ``--trust-checkpoint`` unpickles fully, for a trusted file that needs more);
* stops early with a readable message for an unknown config, a dataset missing on disk
  (naming the expected layout) and ``--amp`` without a GPU;
* runs ``--launcher pytorch`` on machines without CUDA (gloo process group, DDP without
  ``device_ids``, SyncBN as BN), which mmengine 0.10.7 cannot do by itself;
* ends with one line when the work_dir is in use by another training or the disk is too full
  for the next checkpoint (CrashSafeCheckpointHook);
* prints where the checkpoints and logs went.

Examples::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--amp]
    bash tools/dist_train.sh CONFIG 8 [--resume]
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch

The set-up shared with ``tools/test.py`` lives in :mod:`dinat_backbone.engine.runner`, so both tools
behave alike. The tool imports the installed package: from a clone, run ``pip install -e .``
first (the ``import dinat_backbone`` below fails with ``ModuleNotFoundError`` otherwise).
"""
import argparse
import logging
import os.path as osp
from typing import Any, Optional, Sequence

from mmengine.config import Config

from dinat_backbone.engine.checkpoint_hook import InsufficientDiskSpaceError, WorkDirInUseError
from dinat_backbone.engine.runner import (add_common_args, build_runner, check_dataset_paths,
                                          load_config, loading_checkpoints, parse_with_local_rank,
                                          set_work_dir, setup_distributed)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of mmdet's/mmseg's ``tools/train.py`` (same flags and defaults)."""
    parser = argparse.ArgumentParser(
        description='Train an MMDetection 3.x or MMSegmentation 1.x model (default_scope '
        "of the config: 'mmdet' or 'mmseg').")
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the checkpoint PATH, or, without a value, from the latest '
        'checkpoint in the work directory (auto)')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training (needs a CUDA GPU)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the learning rate by the actual over the base batch size '
        '(config field `auto_scale_lr`)')
    add_common_args(parser)
    return parse_with_local_rank(parser, argv)


def _setup_amp(cfg: Config) -> None:
    from mmengine.device import get_device
    from mmengine.logging import print_log

    if get_device() in ('cpu', 'mps'):
        raise SystemExit(
            '--amp needs a CUDA (or NPU/MLU/MUSA) device: mmengine\'s AmpOptimWrapper runs '
            'float16 autocast with a gradient scaler, which it refuses on this machine '
            f'(device: {get_device()}). Train without --amp here.')
    optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_type == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
        return
    if optim_type != 'OptimWrapper':
        raise SystemExit(f'--amp works with optim_wrapper.type "OptimWrapper" (it becomes '
                         f'"AmpOptimWrapper"), but the config has {optim_type!r}.')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def _report(runner: Any) -> None:
    """Print where the checkpoints and logs are (main process only)."""
    from mmengine.dist import is_main_process
    from mmengine.hooks import CheckpointHook

    if not is_main_process():
        return
    lines = ['', 'Training finished.']
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook):
            ckpt_dir = getattr(hook, 'out_dir', None) or runner.work_dir
            lines.append(f'  checkpoints: {osp.abspath(ckpt_dir)}')
            if getattr(hook, 'last_ckpt', None):
                lines.append(f'  latest:      {hook.last_ckpt}')
            for key, path in (getattr(hook, 'best_ckpt_path_dict', None) or {}).items():
                if path:
                    lines.append(f'  best {key}: {path}')
            if getattr(hook, 'best_ckpt_path', None):
                lines.append(f'  best:        {hook.best_ckpt_path}')
    lines.append(f'  logs:        {osp.abspath(runner.log_dir)} '
                 f'({runner.timestamp}.log; scalars in vis_data/)')
    print('\n'.join(lines), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: parse ``argv``, check the inputs, build the Runner and train."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    set_work_dir(cfg, args.work_dir, args.config)
    if cfg.get('default_scope') == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()  # as mmdet's train.py

    if args.amp:
        _setup_amp(cfg)
    if args.auto_scale_lr:
        if 'enable' in cfg.get('auto_scale_lr', {}) and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise SystemExit('--auto-scale-lr needs `auto_scale_lr = dict(enable=False, '
                             'base_batch_size=N)` in the config (N = total batch size the '
                             'learning rate was tuned for).')

    # resume priority, as in mmdet: an explicit checkpoint > auto (latest in work_dir).
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise SystemExit(f'--resume: checkpoint file not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume

    loaders = ['train_dataloader']
    if cfg.get('val_cfg') and cfg.get('val_dataloader'):
        loaders.append('val_dataloader')  # validation would otherwise fail mid-training
    check_dataset_paths(cfg, loaders)
    setup_distributed(cfg, args.launcher)

    with loading_checkpoints(args.trust_checkpoint):
        runner = build_runner(cfg)
        try:
            runner.train()
        except (WorkDirInUseError, InsufficientDiskSpaceError) as error:
            raise SystemExit(f'error: {error}') from None
    _report(runner)


if __name__ == '__main__':
    main()
