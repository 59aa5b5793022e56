"""DiNAT backbone for MMDetection 3.x and MMSegmentation 1.x.

The package is layered so that each part needs only what it uses:

- ``dinat_backbone.ops`` (the DiNA operator) and ``dinat_backbone.models`` (``DiNAT``, the
  classifier) need torch alone; with mmcv/mmengine installed the models take any norm and
  activation config their registries know and honour ``init_cfg`` (:mod:`._openmmlab`);
- ``import dinat_backbone`` in an OpenMMLab environment also registers ``DiNAT`` with mmdet's
  and mmseg's model registries (whichever are installed), our hooks, and mmengine's checkpoint
  loaders (:mod:`dinat_backbone.weights.mmengine_loaders`). Configs load it with
  ``custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)``.
"""
import warnings

from . import _moved
from .ops import na2d

# mmengine re-imports pkg_resources (importlib.reload) on every `mmdet::`/`mmseg::` base-config
# lookup, and setuptools warns about its deprecation each time: silence only that message.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)

# Module paths of the flat layout (e.g. dinat_backbone.features) still import, with a warning.
_moved.install(__name__)

# After the filter: importing mmengine may import pkg_resources.
from ._openmmlab import HAS_OPENMMLAB  # noqa: E402
from .models import DiNAT, dilation_preset  # noqa: E402

__version__ = '0.1.0'
__all__ = ['DiNAT', 'dilation_preset', 'na2d', '__version__']

if HAS_OPENMMLAB:
    from .engine import checkpoint_hook  # noqa: F401  (registers CrashSafeCheckpointHook)
    from .weights import mmengine_loaders  # noqa: F401  (routes mmengine's loaders)
    from .weights import task  # noqa: F401  (registers TaskCheckpointHook)
    from .registry import register_all

    register_all()
