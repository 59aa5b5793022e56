"""Multi-scale DiNAT features for downstream heads: build a backbone, load weights, extract.

A backbone comes from an arch name (``'mini'`` ... ``'large'``, ImageNet normalisation) or from
an mmseg/mmdet config (its ``model.backbone``, and its ``model.data_preprocessor`` for the
normalisation). Its weights come from a backbone checkpoint (original SHI-Labs, Hugging Face or
ours) or from a whole trained mmseg/mmdet model (its ``backbone.*`` tensors), read by
:func:`dinat_backbone.weights.load_pretrained`.

Images are read as mmseg/mmdet's ``LoadImageFromFile`` reads them (OpenCV, 3-channel BGR), then
converted to RGB when the data preprocessor does (``bgr_to_rgb``) and normalised with its
mean/std. They are **not resized and not padded**: features are computed at each image's own
size, and a batch only ever holds images of one size (images are grouped by size), so a
feature does not depend on the other images of its batch (different batch sizes agree to
float32 rounding, about 1e-6, as BLAS kernels differ). Level ``i`` of an ``H x W`` image is a
``C_i x ceil(H / s_i) x ceil(W / s_i)`` map with stride ``s_i = 4 * 2**i``.

Example:
    >>> extractor = FeatureExtractor.from_config('mini', checkpoint='dinat_mini.in1k')
    >>> result = extractor.extract(['cat_224x224.jpg'])[0]
    >>> [tuple(f.shape) for f in result['features']], result['strides']
    ([(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)], [4, 8, 16, 32])
    >>> extractor.extract_to_dir(['images/'], 'features/', batch_size=8)   # one .pt per image
"""
import copy
import logging
import os
import os.path as osp
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..engine.checkpoint_hook import atomic_torch_save
from ..models import DiNAT
from ..weights.safe_loading import trust_checkpoints

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'IMAGE_EXTENSIONS', 'Preprocessing', 'build_backbone',
    'collect_images', 'read_image', 'extract_features', 'FeatureExtractor'
]

# ImageNet statistics on the 0-255 scale, RGB order (as in mmseg/mmdet data preprocessors); the
# only copy: divide by 255 for images scaled to [0, 1].
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')

Image = Union[str, np.ndarray]


@dataclass(frozen=True)
class Preprocessing:
    """How an image (uint8, BGR as OpenCV reads it) becomes the backbone's input.

    ``bgr_to_rgb`` flips the channels first (a data preprocessor's ``bgr_to_rgb`` or
    ``rgb_to_bgr``); ``mean``/``std`` (0-255 scale, in the channel order after the flip) then
    normalise, as mmseg's ``SegDataPreProcessor`` and mmdet's ``DetDataPreProcessor`` do.
    """
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    bgr_to_rgb: bool = True

    @classmethod
    def from_data_preprocessor(cls, cfg: Optional[Dict[str, Any]]) -> 'Preprocessing':
        """From a config's ``model.data_preprocessor`` dict (no normalisation without mean)."""
        cfg = cfg or {}
        if cfg.get('mean') is None:
            mean, std = (0., 0., 0.), (1., 1., 1.)
        else:
            mean, std = cfg['mean'], cfg.get('std') or (1., 1., 1.)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std),
                   bool(cfg.get('bgr_to_rgb') or cfg.get('rgb_to_bgr')))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``[H, W, 3]`` uint8 BGR -> normalised ``[3, H, W]`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        if self.bgr_to_rgb:
            x = x.flip(0)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std


def _is_config(config_or_arch: str) -> bool:
    return config_or_arch.endswith('.py') or osp.isfile(config_or_arch)


def _backbone_from_config(path: str) -> Tuple[Dict[str, Any], Preprocessing]:
    from mmengine.config import Config

    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path!r}')
    cfg = Config.fromfile(path)
    model = cfg.get('model') or {}
    backbone = model.get('backbone')
    if backbone is None:
        raise ValueError(f'{path} has no model.backbone.')
    backbone = copy.deepcopy(backbone.to_dict() if hasattr(backbone, 'to_dict') else backbone)
    kind = backbone.pop('type', None)
    name = kind.__name__ if isinstance(kind, type) else str(kind).split('.')[-1]
    if name != 'DiNAT':
        raise ValueError(f'{path}: model.backbone is {kind!r}, not DiNAT.')
    preprocessor = model.get('data_preprocessor')
    if preprocessor is not None and hasattr(preprocessor, 'to_dict'):
        preprocessor = preprocessor.to_dict()
    return backbone, Preprocessing.from_data_preprocessor(preprocessor)


def build_backbone(config_or_arch: str,
                   checkpoint: Optional[str] = None,
                   out_indices: Optional[Sequence[int]] = None,
                   dilations: Union[str, Sequence[Sequence[int]], None] = None,
                   kernel_size: Optional[int] = None,
                   logger: Any = None,
                   trusted: bool = False) -> Tuple[DiNAT, Preprocessing]:
    """A DiNAT backbone in eval mode with its weights, and how to normalise its input.

    Args:
        config_or_arch (str): An mmseg/mmdet config file (its ``model.backbone`` must be a
            ``DiNAT``; ``model.data_preprocessor`` gives mean/std/``bgr_to_rgb``) or an arch
            name of :attr:`DiNAT.arch_zoo` (ImageNet mean/std, RGB).
        checkpoint (str, optional): Backbone checkpoint (original, Hugging Face or ours; path,
            URL, snapshot directory or model-zoo name) or a whole mmseg/mmdet checkpoint, whose
            ``backbone.*`` tensors are used. Without it, a config's ``init_cfg`` applies (it may
            download); otherwise the weights are random (a warning says so).
        out_indices (Sequence[int], optional): Levels to return. Default: the config's, or all.
        dilations (str | list, optional): Arch names only: a preset name or per-block lists.
            Default: the model-zoo entry's preset when ``checkpoint`` is a zoo name, else
            ``'imagenet'``.
        kernel_size (int, optional): Arch names only. Default: read from the checkpoint's
            ``rpb``, else 7.
        logger: mmengine logger (or its name) for the loading summary. Default: current.
        trusted (bool): Unpickle ``checkpoint`` (or the config's ``init_cfg`` one) fully,
            running any code it contains; only for a file from a trusted source. Default: False.

    Raises:
        FileNotFoundError: a missing config or checkpoint file.
        ValueError: neither a config nor a known arch, a non-DiNAT config backbone, or a
            checkpoint that does not fit (see :func:`~dinat_backbone.weights.load_pretrained`).
    """
    from ..weights import convert_to_backbone, infer_arch, load_pretrained, read_checkpoint
    from ..weights.zoo import default_dilations

    if _is_config(config_or_arch):
        if dilations is not None or kernel_size is not None:
            raise ValueError('dilations and kernel_size apply to arch names only; a config sets '
                             'them in model.backbone.')
        kwargs, preprocessing = _backbone_from_config(config_or_arch)
        if checkpoint is not None:
            kwargs['init_cfg'] = None  # the given checkpoint replaces the config's weights
    elif config_or_arch.lower() in DiNAT.arch_zoo:
        if kernel_size is None and checkpoint is not None:
            found = infer_arch(convert_to_backbone(read_checkpoint(checkpoint, trusted))[0])
            kernel_size = found['kernel_size']
        kwargs = dict(arch=config_or_arch.lower(), kernel_size=kernel_size or 7,
                      dilations=dilations or default_dilations(checkpoint))
        preprocessing = Preprocessing()
    else:
        raise ValueError(f'{config_or_arch!r} is neither a config file (.py) nor a DiNAT arch '
                         f'name ({", ".join(sorted(DiNAT.arch_zoo))}).')
    if out_indices is not None:
        kwargs['out_indices'] = tuple(out_indices)
    kwargs['drop_path_rate'] = 0.  # inference only; keeps construction independent of it
    backbone = DiNAT(**kwargs)
    if checkpoint is not None:
        load_pretrained(backbone, checkpoint, logger=logger, trusted=trusted)
    else:
        if backbone.init_cfg is None:
            print_log('No checkpoint given: the backbone has random weights.',
                      logger=logger if logger is not None else 'current', level=logging.WARNING)
        with trust_checkpoints(trusted):  # the config's init_cfg checkpoint, if any
            backbone.init_weights()
    return backbone.eval(), preprocessing


def collect_images(inputs: Iterable[str]) -> List[Tuple[str, str]]:
    """``(path, name)`` of every image named by ``inputs`` (files, or directories searched
    recursively for :data:`IMAGE_EXTENSIONS`); ``name`` is the path relative to its directory
    argument (the file name for a file argument) without extension, the key of its output file.

    Raises:
        FileNotFoundError: an input path does not exist.
        ValueError: no images found, an empty (0-byte) image file, or two images with the
            same name.
    """
    found: List[Tuple[str, str]] = []
    for item in inputs:
        if osp.isdir(item):
            images = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                images += [osp.join(root, f) for f in sorted(files)
                           if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not images:
                raise ValueError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) in directory '
                                 f'{item!r}.')
            found += [(p, osp.splitext(osp.relpath(p, item))[0]) for p in images]
        elif osp.isfile(item):
            found.append((item, osp.splitext(osp.basename(item))[0]))
        else:
            raise FileNotFoundError(f'Input path not found: {item!r}')
    if not found:
        raise ValueError('No input images given.')
    empty = [path for path, _ in found if osp.getsize(path) == 0]
    if empty:
        raise ValueError(f'Empty image files (0 bytes): {", ".join(empty)}.')
    by_name: Dict[str, List[str]] = {}
    for path, name in found:
        by_name.setdefault(name, []).append(path)
    clashes = {n: p for n, p in by_name.items() if len(p) > 1}
    if clashes:
        raise ValueError('Several inputs would write the same output file: ' + '; '.join(
            f'{n}.pt <- {", ".join(p)}' for n, p in sorted(clashes.items())))
    return found


def read_image(path: str) -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 BGR, the way mmseg/mmdet's ``LoadImageFromFile``
    reads it (OpenCV, colour).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image.
    """
    import mmcv

    if not osp.isfile(path):
        raise FileNotFoundError(f'Image file not found: {path!r}')
    with open(path, 'rb') as f:
        data = f.read()
    # OpenCV asserts (cv2.error) on an empty buffer rather than returning None.
    image = mmcv.imfrombytes(data, flag='color', backend='cv2') if data else None
    if image is None:
        raise ValueError(f'Cannot read image {path!r}: not an image OpenCV can decode, or a '
                         'corrupt file.')
    return image


def _batches(sizes: Sequence[Tuple[int, int]], batch_size: int) -> List[List[int]]:
    """Indices grouped by image size (first-seen order), cut into batches of ``batch_size``."""
    groups: Dict[Tuple[int, int], List[int]] = OrderedDict()
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    return [group[i:i + batch_size] for group in groups.values()
            for i in range(0, len(group), batch_size)]


def _strides(model: nn.Module) -> List[int]:
    return [4 * 2**i for i in getattr(model, 'out_indices', (0, 1, 2, 3))]


@torch.no_grad()
def extract_features(model: nn.Module,
                     images: Sequence[Image],
                     preprocessing: Optional[Preprocessing] = None,
                     batch_size: int = 1,
                     device: Union[str, torch.device, None] = None,
                     progress: bool = False) -> List[Dict[str, Any]]:
    """Multi-scale features of each image, computed in batches of same-size images.

    Args:
        model (nn.Module): A DiNAT backbone (or any module mapping ``[B, 3, H, W]`` to a tuple
            of NCHW maps with an ``out_indices`` attribute), run in eval mode.
        images (Sequence[str | np.ndarray]): Image files, or ``[H, W, 3]`` uint8 BGR arrays.
        preprocessing (Preprocessing, optional): Normalisation. Default: ImageNet, RGB.
        batch_size (int): Images per forward pass; a batch only holds images of one size.
            Default: 1.
        device (str | torch.device, optional): Default: the model's device.
        progress (bool): Show a progress bar (tqdm) on stderr. Default: False.

    Returns:
        list[dict]: In input order, per image: ``features`` (list of ``[C_i, H_i, W_i]`` float32
        CPU tensors), ``strides``, ``image_size`` (``(H, W)``) and ``source`` (the path, or None
        for an array).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size=}.')
    preprocessing = preprocessing or Preprocessing()
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    arrays = [read_image(image) if isinstance(image, str) else image for image in images]
    for index, array in enumerate(arrays):
        if not (isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] == 3):
            raise ValueError(f'Image {index} must be an [H, W, 3] array, got '
                             f'{getattr(array, "shape", type(array).__name__)}.')
    strides = _strides(model)
    results: List[Optional[Dict[str, Any]]] = [None] * len(arrays)
    with tqdm(total=len(arrays), unit='img', disable=not progress) as bar:
        for batch in _batches([a.shape[:2] for a in arrays], batch_size):
            inputs = torch.stack([preprocessing(arrays[i]) for i in batch]).to(device)
            outputs = model(inputs)
            for j, index in enumerate(batch):
                source = images[index] if isinstance(images[index], str) else None
                # clone(): a view would save (and keep alive) the whole batch's storage.
                results[index] = dict(
                    features=[out[j].detach().to('cpu', torch.float32).clone()
                              for out in outputs],
                    strides=list(strides), image_size=tuple(arrays[index].shape[:2]),
                    source=source)
            bar.update(len(batch))
    return results  # type: ignore[return-value]


class FeatureExtractor:
    """A DiNAT backbone plus its input normalisation, extracting multi-scale features.

    Args:
        backbone (nn.Module): The backbone (see :func:`extract_features`).
        preprocessing (Preprocessing, optional): Default: ImageNet mean/std, RGB.
        device (str | torch.device): Where to run. Default: ``'cpu'``.

    Files written by :meth:`extract_to_dir`: ``OUT/<name>.pt`` per image (``name``: see
    :func:`collect_images`), a ``torch.save`` of the dict :func:`extract_features` returns
    (``features``, ``strides``, ``image_size``, ``source``); read it with ``torch.load``.
    """

    def __init__(self, backbone: nn.Module, preprocessing: Optional[Preprocessing] = None,
                 device: Union[str, torch.device] = 'cpu') -> None:
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.preprocessing = preprocessing or Preprocessing()

    @classmethod
    def from_config(cls, config_or_arch: str, checkpoint: Optional[str] = None,
                    out_indices: Optional[Sequence[int]] = None,
                    device: Union[str, torch.device] = 'cpu',
                    **kwargs: Any) -> 'FeatureExtractor':
        """Build with :func:`build_backbone` (same arguments)."""
        backbone, preprocessing = build_backbone(config_or_arch, checkpoint, out_indices,
                                                 **kwargs)
        return cls(backbone, preprocessing, device)

    @property
    def strides(self) -> List[int]:
        """Stride of each returned level."""
        return _strides(self.backbone)

    def extract(self, images: Sequence[Image], batch_size: int = 1,
                progress: bool = False) -> List[Dict[str, Any]]:
        """:func:`extract_features` with this extractor's model, normalisation and device."""
        return extract_features(self.backbone, images, self.preprocessing, batch_size,
                                self.device, progress)

    def extract_to_dir(self, inputs: Iterable[str], out_dir: str, batch_size: int = 1,
                       progress: bool = False) -> List[str]:
        """Extract the images named by ``inputs`` (files or directories) into ``out_dir``.

        Missing inputs and output-name clashes fail before anything is computed. Images are
        read in chunks of ``max(64, 4 * batch_size)``; an unreadable one stops the run with
        its path (the files of earlier chunks stay). Returns the written paths, in input order.
        """
        from tqdm import tqdm

        found = collect_images(inputs)
        chunk = max(64, 4 * batch_size)
        written = []
        with tqdm(total=len(found), unit='img', disable=not progress) as bar:
            for start in range(0, len(found), chunk):
                part = found[start:start + chunk]
                arrays = [read_image(path) for path, _ in part]
                results = extract_features(self.backbone, arrays, self.preprocessing,
                                           batch_size, self.device)
                for (path, name), result in zip(part, results):
                    result['source'] = path
                    target = osp.join(out_dir, name + '.pt')
                    os.makedirs(osp.dirname(target), exist_ok=True)
                    atomic_torch_save(result, target)
                    written.append(target)
                bar.update(len(part))
        return written
