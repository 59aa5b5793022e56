"""Register the models with mmdet's and mmseg's registries (whichever are installed).

``dict(type='DiNAT')`` then builds inside both toolboxes' configs, without a scope prefix.
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
            registry = importlib.import_module(f'{scope}.registry').MODELS
        except ImportError:
            continue
        for model in REGISTERED_MODELS:
            registry.register_module(module=model, force=True)
        scopes.append(scope)
    return scopes
