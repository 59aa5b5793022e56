"""Register the models with mmdet's and mmseg's registries (whichever are installed).

``dict(type='DiNAT')`` then builds inside both toolboxes' configs, without a scope prefix;
mmseg also gets :class:`~dinat_backbone.engine.metrics.PresentClassIoUMetric`.
"""
import importlib
from typing import List

from .models import DiNAT

REGISTERED_MODELS = (DiNAT, )


def register_all() -> List[str]:
    """Register :data:`REGISTERED_MODELS` in every installed toolbox; returns their scopes.

    With neither mmdet nor mmseg installed nothing is registered (the models still build
    directly); configs that name ``DiNAT`` then fail in the toolbox's own import first.
    """
    scopes = []
    for scope in ('mmdet', 'mmseg'):
        try:
            registry = importlib.import_module(f'{scope}.registry')
        except ImportError:
            continue
        for model in REGISTERED_MODELS:
            registry.MODELS.register_module(module=model, force=True)
        if scope == 'mmseg':
            from .engine.metrics import PresentClassIoUMetric
            registry.METRICS.register_module(module=PresentClassIoUMetric, force=True)
        scopes.append(scope)
    return scopes
