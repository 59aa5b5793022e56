"""Classify an image with a published (or any whole) DiNAT ImageNet checkpoint; print the top-k.

Example:
    python tools/classify.py cat.jpg --checkpoint dinat_mini.in1k
    python tools/classify.py cat.jpg --checkpoint path/to/dinat-mini-in1k-224/   # HF snapshot

The architecture and kernel size are read from the checkpoint (``--arch`` checks them).
Class names: ``--labels`` (one name per line, or a JSON ``id2label`` / Hugging Face
``config.json``), else the ``config.json`` of a Hugging Face snapshot next to the weights, else,
for a 1000-class head, the ImageNet-1k names shipped in
``dinat_backbone/apis/imagenet1k_labels.txt`` (WordNet lemmas in the standard class order, e.g.
index 281 is "tabby, tabby cat").

The model, transform and names come from :mod:`dinat_backbone.apis.classification`; the tool imports
the installed package (from a clone, ``pip install -e .`` first).
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

import torch

from dinat_backbone.apis.classification import (IMAGENET1K_LABELS, build_classifier, labels_beside,
                                                read_eval_image, read_labels)
from dinat_backbone.engine.cli import add_trust_checkpoint_flag, parse_dilations


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='image file')
    parser.add_argument('--checkpoint', required=True,
                        help='whole classifier checkpoint: path, URL, HF snapshot directory or '
                             'model-zoo name (e.g. dinat_mini.in1k)')
    parser.add_argument('--arch', default=None,
                        help='expected variant (mini, tiny, small, base, large); default: read '
                             'from the checkpoint')
    parser.add_argument('--dilations', default=None,
                        help="dilation preset name or a JSON list of per-block lists; default: "
                             "the zoo entry's, else 'imagenet'")
    parser.add_argument('--size', type=int, default=None,
                        help="input resolution; default: the zoo entry's, else 224")
    parser.add_argument('--crop-pct', type=float, default=0.875,
                        help='resize the short side to size / crop_pct, then centre-crop')
    parser.add_argument('--labels', default=None, help='class names file')
    parser.add_argument('--topk', type=int, default=5)
    add_trust_checkpoint_flag(parser)
    args = parser.parse_args(argv)
    # Input errors now, not after the (possibly downloaded) checkpoint is loaded.
    for option, value in (('--topk', args.topk), ('--size', args.size)):
        if value is not None and value < 1:
            parser.error(f'{option} must be >= 1, got {value}')
    if not 0 < args.crop_pct <= 1:
        parser.error(f'--crop-pct must be in (0, 1], got {args.crop_pct}')
    if args.labels is not None and not osp.isfile(args.labels):
        parser.error(f'labels file not found: {args.labels!r}')
    if not osp.isfile(args.image):
        parser.error(f'image file not found: {args.image!r}')
    from PIL import Image
    try:
        with Image.open(args.image) as image:
            image.verify()
    except (OSError, SyntaxError) as error:  # PIL's errors for unreadable or corrupt files
        parser.error(f'cannot read image {args.image!r}: {error}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Print the top-k classes of ``args.image``; returns the exit status."""
    args = parse_args(argv)
    from dinat_backbone.weights.safe_loading import CheckpointReadError
    try:
        model, zoo_size = build_classifier(args.checkpoint, args.arch,
                                           parse_dilations(args.dilations), args.trust_checkpoint)
    except CheckpointReadError as error:  # refused, damaged or truncated: one line
        raise SystemExit(f'error: {error}') from None
    size = args.size or zoo_size or 224
    labels_file = args.labels or labels_beside(args.checkpoint)
    if labels_file is None and model.num_classes == 1000:
        labels_file = IMAGENET1K_LABELS
    labels = read_labels(labels_file) if labels_file else {}
    with torch.no_grad():
        probs = model(read_eval_image(args.image, size, args.crop_pct)).softmax(-1)[0]
    scores, indices = probs.topk(min(args.topk, probs.numel()))
    for rank, (score, index) in enumerate(zip(scores.tolist(), indices.tolist()), 1):
        print(f'{rank}. {labels.get(index, f"class {index}")} (index {index}): {score:.4f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
