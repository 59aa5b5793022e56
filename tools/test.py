"""Test (and evaluate) an MMDetection 3.x or MMSegmentation 1.x model from a config.

The flags are those of mmdet's and mmseg's own ``tools/test.py``; the config's
``default_scope`` ('mmdet' or 'mmseg') picks the codebase. ``checkpoint`` is a local file or
a URL (http(s)://, open-mmlab://, ...), loaded through mmengine with ``dinat_backbone``'s
safe loaders (``--trust-checkpoint`` for a trusted file that needs full unpickling). Like
``tools/train.py``, it checks the config, checkpoint and test dataset before building the
Runner and runs ``--launcher pytorch`` without CUDA (:mod:`dinat_backbone.engine.runner`, shared
with ``tools/train.py``; from a clone, ``pip install -e .`` first).

``--out``: mmdet dumps the raw predictions to a ``.pkl`` file (for offline evaluation);
mmseg writes the predicted label maps as PNG files into that directory.

Examples::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--show-dir DIR]
    bash tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os.path as osp
import warnings
from copy import deepcopy
from typing import Any, Optional, Sequence

from mmengine.config import Config, ConfigDict

from dinat_backbone.engine.runner import (add_common_args, build_runner, check_dataset_paths,
                                          load_config, loading_checkpoints, parse_with_local_rank,
                                          set_work_dir, setup_distributed)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of mmdet's/mmseg's ``tools/test.py`` (same flags and defaults)."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) an MMDetection 3.x or MMSegmentation 1.x model.')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument(
        '--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out', type=str,
        help='mmdet: dump predictions to a .pkl file for offline evaluation; mmseg: '
        'directory to save the predicted label maps (PNG) for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved (mmdet: relative to '
        'work_dir/timestamp)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test time augmentation')
    add_common_args(parser)
    return parse_with_local_rank(parser, argv)


def _trigger_visualization(cfg: Config, args: argparse.Namespace, scope: str) -> None:
    hooks = cfg.get('default_hooks') or {}
    if 'visualization' not in hooks:
        raise SystemExit('--show/--show-dir need a visualization hook in default_hooks, e.g. '
                         "visualization=dict(type='DetVisualizationHook') (mmdet) or "
                         "dict(type='SegVisualizationHook') (mmseg).")
    hook = hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmdet':
            hook['test_out_dir'] = args.show_dir  # DetVisualizationHook: under work_dir/ts
        else:
            # mmseg: images go to <show_dir>/vis_data/vis_image. Its hook paints every 50th
            # image by default; paint all unless the config chose an interval.
            cfg.visualizer['save_dir'] = args.show_dir
            hook.setdefault('interval', 1)


def _setup_tta(cfg: Config, scope: str) -> None:
    if scope == 'mmseg':
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit('--tta needs `tta_model` and `tta_pipeline` in the config (mmseg '
                             'base configs: default_runtime.py and datasets/*.py define them).')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
        return
    # mmdet: flip TTA by default, as mmdet's tools/test.py
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, we will set it as default.')
        cfg.tta_model = dict(type='DetTTAModel',
                             tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                          max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, we will set it as default.')
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [dict(type='PackDetInputs',
                              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                         'scale_factor', 'flip', 'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _report(runner: Any, args: argparse.Namespace, scope: str) -> None:
    from mmengine.dist import is_main_process

    if not is_main_process():
        return
    lines = ['', f'Testing finished. Metrics and log: {osp.abspath(runner.log_dir)} '
             f'({runner.timestamp}.json, {runner.timestamp}.log)']
    if args.out:
        lines.append(f'  predictions: {osp.abspath(args.out)}')
    if args.show_dir:
        where = (osp.join(runner.log_dir, args.show_dir) if scope == 'mmdet' else
                 osp.join(args.show_dir, 'vis_data', 'vis_image'))
        lines.append(f'  painted images: {osp.abspath(where)}')
    print('\n'.join(lines), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Entry point: parse ``argv``, check the inputs, build the Runner and test.

    Returns the metrics dict of ``Runner.test``.
    """
    args = parse_args(argv)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint file not found: {args.checkpoint!r} (give a local file '
                         'or a URL such as https://...).')
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    # Converts the published mmdet 2.x / mmseg 0.x and detectron2 Mask2Former models at load
    # time; checks every key.
    from dinat_backbone.weights.task import add_task_checkpoint_hook
    add_task_checkpoint_hook(cfg)
    scope = cfg.default_scope
    set_work_dir(cfg, args.work_dir, args.config)
    if scope == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        _trigger_visualization(cfg, args, scope)
    if args.tta:
        _setup_tta(cfg, scope)
    if args.out is not None and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    if args.out is not None and scope == 'mmdet' and \
            not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'--out must name a .pkl/.pickle file for mmdet, got {args.out!r}.')

    check_dataset_paths(cfg, ['test_dataloader'])
    setup_distributed(cfg, args.launcher)

    with loading_checkpoints(args.trust_checkpoint):
        runner = build_runner(cfg)
        if args.out is not None and scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        metrics = runner.test()
    _report(runner, args, scope)
    return metrics


if __name__ == '__main__':
    main()
