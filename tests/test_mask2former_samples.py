"""The Mask2Former-DiNAT sample configs on the embedded samples: the COCO panoptic annotations
are valid, the vendored panopticapi is upstream's, and both samples learn (PQ through mmdet's
CocoPanopticMetric, mIoU through mmseg's IoU metric) within a minute of CPU training."""
import hashlib
import json
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from mmengine.hooks import Hook
from PIL import Image
from pycocotools.coco import COCO

from dinat_backbone.datasets.sample_data import (COCO_PANOPTIC_SAMPLE_CLASSES,
                                                 COCO_PANOPTIC_STUFF_CATEGORIES,
                                                 COCO_SAMPLE_CATEGORIES)
from dinat_backbone.engine.runner import build_runner, load_config
from helpers import REPO_ROOT

PANOPTIC_CONFIG = REPO_ROOT / 'configs/detection/sample/mask2former_dinat_sample_coco-panoptic.py'
SEMANTIC_CONFIG = REPO_ROOT / 'configs/segmentation/sample/mask2former_dinat_sample_ade20k.py'
PANOPTICAPI = REPO_ROOT / 'third_party' / 'panopticapi'


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def test_vendored_panopticapi_is_upstream_and_seen_by_mmdet():
    # The provenance table of third_party/panopticapi/README.md: upstream's git blob ids.
    table = re.findall(r'^\s*\| `([^`]+)` \| ([0-9a-f]{40}) \|$',
                       (PANOPTICAPI / 'README.md').read_text(), flags=re.M)
    assert {name for name, _ in table} == {
        'license.txt', 'panopticapi/__init__.py', 'panopticapi/evaluation.py',
        'panopticapi/utils.py'}
    for name, blob in table:
        assert _git_blob_id(PANOPTICAPI / name) == blob, f'{name} differs from upstream'
    from mmdet.evaluation.metrics import coco_panoptic_metric
    assert coco_panoptic_metric.panopticapi is not None  # else CocoPanopticMetric refuses


@pytest.mark.parametrize('split', ['train2017', 'val2017'])
def test_panoptic_sample_matches_its_png_and_instances(sample_data_root, split):
    from panopticapi.utils import rgb2id  # upstream's decoder, not the generator's encoder

    coco = Path(sample_data_root['coco'])
    panoptic = json.loads((coco / 'annotations' / f'panoptic_{split}.json').read_text())
    instances = COCO(str(coco / 'annotations' / f'instances_{split}.json'))
    categories = {c['id']: c for c in panoptic['categories']}
    # Things first (mmdet's panoptic labels), with the instance set's ids; then the stuff.
    assert tuple(c['name'] for c in panoptic['categories']) == COCO_PANOPTIC_SAMPLE_CLASSES
    assert [c['id'] for c in panoptic['categories'] if c['isthing'] == 1] == \
        [c['id'] for c in COCO_SAMPLE_CATEGORIES] == sorted(instances.getCatIds())
    assert [c['id'] for c in panoptic['categories'] if c['isthing'] == 0] == \
        [c['id'] for c in COCO_PANOPTIC_STUFF_CATEGORIES]
    assert panoptic['images'] == instances.dataset['images']
    assert [a['image_id'] for a in panoptic['annotations']] == \
        [i['id'] for i in panoptic['images']]

    images = {i['id']: i for i in panoptic['images']}
    stuff_per_image = []
    for ann in panoptic['annotations']:
        assert ann['file_name'] == images[ann['image_id']]['file_name'].replace('.jpg', '.png')
        png = Image.open(coco / 'annotations' / f'panoptic_{split}' / ann['file_name'])
        ids = rgb2id(np.array(png.convert('RGB'), dtype=np.uint32))
        assert ids.shape == (images[ann['image_id']]['height'], images[ann['image_id']]['width'])
        segments = {s['id']: s for s in ann['segments_info']}
        assert len(segments) == len(ann['segments_info'])
        # Every pixel belongs to a listed segment (no void) and every segment has pixels.
        assert set(np.unique(ids).tolist()) == set(segments)
        for segment in segments.values():
            ys, xs = np.nonzero(ids == segment['id'])
            assert segment['area'] == len(ys)
            assert segment['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                       ys.max() - ys.min() + 1]
            assert segment['iscrowd'] == 0 and segment['category_id'] in categories
        # Thing segments are exactly the instance annotations: same id, class and mask.
        things = {i: s for i, s in segments.items() if categories[s['category_id']]['isthing']}
        objects = instances.loadAnns(instances.getAnnIds(imgIds=[ann['image_id']]))
        assert sorted(things) == sorted(o['id'] for o in objects)
        for obj in objects:
            assert things[obj['id']]['category_id'] == obj['category_id']
            np.testing.assert_array_equal(ids == obj['id'], instances.annToMask(obj) > 0)
        stuff_per_image.append(len(segments) - len(things))
    # Wall above, grass below: both stuff regions are visible in every image.
    assert stuff_per_image == [2] * len(panoptic['annotations'])


@pytest.fixture
def in_sample_checkout(sample_data_root, tmp_path, monkeypatch) -> Path:
    """A working directory whose ``data/sample`` is the session's sample data, so the sample
    configs run unmodified (they read ``data/sample/...`` relative to the working directory)."""
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'sample').symlink_to(sample_data_root['root'])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_mmdet_reads_the_panoptic_sample_as_things_then_stuff(in_sample_checkout):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load_config(str(PANOPTIC_CONFIG))
    dataset_cfg = cfg.val_dataloader.dataset
    dataset_cfg.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True)
    ]
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 8
    num_things = len(COCO_SAMPLE_CATEGORIES)
    for index in range(len(dataset)):
        sample = dataset[index]
        labels, seg = sample['gt_bboxes_labels'], sample['gt_seg_map']
        assert len(sample['gt_masks']) == len(labels) > 0
        assert set(labels.tolist()) <= set(range(num_things))
        # the semantic map: thing labels under their masks, the two stuff labels elsewhere
        for mask, label in zip(sample['gt_masks'].masks, labels):
            assert (seg[mask > 0] == label).all()
        stuff = np.unique(seg[~sample['gt_masks'].masks.any(axis=0)]).tolist()
        assert stuff == [num_things, num_things + 1]


class _ValidationHistory(Hook):
    """Validates the initialised model once before the first iteration, then records the
    metrics of every validation by iteration."""

    priority = 'LOWEST'  # validate once the other hooks (checkpoint's save_best) are set up

    def __init__(self) -> None:
        self.metrics: Dict[int, Dict[str, float]] = {}

    def before_train(self, runner) -> None:
        runner.val_loop.run()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics[runner.iter] = dict(metrics)


# (config, iterations, {metric: least gain over iteration 0}). Measured here (one thread, the
# configs' seed 0): PQ 0 -> 71 (things 0 -> 55, stuff 0 -> 95) after 60 iterations, mIoU
# 0 -> 47 after 80; the margins leave room for float-rounding differences between machines.
LEARNING_RUNS = {
    'coco-panoptic': (PANOPTIC_CONFIG, 60,
                      {'coco_panoptic/PQ': 30.0, 'coco_panoptic/PQ_th': 10.0}),
    'ade20k-semantic': (SEMANTIC_CONFIG, 80, {'mIoU': 25.0}),
}


@pytest.mark.slow
@pytest.mark.parametrize('run', sorted(LEARNING_RUNS))
def test_sample_config_learns(run, in_sample_checkout):
    config, iters, margins = LEARNING_RUNS[run]
    cfg = load_config(str(config))  # as tools/train.py loads it; only the length changes
    cfg.work_dir = str(in_sample_checkout / 'work_dir')
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    runner = build_runner(cfg)
    history = _ValidationHistory()
    runner.register_hook(history)
    runner.train()

    assert sorted(history.metrics) == [0, iters]
    before, after = history.metrics[0], history.metrics[iters]
    for key, margin in margins.items():
        assert after[key] >= before[key] + margin, (key, before, after)
