"""DiNAT backbone for MMDetection 3.x and MMSegmentation 1.x.

The package is layered so that each part needs only what it uses:

- ``dinat_backbone.ops`` (the DiNA operator) needs torch alone;
- ``dinat_backbone.models`` (``DiNAT``, the classifier) needs torch, mmengine and mmcv;
- ``import dinat_backbone`` in an OpenMMLab environment also registers ``DiNAT`` with mmdet's
  and mmseg's model registries (whichever are installed), our hooks, and mmengine's checkpoint
  loaders (:mod:`dinat_backbone.weights.mmengine_loaders`). Configs load it with
  ``custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)``.

Without mmengine/mmcv the root import still succeeds (so ``dinat_backbone.ops`` can be used on
a machine with torch only); asking it for a model then raises an ImportError naming what is
missing.
"""
import warnings
from typing import Any

from . import _moved
from .ops import na2d

# mmengine re-imports pkg_resources (importlib.reload) on every `mmdet::`/`mmseg::` base-config
# lookup, and setuptools warns about its deprecation each time: silence only that message.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)

# Module paths of the flat layout (e.g. dinat_backbone.features) still import, with a warning.
_moved.install(__name__)

__version__ = '0.1.0'
__all__ = ['DiNAT', 'dilation_preset', 'na2d', '__version__']

try:
    import mmcv  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as err:
    _OPENMMLAB_MISSING = err
else:
    _OPENMMLAB_MISSING = None
    from .engine import checkpoint_hook  # noqa: F401  (registers CrashSafeCheckpointHook)
    from .weights import mmengine_loaders  # noqa: F401  (routes mmengine's loaders)
    from .weights import task  # noqa: F401  (registers TaskCheckpointHook)
    from .models import DiNAT, dilation_preset
    from .registry import register_all

    register_all()


def __getattr__(name: str) -> Any:
    if name in ('DiNAT', 'dilation_preset') and _OPENMMLAB_MISSING is not None:
        raise ImportError(f'dinat_backbone.{name} needs mmengine and mmcv '
                          f'({_OPENMMLAB_MISSING}); only dinat_backbone.ops works with torch '
                          'alone.') from _OPENMMLAB_MISSING
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
