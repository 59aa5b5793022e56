"""The few mmengine/mmcv parts that the DiNAT modules and weight loading use, in one place.

With mmengine and mmcv installed these are theirs: config-built norms and activations,
``init_cfg`` handling, mmengine's logger. Without them, the torch-only stand-ins of
:mod:`._torch_only` let the models build, load weights and train on a machine with torch alone
(the GPU benchmark's).
"""
from typing import Any

__all__ = ['BaseModule', 'ModuleList', 'DropPath', 'build_norm_layer', 'build_activation_layer',
           'trunc_normal_', 'print_log', 'current_logger', 'HAS_OPENMMLAB']

try:
    from mmcv.cnn import build_activation_layer, build_norm_layer
    from mmcv.cnn.bricks.drop import DropPath
    from mmengine.logging import MMLogger, print_log
    from mmengine.model import BaseModule, ModuleList
    from mmengine.model.weight_init import trunc_normal_
except ImportError:
    HAS_OPENMMLAB = False
    from ._torch_only import (BaseModule, DropPath, ModuleList, build_activation_layer,
                              build_norm_layer, current_logger, print_log, trunc_normal_)
else:
    HAS_OPENMMLAB = True

    def current_logger() -> Any:
        """The runner's logger (mmengine's current instance)."""
        return MMLogger.get_current_instance()
