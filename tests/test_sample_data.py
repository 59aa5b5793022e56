"""The sample datasets (``datasets.sample_data``): deterministic, small, regenerated only when
missing or outdated, and read by mmdet's and mmseg's real datasets, pipelines and structures as
the annotations say."""
import filecmp
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

from dinat_backbone.datasets import sample_data
from dinat_backbone.datasets.sample_data import (ADE20K_SAMPLE_CLASSES, COCO_SAMPLE_CATEGORIES,
                                                 COCO_SAMPLE_CLASSES, ensure_sample_data,
                                                 generate_sample_data)


def _digest(root: str) -> dict:
    files = sorted(p for p in Path(root).rglob('*') if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_sample_data_is_deterministic_and_small(tmp_path, sample_data_root):
    first = generate_sample_data(str(tmp_path / 'a'))
    again = generate_sample_data(str(tmp_path / 'a'))  # overwrite in place
    other = generate_sample_data(str(tmp_path / 'b'))
    assert first == again
    digest = _digest(first['root'])
    assert digest == _digest(other['root']) == _digest(sample_data_root['root'])
    assert sum((tmp_path / 'a' / f).stat().st_size for f in digest) < 3 * 2**20
    assert len([f for f in digest if f.endswith('.jpg')]) == 32 + 8 + 24 + 8
    assert filecmp.cmp(first['coco_val_ann'], other['coco_val_ann'], shallow=False)


def test_ensure_sample_data_generates_only_what_is_missing(tmp_path):
    paths = ensure_sample_data(str(tmp_path))
    ann = Path(paths['coco_train_ann'])
    os.utime(ann, (1, 1))
    ensure_sample_data(str(tmp_path))
    assert ann.stat().st_mtime == 1  # present and current: left alone

    jpg = next(Path(paths['ade20k'], 'images', 'training').glob('*.jpg'))
    (Path(paths['coco']) / sample_data._MARKER).write_text('0\n')  # an outdated copy
    ensure_sample_data(str(tmp_path))
    assert ann.stat().st_mtime != 1  # regenerated
    assert jpg.exists()

    foreign = tmp_path / 'foreign'
    (foreign / 'coco').mkdir(parents=True)
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        ensure_sample_data(str(foreign))


def test_ade20k_sample_through_mmseg(sample_data_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    root = sample_data_root['ade20k']
    with DefaultScope.overwrite_default_scope('mmseg'):
        train = ADE20KDataset(data_root=root, pipeline=pipeline, data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'))
        val = ADE20KDataset(data_root=root, pipeline=pipeline, data_prefix=dict(
            img_path='images/validation', seg_map_path='annotations/validation'))
        assert (len(train), len(val)) == (32, 8)
        assert len(train.metainfo['classes']) == 150
        for name, index in ADE20K_SAMPLE_CLASSES.items():
            assert train.metainfo['classes'][index].strip() == name

        seen = set()
        for i in range(len(train)):
            sample = train[i]
            assert isinstance(sample['data_samples'], SegDataSample)
            gt = sample['data_samples'].gt_sem_seg.data[0].numpy()
            img = sample['inputs']
            assert img.shape[0] == 3 and img.shape[1:] == gt.shape
            # reduce_zero_label: PNG value v > 0 becomes class v - 1, 0 becomes 255 (ignored)
            png = cv2.imread(train.get_data_info(i)['seg_map_path'], cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(gt, np.where(png == 0, 255, png.astype(int) - 1))
            seen |= set(np.unique(gt).tolist())
    assert seen == set(ADE20K_SAMPLE_CLASSES.values()) | {255}


def test_coco_sample_through_mmdet(sample_data_root):
    from mmdet.datasets import CocoDataset
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmdet.utils import register_all_modules
    from pycocotools import mask as mask_utils
    register_all_modules(init_default_scope=False)

    root = sample_data_root['coco']
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')]
    raw = json.loads(Path(sample_data_root['coco_train_ann']).read_text())
    assert [c['name'] for c in raw['categories']] == list(COCO_SAMPLE_CLASSES)
    segs = [a['segmentation'] for a in raw['annotations']]
    assert any(isinstance(s, dict) for s in segs) and any(isinstance(s, list) for s in segs)
    assert all(a['iscrowd'] == 0 and a['area'] > 0 for a in raw['annotations'])
    label_of = {c['id']: i for i, c in enumerate(COCO_SAMPLE_CATEGORIES)}

    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = CocoDataset(data_root=root, ann_file='annotations/instances_train2017.json',
                              data_prefix=dict(img='train2017/'), pipeline=pipeline,
                              metainfo=dict(classes=COCO_SAMPLE_CLASSES))
        val = CocoDataset(data_root=root, ann_file='annotations/instances_val2017.json',
                          data_prefix=dict(img='val2017/'), pipeline=pipeline, test_mode=True,
                          metainfo=dict(classes=COCO_SAMPLE_CLASSES))
        assert (len(dataset), len(val)) == (24, 8)
        assert dataset.metainfo['classes'] == COCO_SAMPLE_CLASSES

        counts = np.zeros(3, int)
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            anns = [a for a in raw['annotations'] if a['image_id'] == info['img_id']]
            sample = dataset[i]
            assert isinstance(sample['data_samples'], DetDataSample)
            gt = sample['data_samples'].gt_instances
            assert isinstance(gt.masks, BitmapMasks)
            assert len(gt) == len(anns) and not sample['data_samples'].ignored_instances
            assert gt.labels.tolist() == [label_of[a['category_id']] for a in anns]
            h, w = sample['inputs'].shape[1:]
            assert gt.masks.masks.shape == (len(anns), h, w)
            for box, mask, ann in zip(gt.bboxes.tensor, gt.masks.masks, anns):
                x, y, bw, bh = ann['bbox']
                torch.testing.assert_close(box, torch.tensor([x, y, x + bw, y + bh]))
                assert mask.sum() == pytest.approx(ann['area'], rel=0.02)
                ys, xs = np.nonzero(mask)  # the mask fills its box
                assert xs.min() >= x - 1 and xs.max() <= x + bw and ys.min() >= y - 1
            counts += np.bincount(gt.labels.numpy(), minlength=3)
    assert (counts > 0).all(), counts
    # mask from the json (polygon or RLE) equals pycocotools' decoding of it
    ann = next(a for a in raw['annotations'] if isinstance(a['segmentation'], dict))
    assert mask_utils.area(ann['segmentation']) == ann['area']
