"""DiNAT backbone for MMDetection 3.x and MMSegmentation 1.x.

Importing the package registers ``DiNAT`` with both mmdet's and mmseg's model registries
and applies the compatibility fixes of :mod:`dinat_backbone.compat`. Configs load it with
``custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)``.
"""
from . import compat  # noqa: F401  (registers mmengine checkpoint loaders)
from . import task_checkpoint  # noqa: F401  (registers TaskCheckpointHook)
from .models import DiNAT, dilation_preset
from .ops import na2d
from .registry import register_all

__version__ = '0.1.0'
__all__ = ['DiNAT', 'dilation_preset', 'na2d', '__version__']

register_all()
