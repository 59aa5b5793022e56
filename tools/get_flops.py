"""FLOPs and parameters of an mmseg/mmdet config's model, DiNAT's attention counted exactly.

Example:
    python tools/get_flops.py configs/segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py
    python tools/get_flops.py configs/detection/mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py \\
        --shape 800 1280

One ``3 x H x W`` image (``--shape H W``, or one number for a square; default 512 2048 for
segmentation, 800 1280 for detection: the sizes of the published numbers) goes through the
model's data preprocessor and its ``mode='tensor'`` forward, as in mmseg's and mmdet's
``tools/analysis_tools/get_flops.py``, counted by mmengine's FlopAnalyzer with neighbourhood
attention as ``2 * B * heads * H * W * k * k * head_dim``
(:func:`dinat_backbone.analysis.flops.config_flop_analyzer`). One multiply-add counts as one
FLOP, as upstream. Parameters are those of the whole model (auxiliary heads included).
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

from mmengine.analysis import parameter_count
from mmengine.config import Config

import dinat_backbone  # noqa: F401  (registers DiNAT with mmseg and mmdet)
from dinat_backbone.analysis.flops import config_flop_analyzer

DEFAULT_SHAPES = {'mmseg': (512, 2048), 'mmdet': (800, 1280)}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmseg or mmdet config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None, metavar='H W',
                        help='input height and width (one number: square); default: 512 2048 '
                             '(mmseg), 800 1280 (mmdet)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config!r}')
    if args.shape is not None and (len(args.shape) > 2 or min(args.shape) < 1):
        parser.error(f'--shape takes H W (or one size), each >= 1, got {args.shape}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Print the config's input shape, GFLOPs (and the attention's part) and parameters."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope', 'mmseg')
    shape = DEFAULT_SHAPES.get(scope, DEFAULT_SHAPES['mmseg']) if args.shape is None \
        else (args.shape * 2)[:2]
    model, analyzer = config_flop_analyzer(cfg, shape)
    attention = analyzer.by_operator().get('na2d_counted', 0)
    print(f'Config: {args.config}')
    print(f'Input shape: (3, {shape[0]}, {shape[1]})')
    print(f'FLOPs: {analyzer.total() / 1e9:.4g} G (neighbourhood attention: '
          f'{attention / 1e9:.4g} G)')
    print(f'Parameters: {parameter_count(model)[""] / 1e6:.4g} M')
    return 0


if __name__ == '__main__':
    sys.exit(main())
