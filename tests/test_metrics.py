"""PresentClassIoUMetric: mmseg's IoUMetric numbers, with a per-class table of present classes."""
import logging

import torch
from mmengine.logging import MMLogger
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.structures import SegDataSample

from dinat_backbone.engine.metrics import PresentClassIoUMetric

CLASSES = tuple(f'class{i}' for i in range(10))


def _sample(label: torch.Tensor, pred: torch.Tensor) -> dict:
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=label[None])
    sample.pred_sem_seg = PixelData(data=pred[None])
    return sample.to_dict()


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _evaluate(metric_cls, samples) -> tuple:
    """The metrics and what the metric logged (the per-class table) through mmengine's logger."""
    metric = metric_cls(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process([{}] * len(samples), samples)
    logger = MMLogger.get_current_instance()
    level, handler = logger.level, _Messages()
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        result = metric.evaluate(len(samples))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, '\n'.join(handler.messages)


def test_same_numbers_and_a_table_of_present_classes_only():
    generator = torch.Generator().manual_seed(0)
    # ground truth uses classes 1, 4 and 7 (and 255 = ignored); predictions add class 9
    label = torch.tensor([1, 4, 7, 255])[torch.randint(0, 4, (2, 12, 12), generator=generator)]
    pred = torch.tensor([1, 4, 7, 9])[torch.randint(0, 4, (2, 12, 12), generator=generator)]
    samples = [_sample(label[i], pred[i]) for i in range(2)]

    expected, full_table = _evaluate(IoUMetric, samples)
    result, table = _evaluate(PresentClassIoUMetric, samples)

    assert result == expected and set(result) == {'aAcc', 'mIoU', 'mAcc'}
    for name in ('class1', 'class4', 'class7', 'class9'):
        assert f'| {name} ' in table
    for name in ('class0', 'class2', 'class8'):
        assert f'| {name} ' in full_table and f'| {name} ' not in table
    assert 'nan' in full_table
    assert table.count('nan') == 1  # class9: predicted, never labelled (accuracy undefined)
