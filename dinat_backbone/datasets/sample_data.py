"""Small synthetic datasets in the ADE20K and COCO layouts, for tests, demos and smoke runs.

The images are toy scenes whose classes are visible (each class has its own shape and colour
on a noisy, textured background), so a model can learn them in a few hundred iterations and
a metric above chance means the pipeline works end to end. Everything is generated from fixed
seeds with numpy + OpenCV + pycocotools, so two runs write identical bytes (on the same
OpenCV build, whose JPEG/PNG encoders are deterministic).

Layouts (exactly what ``mmseg``'s ``ADE20KDataset`` and ``mmdet``'s ``CocoDataset`` read)::

    <root>/ade20k/images/{training,validation}/sample_XXXX.jpg
    <root>/ade20k/annotations/{training,validation}/sample_XXXX.png
    <root>/coco/{train2017,val2017}/000000XXXXXX.jpg
    <root>/coco/annotations/instances_{train2017,val2017}.json
    <root>/coco/annotations/panoptic_{train2017,val2017}.json
    <root>/coco/annotations/panoptic_{train2017,val2017}/000000XXXXXX.png

ADE20K convention: the PNG holds 0 for "other" (ignored with ``reduce_zero_label=True``) and
``index + 1`` for the class ``ADE20KDataset.METAINFO['classes'][index]``. The scenes use
:data:`ADE20K_SAMPLE_CLASSES` (6 of the 150 classes) plus a few "other" (0) blobs.

COCO convention: real COCO category ids and names (:data:`COCO_SAMPLE_CATEGORIES`); use
``metainfo=dict(classes=COCO_SAMPLE_CLASSES)`` in the dataset config. Instances are stored as
polygons, every third one as compressed RLE; ``iscrowd`` is 0.

COCO panoptic convention (what ``CocoPanopticDataset`` and ``CocoPanopticMetric`` read): the
background of every COCO image is two stuff regions, a grey wall above a green lawn
(:data:`COCO_PANOPTIC_STUFF_CATEGORIES`, real COCO panoptic ids). Each PNG stores segment ids
as ``R + 256 * G + 256 ** 2 * B``; a thing segment's id is its instance annotation's id and its
pixels are that annotation's mask, a stuff segment covers the rest of its region. The JSON has
``segments_info`` (id, category_id, iscrowd 0, bbox, area) and the categories with ``isthing``
(things first, as mmdet's panoptic labels expect); use
``metainfo=dict(classes=COCO_PANOPTIC_SAMPLE_CLASSES, thing_classes=COCO_SAMPLE_CLASSES,
stuff_classes=COCO_PANOPTIC_STUFF_CLASSES)``.

Usage::

    from dinat_backbone.datasets.sample_data import ensure_sample_data
    paths = ensure_sample_data('data/sample')   # generates only what is missing
    paths['ade20k'], paths['coco'], paths['coco_train_ann'], paths['coco_panoptic_val_ann']
"""
import json
import os
import os.path as osp
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    'ADE20K_SAMPLE_CLASSES', 'COCO_PANOPTIC_SAMPLE_CLASSES', 'COCO_PANOPTIC_STUFF_CATEGORIES',
    'COCO_PANOPTIC_STUFF_CLASSES', 'COCO_SAMPLE_CATEGORIES', 'COCO_SAMPLE_CLASSES',
    'SAMPLE_DATA_VERSION', 'generate_ade20k_sample', 'generate_coco_sample',
    'generate_sample_data', 'ensure_sample_data', 'sample_data_paths'
]

# Bump when the generated content changes: ensure_sample_data() then regenerates old copies.
SAMPLE_DATA_VERSION = '2'  # 2: COCO backgrounds of two stuff regions, panoptic annotations
_MARKER = 'SAMPLE_DATA_VERSION'
_SEED = 20221014  # DiNAT's arXiv date; any fixed value works

# ADE20K classes used by the toy scenes: name -> 0-based index in ADE20KDataset's 150 classes.
# The PNG stores index + 1 (0 is "other"). Sky and grass are the background regions.
ADE20K_SAMPLE_CLASSES: Dict[str, int] = {
    'sky': 2,
    'tree': 4,
    'grass': 9,
    'person': 12,
    'car': 20,
    'ball': 119,
}

# COCO category ids and names as in instances_*2017.json; each has a distinct shape and colour.
COCO_SAMPLE_CATEGORIES: Tuple[Dict, ...] = (
    dict(id=13, name='stop sign', supercategory='outdoor'),   # red octagon
    dict(id=37, name='sports ball', supercategory='sports'),  # orange disc
    dict(id=38, name='kite', supercategory='sports'),         # blue diamond
)
COCO_SAMPLE_CLASSES: Tuple[str, ...] = tuple(c['name'] for c in COCO_SAMPLE_CATEGORIES)

# COCO panoptic stuff categories (ids and names as in panoptic_coco_categories.json) painted as
# the COCO images' background: wall above, grass below a slanted horizon.
COCO_PANOPTIC_STUFF_CATEGORIES: Tuple[Dict, ...] = (
    dict(id=193, name='grass-merged', supercategory='plant'),
    dict(id=199, name='wall-other-merged', supercategory='wall'),
)
COCO_PANOPTIC_STUFF_CLASSES: Tuple[str, ...] = tuple(
    c['name'] for c in COCO_PANOPTIC_STUFF_CATEGORIES)
COCO_PANOPTIC_SAMPLE_CLASSES: Tuple[str, ...] = COCO_SAMPLE_CLASSES + COCO_PANOPTIC_STUFF_CLASSES

_ADE_SPLITS = (('training', 32), ('validation', 8))
_COCO_SPLITS = (('train2017', 24), ('val2017', 8))
_JPEG = [int(cv2.IMWRITE_JPEG_QUALITY), 92]


def sample_data_paths(root: str) -> Dict[str, str]:
    """The paths :func:`generate_sample_data` writes under ``root`` (nothing is checked)."""
    ade, coco = osp.join(root, 'ade20k'), osp.join(root, 'coco')
    return dict(
        root=root,
        ade20k=ade,
        coco=coco,
        coco_train_ann=osp.join(coco, 'annotations', 'instances_train2017.json'),
        coco_val_ann=osp.join(coco, 'annotations', 'instances_val2017.json'),
        coco_panoptic_train_ann=osp.join(coco, 'annotations', 'panoptic_train2017.json'),
        coco_panoptic_val_ann=osp.join(coco, 'annotations', 'panoptic_val2017.json'))


# ----------------------------------------------------------------------------- drawing helpers
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def _texture(rng: np.random.Generator, h: int, w: int, base: Tuple[int, int, int],
             spread: float) -> np.ndarray:
    """A float32 BGR image: ``base`` colour modulated by blotches plus pixel noise."""
    blotch = _smooth_noise(rng, h, w, cell=int(rng.integers(6, 14))) - 0.5
    img = np.asarray(base, np.float32)[None, None] * (1.0 + spread * blotch[..., None])
    return img + rng.normal(0.0, 8.0, (h, w, 3)).astype(np.float32)


def _jitter(rng: np.random.Generator, colour: Tuple[int, int, int],
            amount: int = 25) -> Tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _regular_polygon(cx: float, cy: float, radius: float, sides: int,
                     phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _fill(canvas: np.ndarray, poly: np.ndarray, value) -> None:
    cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], value)


def _paint(img: np.ndarray, mask: np.ndarray, colour: Tuple[int, ...],
           rng: np.random.Generator) -> None:
    """Paint a textured ``colour`` into ``img`` where ``mask`` is set (in place)."""
    h, w = mask.shape
    tex = _texture(rng, h, w, colour, spread=0.35)
    img[mask > 0] = tex[mask > 0]


def _encode(ext: str, img: np.ndarray, params: Optional[List[int]] = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    if not ok:
        raise RuntimeError(f'OpenCV could not encode a {ext} image')
    return buf.tobytes()


def _write(path: str, data: bytes) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


# ------------------------------------------------------------------------------------ ADE20K
# Object classes: (shape, BGR colour). Shape and colour both identify the class.
_ADE_OBJECTS = (
    ('tree', 'triangle', (30, 90, 20)),
    ('person', 'ellipse', (150, 40, 140)),
    ('car', 'rectangle', (40, 40, 210)),
    ('ball', 'disc', (20, 140, 250)),
)


def _ade_scene(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One toy outdoor scene: sky above grass, 1-4 objects, maybe an unlabelled blob."""
    h, w = (int(rng.choice([64, 80, 96])) for _ in range(2))
    label = np.zeros((h, w), np.uint8)
    horizon = int(rng.integers(h // 3, 2 * h // 3))
    img = np.empty((h, w, 3), np.float32)
    sky = _texture(rng, h, w, _jitter(rng, (225, 170, 110)), spread=0.3)
    sky *= np.linspace(0.8, 1.1, h, dtype=np.float32)[:, None, None]  # brighter at horizon
    grass = _texture(rng, h, w, _jitter(rng, (60, 170, 90)), spread=0.6)
    img[:horizon], img[horizon:] = sky[:horizon], grass[horizon:]
    label[:horizon] = ADE20K_SAMPLE_CLASSES['sky'] + 1
    label[horizon:] = ADE20K_SAMPLE_CLASSES['grass'] + 1

    for _ in range(int(rng.integers(1, 5))):
        name, shape, colour = _ADE_OBJECTS[int(rng.integers(len(_ADE_OBJECTS)))]
        size = int(rng.integers(min(h, w) // 6, min(h, w) // 3))
        cx, cy = int(rng.integers(size, w - size)), int(rng.integers(size, h - size))
        mask = np.zeros((h, w), np.uint8)
        if shape == 'triangle':
            _fill(mask, np.array([[cx, cy - size], [cx - size, cy + size],
                                  [cx + size, cy + size]]), 1)
        elif shape == 'ellipse':
            cv2.ellipse(mask, (cx, cy), (max(size // 2, 2), size), 0, 0, 360, 1, -1)
        elif shape == 'rectangle':
            cv2.rectangle(mask, (cx - size, cy - size // 2), (cx + size, cy + size // 2), 1, -1)
        else:
            cv2.circle(mask, (cx, cy), max(size * 2 // 3, 3), 1, -1)
        _paint(img, mask, _jitter(rng, colour), rng)
        label[mask > 0] = ADE20K_SAMPLE_CLASSES[name] + 1  # later objects occlude earlier ones

    if rng.random() < 0.5:
        # A grey blob of no listed class: label 0, ignored after reduce_zero_label.
        mask = np.zeros((h, w), np.uint8)
        r = int(rng.integers(3, max(min(h, w) // 8, 4)))
        cv2.circle(mask, (int(rng.integers(r, w - r)), int(rng.integers(r, h - r))), r, 1, -1)
        _paint(img, mask, _jitter(rng, (128, 128, 128), 10), rng)
        label[mask > 0] = 0
    return np.clip(img, 0, 255).astype(np.uint8), label


def generate_ade20k_sample(out_dir: str, seed: int = _SEED) -> None:
    """Write the ADE20K-layout sample (32 training, 8 validation images) into ``out_dir``."""
    for split_idx, (split, count) in enumerate(_ADE_SPLITS):
        rng = np.random.default_rng([seed, 0, split_idx])
        for i in range(count):
            img, label = _ade_scene(rng)
            stem = f'sample_{split_idx * 1000 + i:04d}'
            _write(osp.join(out_dir, 'images', split, stem + '.jpg'),
                   _encode('.jpg', img, _JPEG))
            _write(osp.join(out_dir, 'annotations', split, stem + '.png'),
                   _encode('.png', label))


# -------------------------------------------------------------------------------------- COCO
_COCO_STYLE = {  # category id -> (sides of the polygon, rotation, BGR colour)
    13: (8, np.pi / 8, (30, 30, 200)),   # stop sign: red octagon
    37: (24, 0.0, (20, 130, 240)),       # sports ball: orange disc (24-gon)
    38: (4, 0.0, (200, 90, 30)),         # kite: blue diamond
}


# Stuff segments get the id category_id * 256**2 (the PNG's blue channel holds the category);
# thing segments keep their instance annotation ids, which stay below 256**2.
_STUFF_SEGMENT_ID = {c['name']: c['id'] * 256 ** 2 for c in COCO_PANOPTIC_STUFF_CATEGORIES}
_GRASS_BGR = (60, 150, 70)


def _coco_image(rng: np.random.Generator, stuff_rng: np.random.Generator, image_id: int,
                first_ann_id: int) -> Tuple[np.ndarray, List[Dict], np.ndarray]:
    """One image with 1-4 non-overlapping instances on a wall-above-grass background.

    Returns the BGR image, its COCO instance annotations and its panoptic segment-id map.
    ``stuff_rng`` draws only the background split, so the instances are the same as those of
    sample version 1, whose background was all wall.
    """
    h, w = int(rng.choice([96, 112, 128])), int(rng.choice([96, 112, 128]))
    # A grey wall (the jittered colour's mean keeps version 1's random draws), unlike the lawn.
    grey = int(np.mean(_jitter(rng, (120, 130, 125), 30)))
    img = _texture(rng, h, w, (grey, grey, grey), spread=0.8)
    horizon = stuff_rng.uniform(0.4, 0.75) * h
    slope = stuff_rng.uniform(-0.3, 0.3)
    rows, cols = np.mgrid[0:h, 0:w]
    grass = rows > horizon + slope * (cols - w / 2)
    lawn = _texture(stuff_rng, h, w, _jitter(stuff_rng, _GRASS_BGR), spread=0.5)
    img[grass] = lawn[grass]
    segment_ids = np.where(grass, _STUFF_SEGMENT_ID['grass-merged'],
                           _STUFF_SEGMENT_ID['wall-other-merged']).astype(np.uint32)

    anns, boxes = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):  # rejection sampling keeps instances apart (no occlusion)
            radius = float(rng.integers(8, 22))
            cx = rng.uniform(radius + 1, w - radius - 1)
            cy = rng.uniform(radius + 1, h - radius - 1)
            box = (cx - radius - 2, cy - radius - 2, cx + radius + 2, cy + radius + 2)
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1]
                   for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        cat = COCO_SAMPLE_CATEGORIES[int(rng.integers(len(COCO_SAMPLE_CATEGORIES)))]['id']
        sides, phase, colour = _COCO_STYLE[cat]
        poly = np.round(_regular_polygon(cx, cy, radius, sides, phase), 1)
        mask = np.zeros((h, w), np.uint8)
        _fill(mask, poly, 1)
        _paint(img, mask, _jitter(rng, colour), rng)
        ann_id = first_ann_id + len(anns)
        if ann_id % 3 == 0:
            # Compressed RLE of the painted mask (COCO's format for masks that are not polygons).
            rle = mask_utils.encode(np.asfortranarray(mask))
            segmentation = dict(size=[h, w], counts=rle['counts'].decode('ascii'))
        else:
            rle = mask_utils.merge(mask_utils.frPyObjects([poly.ravel().tolist()], h, w))
            segmentation = [[float(v) for v in poly.ravel()]]
        # The panoptic thing segment is exactly the annotated mask.
        segment_ids[mask_utils.decode(rle) > 0] = ann_id
        anns.append(dict(
            id=ann_id, image_id=image_id, category_id=cat, segmentation=segmentation,
            area=float(mask_utils.area(rle)),
            bbox=[round(float(v), 2) for v in mask_utils.toBbox(rle)], iscrowd=0))
    return np.clip(img, 0, 255).astype(np.uint8), anns, segment_ids


def _panoptic_segments(segment_ids: np.ndarray, anns: List[Dict]) -> List[Dict]:
    """``segments_info`` of one image: things in annotation order, then the stuff present."""
    category = {ann['id']: ann['category_id'] for ann in anns}
    category.update({_STUFF_SEGMENT_ID[c['name']]: c['id'] for c in COCO_PANOPTIC_STUFF_CATEGORIES})
    segments = []
    for segment_id, category_id in category.items():
        ys, xs = np.nonzero(segment_ids == segment_id)
        if len(ys) == 0:  # a stuff region hidden by things, or a mask too thin to rasterise
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(dict(
            id=int(segment_id), category_id=category_id, iscrowd=0, area=int(len(ys)),
            bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]))
    return segments


def _panoptic_png(segment_ids: np.ndarray) -> bytes:
    """COCO panoptic PNG: id = R + 256 * G + 256**2 * B (OpenCV writes BGR order)."""
    rgb = np.stack([(segment_ids >> shift) & 255 for shift in (0, 8, 16)], axis=-1)
    return _encode('.png', rgb[..., ::-1].astype(np.uint8))


def generate_coco_sample(out_dir: str, seed: int = _SEED) -> None:
    """Write the COCO-layout sample (24 train2017, 8 val2017 images) into ``out_dir``: the
    images, their instance annotations and their panoptic annotations."""
    info = dict(description='dinat-backbone synthetic COCO-format sample',
                version=SAMPLE_DATA_VERSION, year=2022)
    licenses = [dict(id=1, name='CC0 1.0', url='')]
    panoptic_categories = (
        [dict(c, isthing=1) for c in COCO_SAMPLE_CATEGORIES]
        + [dict(c, isthing=0) for c in COCO_PANOPTIC_STUFF_CATEGORIES])
    for split_idx, (split, count) in enumerate(_COCO_SPLITS):
        rng = np.random.default_rng([seed, 1, split_idx])
        stuff_rng = np.random.default_rng([seed, 2, split_idx])
        images, annotations, panoptic = [], [], []
        for i in range(count):
            image_id = split_idx * 1000 + i + 1
            img, anns, segment_ids = _coco_image(
                rng, stuff_rng, image_id, first_ann_id=len(annotations) + 1)
            file_name = f'{image_id:012d}.jpg'
            _write(osp.join(out_dir, split, file_name), _encode('.jpg', img, _JPEG))
            png_name = file_name.replace('.jpg', '.png')
            _write(osp.join(out_dir, 'annotations', f'panoptic_{split}', png_name),
                   _panoptic_png(segment_ids))
            images.append(dict(id=image_id, file_name=file_name, height=img.shape[0],
                               width=img.shape[1], license=1))
            annotations.extend(anns)
            panoptic.append(dict(image_id=image_id, file_name=png_name,
                                 segments_info=_panoptic_segments(segment_ids, anns)))
        instances = dict(info=info, licenses=licenses, images=images, annotations=annotations,
                         categories=[dict(c) for c in COCO_SAMPLE_CATEGORIES])
        _write(osp.join(out_dir, 'annotations', f'instances_{split}.json'),
               json.dumps(instances, indent=1).encode('utf-8'))
        panoptic_json = dict(info=info, licenses=licenses, images=images, annotations=panoptic,
                             categories=panoptic_categories)
        _write(osp.join(out_dir, 'annotations', f'panoptic_{split}.json'),
               json.dumps(panoptic_json, indent=1).encode('utf-8'))


# ---------------------------------------------------------------------------------- top level
def _is_current(path: str) -> bool:
    marker = osp.join(path, _MARKER)
    if not osp.isfile(marker):
        return False
    with open(marker) as f:
        return f.read().strip() == SAMPLE_DATA_VERSION


def _generate_into(path: str, generate: Callable[[str], None]) -> None:
    """Generate into a temporary sibling, then rename it into place.

    An interrupted run leaves no half-written dataset behind, and a concurrent caller either
    sees nothing or a complete copy. The marker file identifies our own output, so an existing
    directory is replaced only if we wrote it.
    """
    parent = osp.dirname(osp.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if osp.exists(path) and not osp.isfile(osp.join(path, _MARKER)):
        raise FileExistsError(
            f'{path} exists but was not written by dinat_backbone.datasets.sample_data '
            f'(no {_MARKER} file); refusing to overwrite it. Choose another output directory.')
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(path)}.', dir=parent)
    try:
        generate(tmp)
        with open(osp.join(tmp, _MARKER), 'w') as f:
            f.write(SAMPLE_DATA_VERSION + '\n')
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if osp.exists(path):
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError:
            # Another process renamed its complete copy into place first; identical content.
            if not _is_current(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_sample_data(root: str, seed: int = _SEED) -> Dict[str, str]:
    """(Re)generate both sample datasets under ``root``; returns :func:`sample_data_paths`.

    Args:
        root (str): Output directory; ``ade20k/`` and ``coco/`` are created inside it.
        seed (int): Seed of every random choice. Default: the module's fixed seed.

    Returns:
        dict[str, str]: ``root``, ``ade20k``, ``coco``, ``coco_train_ann``, ``coco_val_ann``.
    """
    paths = sample_data_paths(root)
    _generate_into(paths['ade20k'], lambda d: generate_ade20k_sample(d, seed))
    _generate_into(paths['coco'], lambda d: generate_coco_sample(d, seed))
    return paths


def ensure_sample_data(root: str) -> Dict[str, str]:
    """Generate the sample datasets under ``root`` unless a current copy is already there.

    Each dataset is checked on its own (by its version marker), so only a missing or outdated
    one is written. Returns the same dict as :func:`generate_sample_data`.
    """
    paths = sample_data_paths(root)
    if not _is_current(paths['ade20k']):
        _generate_into(paths['ade20k'], generate_ade20k_sample)
    if not _is_current(paths['coco']):
        _generate_into(paths['coco'], generate_coco_sample)
    return paths
