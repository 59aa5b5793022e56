"""Evaluation metrics for small datasets."""
from typing import Dict, List, Sequence

from mmseg.evaluation import IoUMetric


class PresentClassIoUMetric(IoUMetric):
    """mmseg's :class:`IoUMetric` whose per-class table lists only the classes that occur.

    A class that is neither in the ground truth nor in the predictions of the evaluated images
    has an empty union: IoU and accuracy are NaN and ``nanmean`` already leaves it out of
    mIoU/mAcc, so dropping it changes no summary metric. It only keeps the table readable on
    samples that use a few of a dataset's classes (the demo: 6 of ADE20K's 150).
    Registered with mmseg as ``type='PresentClassIoUMetric'``, same arguments as IoUMetric.
    """

    def compute_metrics(self, results: List[Sequence]) -> Dict[str, float]:
        present = sum(result[1] for result in results) > 0  # total union per class
        meta = self.dataset_meta
        self.dataset_meta = dict(
            meta, classes=[c for c, keep in zip(meta['classes'], present.tolist()) if keep])
        try:
            return super().compute_metrics(
                [tuple(areas[present] for areas in result) for result in results])
        finally:
            self.dataset_meta = meta
