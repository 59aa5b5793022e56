"""Classify an image with a published (or any whole) DiNAT ImageNet checkpoint; print the top-k.

Example:
    python tools/classify.py cat.jpg --checkpoint dinat_mini.in1k
    python tools/classify.py cat.jpg --checkpoint path/to/dinat-mini-in1k-224/   # HF snapshot

The architecture and kernel size are read from the checkpoint (``--arch`` checks them).
Class names: ``--labels`` (one name per line, or a JSON ``id2label`` / Hugging Face
``config.json``), else the ``config.json`` of a Hugging Face snapshot next to the weights, else,
for a 1000-class head, the ImageNet-1k names shipped in ``dinat_backbone/imagenet1k_labels.txt``
(WordNet lemmas in the standard class order, e.g. index 281 is "tabby, tabby cat").
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET1K_LABELS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'dinat_backbone',
                             'imagenet1k_labels.txt')
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint fully, which runs any code it contains; '
                             'only for a file from a source you trust (default: torch.load('
                             'weights_only=True) with an allow-list)')
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


def preprocess(path: str, size: int, crop_pct: float = 0.875) -> torch.Tensor:
    """ImageNet evaluation transform: bicubic resize of the short side to ``size / crop_pct``,
    centre crop ``size``, normalise; returns ``[1, 3, size, size]``."""
    from PIL import Image
    image = Image.open(path).convert('RGB')
    scale = int(size / crop_pct) / min(image.size)
    width, height = (max(size, round(d * scale)) for d in image.size)
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = x.view(size, size, 3).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def read_labels(path: str) -> Dict[int, str]:
    """Class names from a text file (one per line) or JSON (``id2label`` or a list)."""
    with open(path) as f:
        text = f.read()
    if path.endswith('.json'):
        data = json.loads(text)
        data = data.get('id2label', data) if isinstance(data, dict) else data
        if isinstance(data, list):
            return dict(enumerate(data))
        return {int(k): v for k, v in data.items()}
    return dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))


def _labels_beside(checkpoint: str) -> Optional[str]:
    folder = checkpoint if osp.isdir(checkpoint) else osp.dirname(checkpoint)
    candidate = osp.join(folder, 'config.json')
    if osp.isfile(candidate):
        with open(candidate) as f:
            if 'id2label' in json.load(f):
                return candidate
    return None


def _dilations(value: Optional[str]) -> Union[str, Sequence[Sequence[int]], None]:
    if value is None or not value.lstrip().startswith('['):
        return value
    return json.loads(value)


def build_classifier(checkpoint: str, arch: Optional[str] = None,
                     dilations: Union[str, Sequence[Sequence[int]], None] = None,
                     trusted: bool = False) -> Tuple['torch.nn.Module', Optional[int]]:
    """A ``DiNATClassifier`` shaped like ``checkpoint`` and loaded from it; and the zoo
    resolution (None for files). ``trusted``: unpickle the file fully (it may run code)."""
    from dinat_backbone.checkpoint import convert_to_reference, infer_arch, read_checkpoint
    from dinat_backbone.model_zoo import IMAGENET_CHECKPOINTS
    from dinat_backbone.models import DiNAT
    from dinat_backbone.models.classifier import DiNATClassifier

    entry = IMAGENET_CHECKPOINTS.get(checkpoint)
    raw = read_checkpoint(checkpoint, trusted)
    state_dict, _ = convert_to_reference(raw)
    found = infer_arch(state_dict)
    if arch is None:
        # The variant's own settings if it is a listed one; else the shapes say all we need.
        arch = next((name for name, cfg in DiNAT.arch_zoo.items()
                     if cfg['embed_dims'] == found['embed_dims']
                     and list(cfg['depths']) == found['depths']
                     and list(cfg['num_heads']) == found['num_heads']
                     and bool(cfg.get('layer_scale')) == found['layer_scale']), None)
        if arch is None:
            arch = {k: found[k] for k in ('embed_dims', 'depths', 'num_heads', 'mlp_ratio')}
            if found['layer_scale']:
                arch['layer_scale'] = 1e-5  # any value: the checkpoint's gammas replace it
    if dilations is None:
        dilations = entry.dilations if entry is not None else 'imagenet'
    head = state_dict.get('head.weight')
    model = DiNATClassifier(arch=arch, num_classes=head.shape[0] if head is not None else 1000,
                            kernel_size=found['kernel_size'] or 7, dilations=dilations)
    model.load_checkpoint(raw)
    return model.eval(), (entry.resolution if entry is not None else None)


def main(argv: Optional[List[str]] = None) -> int:
    """Print the top-k classes of ``args.image``; returns the exit status."""
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    model, zoo_size = build_classifier(args.checkpoint, args.arch, _dilations(args.dilations),
                                       args.trust_checkpoint)
    size = args.size or zoo_size or 224
    labels_file = args.labels or _labels_beside(args.checkpoint)
    if labels_file is None and model.num_classes == 1000:
        labels_file = IMAGENET1K_LABELS
    labels = read_labels(labels_file) if labels_file else {}
    with torch.no_grad():
        probs = model(preprocess(args.image, size, args.crop_pct)).softmax(-1)[0]
    scores, indices = probs.topk(min(args.topk, probs.numel()))
    for rank, (score, index) in enumerate(zip(scores.tolist(), indices.tolist()), 1):
        print(f'{rank}. {labels.get(index, f"class {index}")} (index {index}): {score:.4f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
