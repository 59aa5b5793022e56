"""Register the models with mmdet's and mmseg's registries (whichever are installed).

``dict(type='DiNAT')`` then builds inside both toolboxes' configs, without a scope prefix.
"""
import importlib
from typing import List

from .models import DiNAT

REGISTERED_MODELS = (DiNAT, )


def register_all() -> List[str]:
    """Register :data:`REGISTERED_MODELS`; returns the scopes that were found."""
    scopes = []
    for scope in ('mmdet', 'mmseg'):
        try:
            registry = importlib.import_module(f'{scope}.registry').MODELS
        except ImportError:
            continue
        for model in REGISTERED_MODELS:
            registry.register_module(module=model, force=True)
        scopes.append(scope)
    if not scopes:
        raise ImportError('dinat_backbone needs mmdet (3.x) or mmsegmentation (1.x) installed.')
    return scopes
