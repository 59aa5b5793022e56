"""Published DiNAT checkpoints: ImageNet classifiers (backbone initialisation) and task models.

Figures are those of the reference repository's model tables (SHI-Labs/
Neighborhood-Attention-Transformer, ``classification/DiNAT.md``, ``detection/DiNAT.md``,
``DiNAT.md``, ``mask2former/README.md``) and the paper. All weights are MIT-licensed. Older
links used the host ``shilab.cs.uoregon.edu`` with the same paths. The Hugging Face ports hold
the same weights in the ``transformers`` layout (``pytorch_model.bin`` on their main branch);
:mod:`.layouts` reads both layouts.

Example:
    >>> get_checkpoint_url('dinat_mini.in1k')
    'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
    >>> dict(type='Pretrained', checkpoint='dinat_tiny.in1k')  # an init_cfg: names resolve
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ['PretrainedCheckpoint', 'TaskCheckpoint', 'IMAGENET_CHECKPOINTS', 'TASK_CHECKPOINTS',
           'get_pretrained', 'get_checkpoint_url', 'get_hf_url', 'resolve_checkpoint',
           'fetch_checkpoint', 'list_checkpoints', 'default_dilations']

_ROOT = 'https://shi-labs.com/projects/dinat/checkpoints'
_HF = 'https://huggingface.co'


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """A published ImageNet DiNAT.

    Attributes:
        name: ``'{arch}[_{res}][_k{kernel}].{pretrain}'``, timm style.
        arch: ``DiNAT.arch_zoo`` key.
        url: original (reference-layout) checkpoint.
        hf_hub_id: the Hugging Face port, if one is published.
        pretrain: ``'in1k'``, ``'in22k'`` or ``'in22k_ft_in1k'``.
        resolution: training/evaluation resolution (square).
        kernel_size: neighbourhood size.
        dilations: ``DiNAT`` dilation preset the checkpoint was trained with.
        num_classes: classifier width (21841 for ImageNet-22k).
        top1: ImageNet-1k top-1 (%); None for the ImageNet-22k-only weights.
        params_m: parameters (millions, as published).
        flops_g: GFLOPs at ``resolution`` (as published).
    """
    name: str
    arch: str
    url: str
    hf_hub_id: Optional[str]
    pretrain: str
    resolution: int
    kernel_size: int
    dilations: str
    num_classes: int
    top1: Optional[float]
    params_m: float
    flops_g: float
    license: str = 'MIT'


@dataclass(frozen=True)
class TaskCheckpoint:
    """A published COCO / ADE20K / Cityscapes model: a whole detector/segmentor in mmdet 2.x /
    mmseg 0.x format, or a detectron2 Mask2Former (``method='Mask2Former'``; name
    ``mask2former_dinat_large_{task}``, :data:`~.mask2former.TASKS`).

    Box/mask AP on COCO val2017 (3x schedule) or single-/multi-scale mIoU on ADE20K val; for
    Mask2Former, on the dataset's val split: PQ, mask AP and mIoU (single-scale) of the panoptic
    models, mask AP of the instance models, multi-scale mIoU of the semantic models.
    """
    name: str
    arch: str
    method: str
    dataset: str
    url: str
    config: str  # this project's config that reproduces it
    pretrained: str  # the IMAGENET_CHECKPOINTS entry its backbone was initialised from
    params_m: float
    flops_g: float
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None
    miou: Optional[float] = None
    miou_ms: Optional[float] = None
    pq: Optional[float] = None
    license: str = 'MIT'


def _in(name, arch, path, hf, pretrain, res, kernel, dil, classes, top1, params, flops):
    return PretrainedCheckpoint(name, arch, f'{_ROOT}/{path}', hf, pretrain, res, kernel, dil,
                                classes, top1, params, flops)


_IMAGENET: List[PretrainedCheckpoint] = [
    _in('dinat_mini.in1k', 'mini', 'imagenet1k/dinat_mini_in1k_224.pth',
        'shi-labs/dinat-mini-in1k-224', 'in1k', 224, 7, 'imagenet', 1000, 81.8, 20, 2.7),
    _in('dinat_tiny.in1k', 'tiny', 'imagenet1k/dinat_tiny_in1k_224.pth',
        'shi-labs/dinat-tiny-in1k-224', 'in1k', 224, 7, 'imagenet', 1000, 82.7, 28, 4.3),
    _in('dinat_small.in1k', 'small', 'imagenet1k/dinat_small_in1k_224.pth',
        'shi-labs/dinat-small-in1k-224', 'in1k', 224, 7, 'imagenet', 1000, 83.8, 51, 7.8),
    _in('dinat_base.in1k', 'base', 'imagenet1k/dinat_base_in1k_224.pth',
        'shi-labs/dinat-base-in1k-224', 'in1k', 224, 7, 'imagenet', 1000, 84.4, 90, 13.7),
    # ImageNet-22k pre-training only: what the COCO/ADE20K Large models start from.
    _in('dinat_large.in22k', 'large', 'imagenet22k/dinat_large_in22k_224.pth',
        None, 'in22k', 224, 7, 'imagenet', 21841, None, 200, 30.6),
    _in('dinat_large_k11.in22k', 'large', 'imagenet22k/dinat_large_in22k_224_11x11interp.pth',
        None, 'in22k', 224, 11, 'imagenet', 21841, None, 200, None),
    _in('dinat_large.in22k_ft_in1k', 'large', 'imagenet1k/dinat_large_in22k_in1k_224.pth',
        'shi-labs/dinat-large-in22k-in1k-224', 'in22k_ft_in1k', 224, 7, 'imagenet', 1000,
        86.6, 200, 30.6),
    _in('dinat_large_384.in22k_ft_in1k', 'large', 'imagenet1k/dinat_large_in22k_in1k_384.pth',
        'shi-labs/dinat-large-in22k-in1k-384', 'in22k_ft_in1k', 384, 7, 'imagenet-384', 1000,
        87.4, 200, 89.7),
    # The reference runs its 11x11 384 model with the 224 dilations (8, 4, 2): 13*11 > 96.
    _in('dinat_large_384_k11.in22k_ft_in1k', 'large',
        'imagenet1k/dinat_large_in22k_in1k_384_11x11.pth',
        'shi-labs/dinat-large-11x11-in22k-in1k-384', 'in22k_ft_in1k', 384, 11, 'imagenet', 1000,
        87.5, 200, 92.4),
]
IMAGENET_CHECKPOINTS: Dict[str, PretrainedCheckpoint] = {c.name: c for c in _IMAGENET}

_LETTER = {'mini': 'm', 'tiny': 't', 'small': 's', 'base': 'b', 'large': 'l'}


def _pretrained_for(arch: str) -> str:
    return 'dinat_large.in22k' if arch == 'large' else f'dinat_{arch}.in1k'


def _mask_rcnn(arch, params, flops, box, mask):
    return TaskCheckpoint(
        f'mask-rcnn_dinat-{_LETTER[arch]}_fpn_ms-crop-3x_coco', arch, 'Mask R-CNN', 'COCO',
        f'{_ROOT}/coco/maskrcnn_dinat_{arch}.pth',
        f'configs/detection/mask-rcnn_dinat-{_LETTER[arch]}_fpn_ms-crop-3x_coco.py',
        _pretrained_for(arch), params, flops, box_ap=box, mask_ap=mask)


def _cascade(arch, params, flops, box, mask):
    return TaskCheckpoint(
        f'cascade-mask-rcnn_dinat-{_LETTER[arch]}_fpn_ms-crop-3x_coco', arch,
        'Cascade Mask R-CNN', 'COCO', f'{_ROOT}/coco/cascadedmaskrcnn_dinat_{arch}.pth',
        f'configs/detection/cascade-mask-rcnn_dinat-{_LETTER[arch]}_fpn_ms-crop-3x_coco.py',
        _pretrained_for(arch), params, flops, box_ap=box, mask_ap=mask)


def _upernet(arch, params, flops, miou, miou_ms):
    crop = '640x640' if arch == 'large' else '512x512'
    name = f'upernet_dinat-{_LETTER[arch]}_8xb2-160k_ade20k-{crop}'
    return TaskCheckpoint(name, arch, 'UPerNet', 'ADE20K',
                          f'{_ROOT}/ade20k/upernet_dinat_{arch}.pth',
                          f'configs/segmentation/{name}.py', _pretrained_for(arch), params, flops,
                          miou=miou, miou_ms=miou_ms)


_TASKS: List[TaskCheckpoint] = [
    _mask_rcnn('mini', 40, 225, 47.2, 42.5),
    _mask_rcnn('tiny', 48, 258, 48.6, 43.5),
    _mask_rcnn('small', 70, 330, 49.3, 44.0),
    _cascade('mini', 77, 704, 51.2, 44.4),
    _cascade('tiny', 85, 737, 52.2, 45.1),
    _cascade('small', 108, 809, 52.9, 45.8),
    _cascade('base', 147, 931, 53.4, 46.2),
    _cascade('large', 258, 1276, 55.3, 47.8),
    _upernet('mini', 50, 900, 45.8, 47.2),
    _upernet('tiny', 58, 934, 47.8, 48.8),
    _upernet('small', 82, 1010, 48.9, 49.9),
    _upernet('base', 123, 1137, 49.6, 50.4),
    # The repository's top-level DiNAT.md (and the paper) give 54.0 / 54.9 for the updated
    # Large checkpoint; segmentation/DiNAT.md still lists an earlier 53.5 / 54.6.
    _upernet('large', 238, 2335, 54.0, 54.9),
]


_DATASETS = {'coco': 'COCO', 'ade20k': 'ADE20K', 'cityscapes': 'Cityscapes'}


def _mask2former(task, config, flops, pq=None, mask_ap=None, miou=None, miou_ms=None):
    # task: '{dataset}_{panoptic,instance,semantic}'; semantic models are mmseg's
    dataset, kind = task.split('_')
    folder = 'segmentation' if kind == 'semantic' else 'detection'
    name = f'mask2former_dinat_large_{task}'
    return TaskCheckpoint(
        name, 'large', 'Mask2Former', _DATASETS[dataset], f'{_ROOT}/m2f/{name}.pth',
        f'configs/{folder}/mask2former/mask2former_dinat-l-in22k_{config}.py',
        'dinat_large_k11.in22k', 220, flops, mask_ap=mask_ap, miou=miou, miou_ms=miou_ms, pq=pq)


# Mask2Former (detectron2), DiNAT-L with 11x11 neighbourhoods: mask2former/README.md
_TASKS += [
    _mask2former('coco_panoptic', '16xb1-lsj-737.5k_coco-panoptic', 522, pq=58.5, mask_ap=49.2,
                 miou=68.3),
    _mask2former('coco_instance', '16xb1-lsj-737.5k_coco', 522, mask_ap=50.8),
    _mask2former('ade20k_panoptic', '16xb1-160k_ade20k-panoptic-640x640', 535, pq=49.4,
                 mask_ap=35.0, miou=56.3),
    _mask2former('ade20k_instance', '16xb1-160k_ade20k-instance-640x640', 535, mask_ap=35.4),
    _mask2former('ade20k_semantic', '8xb2-160k_ade20k-640x640', 518, miou_ms=58.1),
    # mmdet 3.3 has no Cityscapes panoptic dataset: a model-only config (inference, no PQ)
    _mask2former('cityscapes_panoptic', 'cityscapes-panoptic-inference', 522, pq=67.2,
                 mask_ap=44.5, miou=83.4),
    _mask2former('cityscapes_instance', '16xb1-90k_cityscapes-instance-512x1024', 522,
                 mask_ap=45.1),
    _mask2former('cityscapes_semantic', '8xb2-90k_cityscapes-512x1024', 509, miou_ms=84.5),
]
TASK_CHECKPOINTS: Dict[str, TaskCheckpoint] = {c.name: c for c in _TASKS}


def list_checkpoints(kind: str = 'all') -> List[str]:
    """Names of the ``'imagenet'`` and/or ``'task'`` checkpoints (``kind='all'``)."""
    if kind not in ('all', 'imagenet', 'task'):
        raise ValueError(f"kind must be 'all', 'imagenet' or 'task', got {kind=}.")
    names = list(IMAGENET_CHECKPOINTS) if kind in ('all', 'imagenet') else []
    return names + (list(TASK_CHECKPOINTS) if kind in ('all', 'task') else [])


def get_pretrained(name: str) -> PretrainedCheckpoint:
    """The ImageNet checkpoint called ``name`` (e.g. ``'dinat_mini.in1k'``)."""
    if name not in IMAGENET_CHECKPOINTS:
        raise KeyError(f'Unknown DiNAT ImageNet checkpoint {name!r}; known: '
                       f'{sorted(IMAGENET_CHECKPOINTS)}.')
    return IMAGENET_CHECKPOINTS[name]


def get_checkpoint_url(name: str) -> str:
    """Original-layout URL of an ImageNet or task checkpoint name."""
    if name in IMAGENET_CHECKPOINTS:
        return IMAGENET_CHECKPOINTS[name].url
    if name in TASK_CHECKPOINTS:
        return TASK_CHECKPOINTS[name].url
    raise KeyError(f'Unknown DiNAT checkpoint {name!r}; known: {list_checkpoints()}.')


def get_hf_url(name: str) -> str:
    """URL of the Hugging Face port's weights (``transformers`` layout) of an ImageNet name."""
    entry = get_pretrained(name)
    if entry.hf_hub_id is None:
        raise KeyError(f'{name!r} has no Hugging Face port; use {entry.url}.')
    return f'{_HF}/{entry.hf_hub_id}/resolve/main/pytorch_model.bin'


def default_dilations(checkpoint: Optional[str]) -> str:
    """The dilation preset a model built for ``checkpoint`` gets unless told otherwise: the
    zoo entry's when ``checkpoint`` is an ImageNet checkpoint name, else ``'imagenet'``."""
    entry = IMAGENET_CHECKPOINTS.get(checkpoint) if checkpoint else None
    return entry.dilations if entry is not None else 'imagenet'


def resolve_checkpoint(name_or_path: str) -> str:
    """A checkpoint name of this zoo becomes its URL; anything else is returned unchanged."""
    if name_or_path in IMAGENET_CHECKPOINTS or name_or_path in TASK_CHECKPOINTS:
        return get_checkpoint_url(name_or_path)
    return name_or_path


def fetch_checkpoint(name_or_path: str) -> str:
    """A zoo name or an http(s) URL becomes the path of its downloaded file (downloaded once:
    :func:`~dinat_backbone.weights.safe_loading.download_checkpoint`); anything else is returned
    unchanged.

    Raises:
        ConnectionError: the URL cannot be fetched (offline, unreachable, HTTP error); one line
            naming the URL and what to do instead.
    """
    from .safe_loading import DownloadError, download_checkpoint
    url = resolve_checkpoint(name_or_path)
    if not url.startswith(('http://', 'https://')):
        return url
    try:
        return download_checkpoint(url)
    except DownloadError as error:
        named = url if url == name_or_path else f'{name_or_path!r} ({url})'
        file_name = osp.basename(error.path)  # the cache's name for it
        raise ConnectionError(
            f'Cannot download {named}: {error.reason}. Nothing was cached. Without network '
            f'access, fetch that URL elsewhere and put the file at {error.path}, or give the '
            f'file\'s path instead, e.g. checkpoint=\'/path/to/{file_name}\'.') from None
