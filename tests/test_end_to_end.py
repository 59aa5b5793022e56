"""The headline job end to end: UPerNet-DiNAT trained on the ADE20K-format sample with
tools/train.py (the session's `trained_sample`), evaluated, and re-evaluated by tools/test.py."""
import json
import re

import pytest

from helpers import REPO_ROOT, SAMPLE_TRAIN_ITERS, assert_ok

pytestmark = pytest.mark.slow  # the session-trained demo model


def test_sample_training_beats_chance(trained_sample):
    """6 classes: predicting one class everywhere gives at most ~1/6 mIoU (about 10 here)."""
    metrics = trained_sample['metrics']
    assert metrics['step'] == SAMPLE_TRAIN_ITERS
    assert metrics['mIoU'] > 25.0, metrics
    assert metrics['aAcc'] > 60.0, metrics
    log = trained_sample['log']
    assert 'DiNAT' in log  # the model summary names our backbone
    assert trained_sample['checkpoint'].is_file()
    assert f'latest:      {trained_sample["checkpoint"]}' in log


def test_demo_numbers_in_the_readme(trained_sample):
    """The session's run is the demo's first 100 iterations (same config, seed, data and
    schedule; only the run stops there): its mIoU lies in the range the README gives for
    iteration 100, and the README's own run is inside its ranges."""
    readme = (REPO_ROOT / 'README.md').read_text()
    ranges = re.search(r'a run lands in mIoU (\d+)-(\d+) at iteration 100, (\d+)-(\d+) at 200 '
                       r'and (\d+)-(\d+) at 300', readme)
    assert ranges, 'README: the demo ranges sentence'
    low, high = (list(map(float, ranges.groups()[i::2])) for i in (0, 1))
    assert SAMPLE_TRAIN_ITERS == 100
    assert low[0] <= trained_sample['metrics']['mIoU'] <= high[0], trained_sample['metrics']
    shown = re.search(r'\(mIoU ([\d.]+) / ([\d.]+) / ([\d.]+) at iterations 100 / 200 / 300',
                      readme)
    assert all(lo <= float(v) <= hi for lo, v, hi in zip(low, shown.groups(), high))
    final = re.search(r'Iter\(val\) \[8/8\] +aAcc: [\d.]+ +mIoU: ([\d.]+)', readme).group(1)
    assert round(float(final), 1) == float(shown.group(3))


def test_test_tool_reproduces_the_training_evaluation(trained_sample, run_tool, tmp_path):
    result = run_tool('test.py', [trained_sample['config'], str(trained_sample['checkpoint']),
                                  '--work-dir', str(tmp_path)])
    assert_ok(result)
    metrics = json.loads(next(tmp_path.glob('*/*.json')).read_text())
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert metrics[key] == trained_sample['metrics'][key], key
    assert re.search(r'mIoU:\s*[\d.]+', result.stdout + result.stderr)
