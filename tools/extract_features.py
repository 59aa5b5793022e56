"""Extract multi-scale DiNAT features of images, one file per image, for downstream heads.

CONFIG_OR_ARCH is an mmseg/mmdet config (its ``model.backbone`` DiNAT, and its
``model.data_preprocessor`` mean/std/bgr_to_rgb) or an arch name (mini, tiny, small, base,
large; ImageNet mean/std, RGB; ``--dilations``/``--kernel-size`` set the rest, the kernel size
defaults to the checkpoint's). ``--checkpoint`` is a backbone checkpoint (original SHI-Labs,
Hugging Face or ours; path, URL or model-zoo name such as dinat_mini.in1k) or a whole trained
mmseg/mmdet checkpoint, of which the ``backbone.*`` tensors are used.

Images: every file given, and every image (.jpg .jpeg .png .bmp .tif .tiff .webp) under a
directory given (recursively). They are read like mmseg/mmdet's LoadImageFromFile (OpenCV,
colour), normalised, and NOT resized or padded: features are computed at each image's own
size. A batch only holds images of one size (images are grouped by size), so a feature does
not depend on the other images of its batch (batch sizes agree to float32 rounding, ~1e-6).

Output format: OUT/<name>.pt per image, where <name> is the image's path relative to the
directory argument it was found under (or its file name, for a file argument) without the
extension, e.g. images/a/b.jpg given as ``images/`` -> OUT/a/b.pt. Each file is a
``torch.save`` of a dict, read with ``torch.load(path)``::

    {'features': [Tensor[C_i, H_i, W_i], ...],  # float32, one per --out-indices level
     'strides': [4, 8, 16, 32],                 # s_i; H_i = ceil(H / s_i), W_i = ceil(W / s_i)
     'image_size': (H, W),                      # of the image as read
     'source': 'images/a/b.jpg'}                # the image file

Errors: an --out that cannot be written and --out-indices out of order stop the tool at start
(exit status 2); a missing input path, an empty (0-byte) image file, two images mapping to the
same output name, and an unreadable image (naming it) stop it with exit status 1, all but the
last before the model is built.

Examples::

    python tools/extract_features.py mini --checkpoint dinat_mini.in1k --input photos/ --out feats/
    python tools/extract_features.py \\
        configs/segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py \\
        --checkpoint work_dirs/upernet/iter_160000.pth --input a.jpg b.png --out feats/ \\
        --batch-size 8 --device cuda --out-indices 2 3

The tool imports the installed package: from a clone, run ``pip install -e .`` first.
"""
import argparse
import sys
from typing import List, Optional, Sequence

from dinat_backbone.engine.cli import add_trust_checkpoint_flag, check_writable_dir, parse_dilations


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config_or_arch', help='mmseg/mmdet config file, or a DiNAT arch name')
    parser.add_argument('--checkpoint', default=None,
                        help='backbone or whole mmseg/mmdet checkpoint (path, URL or zoo name); '
                             "without it, a config's init_cfg applies, else random weights")
    parser.add_argument('--input', nargs='+', required=True, metavar='DIR_OR_FILE',
                        help='image files and/or directories (searched recursively)')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass, among images of one size (default: 1)')
    parser.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    parser.add_argument('--out-indices', type=int, nargs='+', default=None,
                        help="levels to save (default: the config's, or 0 1 2 3)")
    parser.add_argument('--dilations', default=None,
                        help='arch names only: dilation preset (imagenet, ade20k, coco, ...) or a '
                             'JSON list of per-block lists')
    parser.add_argument('--kernel-size', type=int, default=None,
                        help="arch names only (default: the checkpoint's, else 7)")
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    add_trust_checkpoint_flag(parser, "the checkpoint (or the config's init_cfg one)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    try:
        check_writable_dir(args.out, '--out')
        if args.out_indices is not None:
            from dinat_backbone.models.backbone import check_out_indices
            check_out_indices(args.out_indices)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Extract the features; returns the exit status."""
    args = parse_args(argv)
    from dinat_backbone.weights import CheckpointKeyError
    from dinat_backbone.apis.features import FeatureExtractor, collect_images

    dilations = parse_dilations(args.dilations)
    try:
        collect_images(args.input)  # input errors before the model is built
        extractor = FeatureExtractor.from_config(
            args.config_or_arch, args.checkpoint, args.out_indices, args.device,
            dilations=dilations, kernel_size=args.kernel_size, trusted=args.trust_checkpoint)
        written: List[str] = extractor.extract_to_dir(args.input, args.out, args.batch_size,
                                                      progress=not args.no_progress)
    except (FileNotFoundError, ValueError, CheckpointKeyError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(f'Wrote features of {len(written)} images to {args.out} (strides '
          f'{extractor.strides}, one .pt per image).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
