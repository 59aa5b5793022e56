"""Convert a published DiNAT checkpoint (SHI-Labs original or Hugging Face) to our layout.

Not needed for training (``init_cfg=dict(type='Pretrained', checkpoint=...)`` reads both published
layouts directly); useful to inspect a checkpoint, to check it against an architecture, or to ship
one file that any mmengine loader reads.
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

import torch

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
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Convert ``args.src`` to ``args.dst``; returns the exit status."""
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import dinat_backbone
    from dinat_backbone.checkpoint import (check_variant, convert_to_backbone,
                                           convert_to_reference, infer_arch, read_checkpoint,
                                           variant_name)
    from dinat_backbone.models import DiNAT

    checkpoint = read_checkpoint(args.src)
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
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    dropped = len(meta['dropped'])
    print(f'{args.src} ({report.layout} layout, {meta["variant"] or "unlisted variant"}, '
          f'kernel {arch["kernel_size"]}) -> {args.dst}: {len(state_dict)} tensors, '
          f'{dropped} dropped, prefix {args.prefix or "none"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
