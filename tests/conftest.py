"""Shared fixtures: the synthetic sample datasets, the tiny mmseg/mmdet configs that use them,
the demo model trained once per session and tiny checkpoints in the published layouts. Plain
helpers and constants are in helpers.py and tiny_checkpoints.py."""
import json
import subprocess
from pathlib import Path
from typing import Callable, Dict

import pytest

from helpers import (SAMPLE_SEG_CONFIG, SAMPLE_TRAIN_ITERS, TINY_DET_CONFIG, TINY_SEG_CONFIG,
                     assert_ok, run_script, write_config)
from tiny_checkpoints import write_hf_checkpoints, write_original_files


@pytest.fixture(scope='session')
def sample_data_root(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The sample datasets, generated once per session; the dict of ``ensure_sample_data``."""
    from dinat_backbone.datasets.sample_data import ensure_sample_data
    return ensure_sample_data(str(tmp_path_factory.mktemp('sample_data')))


@pytest.fixture(scope='session')
def tiny_seg_config(sample_data_root: Dict[str, str],
                    tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the tiny UPerNet-DiNAT config on the ADE20K-format sample (BN)."""
    return write_config(tmp_path_factory.mktemp('configs') / 'tiny_dinat_ade_sample.py',
                        TINY_SEG_CONFIG, data_root=sample_data_root['ade20k'], norm='BN')


@pytest.fixture(scope='session')
def tiny_det_config(sample_data_root: Dict[str, str],
                    tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the tiny Mask R-CNN config on the COCO-format sample."""
    return write_config(tmp_path_factory.mktemp('configs') / 'tiny_mask_rcnn_coco_sample.py',
                        TINY_DET_CONFIG, data_root=sample_data_root['coco'])


@pytest.fixture
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`run_script` as a fixture."""
    return run_script


@pytest.fixture(scope='session')
def sample_seg_config(sample_data_root: Dict[str, str],
                      tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a config inheriting the demo config, reading the session's ADE20K sample."""
    path = tmp_path_factory.mktemp('configs') / 'upernet_dinat_sample.py'
    path.write_text(
        f'_base_ = [{str(SAMPLE_SEG_CONFIG)!r}]\n'
        f'data_root = {sample_data_root["ade20k"]!r}\n'
        'train_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'test_dataloader = val_dataloader\n'
        f'train_cfg = dict(max_iters={SAMPLE_TRAIN_ITERS}, val_interval={SAMPLE_TRAIN_ITERS})\n'
        f'default_hooks = dict(checkpoint=dict(interval={SAMPLE_TRAIN_ITERS}))\n')
    return str(path)


@pytest.fixture(scope='session')
def trained_sample(sample_seg_config: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    """The demo's UPerNet-DiNAT trained once per session through tools/train.py; its work dir,
    checkpoint, log and final validation metrics, shared by the tests that need a trained model.
    """
    work_dir = tmp_path_factory.mktemp('trained_sample')
    result = run_script('train.py', [sample_seg_config, '--work-dir', str(work_dir)],
                        timeout=900)
    assert_ok(result)
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))[-1]
    metrics = [json.loads(line) for line in scalars.read_text().splitlines()]
    val = [m for m in metrics if 'mIoU' in m][-1]
    return dict(work_dir=work_dir, config=sample_seg_config,
                checkpoint=work_dir / f'iter_{SAMPLE_TRAIN_ITERS}.pth',
                log=result.stdout + result.stderr, metrics=val)


@pytest.fixture(scope='session')
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoints written by the real ``transformers`` classes, one folder per
    ``tiny_checkpoints.HF_CASES`` entry."""
    out = tmp_path_factory.mktemp('hf')
    write_hf_checkpoints(out)
    return out


@pytest.fixture(scope='session')
def original_files(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The 'cls' weights of ``hf_dir`` in the original layout, stored in each published way."""
    return write_original_files(hf_dir, tmp_path_factory.mktemp('original'))
