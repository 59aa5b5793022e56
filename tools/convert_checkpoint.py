"""Convert a published DiNAT checkpoint (SHI-Labs original or Hugging Face) to our layout.

Not needed for training (``init_cfg=dict(type='Pretrained', checkpoint=...)`` reads both published
layouts directly); useful to inspect a checkpoint, to check it against an architecture, or to ship
one file that any mmengine loader reads.

The tool imports the installed package: from a clone, run ``pip install -e .`` first.
"""
import argparse
import importlib
import os
import os.path as osp
import sys
from typing import Any, List, Optional

from dinat_backbone.engine.checkpoint_hook import atomic_torch_save
from dinat_backbone.engine.cli import add_trust_checkpoint_flag, check_writable_file
from dinat_backbone.weights.pretrained import SNAPSHOT_FILES

DESCRIPTION = """\
Convert a DiNAT checkpoint to this project's layout and save it as
{'state_dict': ..., 'meta': {...}} (torch.save), readable by mmengine.

SRC may be a local .pth/.bin/.safetensors file, a Hugging Face snapshot directory, a URL, or a
model-zoo name such as dinat_tiny.in1k. The layout (original SHI-Labs, Hugging Face
DinatModel/DinatForImageClassification/DinatBackbone, or already converted) is detected.

Key naming (the choice made here): by default the keys are BARE backbone names
(patch_embed.*, levels.*, norm{i}.*), the ImageNet classifier (norm.*, head.*) is dropped, and
the file is meant for backbone initialisation:
    backbone=dict(type='DiNAT', init_cfg=dict(type='Pretrained', checkpoint=DST))
With --prefix backbone. every key is prefixed, so that the file can be given to a whole detector
or segmentor (load_from=DST, or mmengine's init_cfg with prefix='backbone.'); the backbone loader
strips the prefix again, so both forms also work as init_cfg checkpoints.
--keep-classifier keeps norm.*/head.* (reference names) for DiNATClassifier.

--task converts a whole COCO/ADE20K/Cityscapes model instead, for mmdet 3.x / mmseg 1.x (SRC
may be its model-zoo name, such as mask-rcnn_dinat-t_fpn_ms-crop-3x_coco or
mask2former_dinat_large_coco_panoptic):
  - a published mmdet 2.x / mmseg 0.x file: no key changes between those versions, meta becomes
    dataset_meta, the mmcv 1.x optimizer state is dropped (see dinat_backbone/weights/task.py);
  - a published detectron2 Mask2Former: the head's keys are renamed to mmdet's/mmseg's, the
    classifier rows reordered where the class orders differ, criterion.* and the optimizer
    state dropped (see dinat_backbone/weights/mask2former.py).
With --config, every key and shape is checked against that config's model (and a Mask2Former of
another task is refused). Loading such a file with load_from or tools/test.py does the same
conversion by itself; this is for shipping or inspecting one.
"""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint to convert (path, URL, directory or zoo name)')
    parser.add_argument('dst', help='output file (.pth)')
    parser.add_argument('--arch', default=None,
                        help='check that the checkpoint is this DiNAT variant (mini, tiny, small, '
                             'base, large) and fail naming both variants otherwise')
    parser.add_argument('--prefix', default='', choices=['', 'backbone.'],
                        help="prefix for every key: '' (default, bare backbone keys) or "
                             "'backbone.' (whole-model load_from)")
    parser.add_argument('--keep-classifier', action='store_true',
                        help='keep the ImageNet classifier as norm.*/head.* (for DiNATClassifier)')
    parser.add_argument('--task', action='store_true',
                        help='SRC is a whole detector/segmentor (e.g. a published mmdet 2.x / '
                             'mmseg 0.x or detectron2 Mask2Former model): convert it for '
                             'mmdet 3.x / mmseg 1.x')
    parser.add_argument('--config', default=None,
                        help='with --task: check every key and shape against this config\'s model')
    add_trust_checkpoint_flag(parser, 'SRC')
    args = parser.parse_args(argv)
    if args.task and (args.arch or args.prefix or args.keep_classifier):
        parser.error('--task converts a whole model: --arch, --prefix and --keep-classifier '
                     'apply to backbone checkpoints only')
    if args.config is not None and not args.task:
        parser.error('--config goes with --task')
    # the paths, before minutes of reading and converting
    if args.config is not None and not osp.isfile(args.config):
        parser.error(f'--config: no such file: {args.config!r}')
    if osp.isdir(args.src) and not any(osp.isfile(osp.join(args.src, name))
                                       for name in SNAPSHOT_FILES):
        parser.error(f'SRC: {args.src!r} is a directory without a checkpoint (a Hugging Face '
                     f'snapshot holds {" or ".join(SNAPSHOT_FILES)}); give a checkpoint file.')
    try:
        check_writable_file(args.dst, 'DST')
    except ValueError as error:
        parser.error(str(error))
    return args


def read_source(args: argparse.Namespace) -> Any:
    """SRC's content; a file that is refused or cannot be read ends the tool with one line."""
    from dinat_backbone.weights import read_checkpoint
    from dinat_backbone.weights.safe_loading import CheckpointReadError
    try:
        return read_checkpoint(args.src, args.trust_checkpoint)
    except CheckpointReadError as error:
        raise SystemExit(f'error: {error}') from None


def convert_task(args: argparse.Namespace) -> int:
    """``--task``: convert a whole-model checkpoint (and check it against ``--config``)."""
    import dinat_backbone
    from dinat_backbone.weights.task import (CONVERTED_LAYOUTS, check_task_state_dict,
                                             convert_task_checkpoint)

    state_dict, report = convert_task_checkpoint(read_source(args))
    report.source = args.src
    if args.config is not None:
        from mmengine.registry import DefaultScope

        from dinat_backbone.engine.runner import load_config  # registers the config's codebase
        cfg = load_config(args.config)
        registry = importlib.import_module(f'{cfg.default_scope}.registry').MODELS
        with DefaultScope.overwrite_default_scope(cfg.default_scope):
            check_task_state_dict(state_dict, registry.build(cfg.model), report)
    meta = report.meta
    if report.layout in CONVERTED_LAYOUTS:
        meta['converted_from']['by'] = (f'dinat_backbone {dinat_backbone.__version__} '
                                        'tools/convert_checkpoint.py --task')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    atomic_torch_save({'state_dict': state_dict, 'meta': meta}, args.dst)
    print(f'{report.summary()}\n-> {args.dst}: {len(state_dict)} tensors')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Convert ``args.src`` to ``args.dst``; returns the exit status."""
    args = parse_args(argv)
    if args.task:
        return convert_task(args)
    import dinat_backbone
    from dinat_backbone.weights import (check_variant, convert_to_backbone, convert_to_reference,
                                        infer_arch, variant_name)
    from dinat_backbone.models import DiNAT

    checkpoint = read_source(args)
    convert = convert_to_reference if args.keep_classifier else convert_to_backbone
    state_dict, report = convert(checkpoint)
    arch = infer_arch(state_dict)
    if args.arch is not None:
        if args.arch not in DiNAT.arch_zoo:
            raise SystemExit(f'--arch must be one of {sorted(DiNAT.arch_zoo)}, got {args.arch!r}')
        check_variant(state_dict, DiNAT.arch_zoo[args.arch], DiNAT.arch_zoo)
    meta = dict(
        converted_by=f'dinat_backbone {dinat_backbone.__version__} tools/convert_checkpoint.py',
        source=args.src,
        source_layout=report.layout,
        source_container=report.container,
        stripped_prefixes=report.stripped_prefixes,
        dropped=report.dropped_classifier + report.dropped_other,
        variant=variant_name(arch, DiNAT.arch_zoo),
        arch=arch,
        prefix=args.prefix,
        with_classifier=args.keep_classifier,
    )
    state_dict = {args.prefix + k: v.contiguous() for k, v in state_dict.items()}
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    atomic_torch_save({'state_dict': state_dict, 'meta': meta}, args.dst)
    dropped = len(meta['dropped'])
    print(f'{args.src} ({report.layout} layout, {meta["variant"] or "unlisted variant"}, '
          f'kernel {arch["kernel_size"]}) -> {args.dst}: {len(state_dict)} tensors, '
          f'{dropped} dropped, prefix {args.prefix or "none"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
