"""Image classification with a whole DiNAT ImageNet checkpoint (``tools/classify.py``): the
classifier shaped like the checkpoint, the ImageNet evaluation transform and the class names."""
import json
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from ..models import DiNAT
from ..models.classifier import DiNATClassifier
from ..weights import convert_to_reference, infer_arch, read_checkpoint, zoo_arch_name
from ..weights.zoo import IMAGENET_CHECKPOINTS, default_dilations
from .features import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['IMAGENET1K_LABELS', 'build_classifier', 'labels_beside', 'read_eval_image',
           'read_labels']

# ImageNet-1k class names (WordNet lemmas) in the standard class order.
IMAGENET1K_LABELS = osp.join(osp.dirname(osp.abspath(__file__)), 'imagenet1k_labels.txt')


def read_eval_image(path: str, size: int, crop_pct: float = 0.875) -> torch.Tensor:
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
    x = x.view(size, size, 3).permute(2, 0, 1).float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # 0-255 scale, as x
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


def labels_beside(checkpoint: str) -> Optional[str]:
    """The ``config.json`` with ``id2label`` of a Hugging Face snapshot holding ``checkpoint``."""
    folder = checkpoint if osp.isdir(checkpoint) else osp.dirname(checkpoint)
    candidate = osp.join(folder, 'config.json')
    if osp.isfile(candidate):
        with open(candidate) as f:
            if 'id2label' in json.load(f):
                return candidate
    return None


def build_classifier(checkpoint: str, arch: Optional[str] = None,
                     dilations: Union[str, Sequence[Sequence[int]], None] = None,
                     trusted: bool = False) -> Tuple[DiNATClassifier, Optional[int]]:
    """A ``DiNATClassifier`` shaped like ``checkpoint`` and loaded from it; and the zoo
    resolution (None for files). ``trusted``: unpickle the file fully (it may run code)."""
    entry = IMAGENET_CHECKPOINTS.get(checkpoint)
    raw = read_checkpoint(checkpoint, trusted)
    state_dict, _ = convert_to_reference(raw)
    found = infer_arch(state_dict)
    if arch is None:
        # The variant's own settings if it is a listed one; else the shapes say all we need.
        arch = zoo_arch_name(found, DiNAT.arch_zoo)
        if arch is None:
            arch = {k: found[k] for k in ('embed_dims', 'depths', 'num_heads', 'mlp_ratio')}
            if found['layer_scale']:
                arch['layer_scale'] = 1e-5  # any value: the checkpoint's gammas replace it
    if dilations is None:
        dilations = default_dilations(checkpoint)
    head = state_dict.get('head.weight')
    model = DiNATClassifier(arch=arch, num_classes=head.shape[0] if head is not None else 1000,
                            kernel_size=found['kernel_size'] or 7, dilations=dilations)
    model.load_checkpoint(raw)
    return model.eval(), (entry.resolution if entry is not None else None)
