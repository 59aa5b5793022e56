"""DiNAT backbone for MMDetection 3.x and MMSegmentation 1.x.

Importing the package registers ``DiNAT`` (and the classification wrapper) with both
mmdet's and mmseg's model registries and applies the compatibility fixes of
:mod:`dinat_backbone.compat`. Configs load it with
``custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)``.
"""
from . import compat  # noqa: F401  (registers mmengine checkpoint loaders)
from .ops import na2d

__version__ = '0.1.0'
__all__ = ['na2d', '__version__']
